"""distill.conditions.oracle: the oracle's "prompt" is mixture weights over its scene library."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.conditions.oracle import OraclePrompt, OraclePromptConfig, mixture_weights
from distill.denoisers.oracle import OracleConfig, OracleDenoiser
from geometry.analytic import BUILTIN_SCENES
from geometry.cameras import make_cameras
from systems.config import RunInfo


def test_mixture_weights_one_hot_and_uniform_or_negative():
    cond, uncond = mixture_weights(4, 2)
    assert cond.shape == uncond.shape == (1, 1, 4)
    assert cond[0, 0].tolist() == [0, 0, 1, 0]
    assert uncond[0, 0].tolist() == pytest.approx([0.25] * 4)
    cond, uncond = mixture_weights(6, 1, negative_index=4)
    assert cond[0, 0].tolist() == [0, 1, 0, 0, 0, 0]
    assert uncond[0, 0].tolist() == [0, 0, 0, 0, 1, 0]


def test_oracle_prompt_is_view_unaware_and_names_its_scene():
    run = RunInfo(prompt="a table")
    oracle = OracleDenoiser.from_config(OracleConfig(), run)
    emb = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    assert emb.texts == ("a table",)
    index = list(BUILTIN_SCENES).index("a table")
    cams = make_cameras([0.0, 0.0, 80.0], [0.0, 170.0, 90.0], 2.0, 45.0, 8)
    batch = emb(cams)
    expected = torch.zeros(3, 1, len(BUILTIN_SCENES))
    expected[..., index] = 1.0
    torch.testing.assert_close(batch.cond.embeddings, expected)  # every view: the same one-hot
    torch.testing.assert_close(batch.uncond.embeddings, torch.full_like(expected, 1.0 / len(BUILTIN_SCENES)))
    assert batch.cond.cameras is cams  # the oracle renders its scenes at these cameras
    assert emb.state_dict() == {}


def test_scene_argument_wins_over_the_prompt():
    run = SimpleNamespace(prompt="something unrecognisable", negative_prompt="", scene="a rocket")
    oracle = OracleDenoiser.from_config(OracleConfig(), run)
    emb = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    assert emb.prompt[0, 0].argmax().item() == list(BUILTIN_SCENES).index("a rocket")


def test_oracle_prompt_needs_the_oracle_denoiser():
    with pytest.raises(ValueError, match="OracleDenoiser"):
        OraclePrompt.from_config(
            OraclePromptConfig(), RunInfo(prompt="a donut"), SimpleNamespace(load_config=None)
        )


def test_a_two_mode_prompt_puts_equal_weight_on_both_scenes():
    run = RunInfo(prompt="a snowman|a donut")
    denoiser = OracleDenoiser.from_config(OracleConfig(library=["a table"]), run)
    assert [s.name for s in denoiser.scenes] == ["a table", "a snowman", "a donut"]
    assert [s.name for s in OracleDenoiser.ground_truths(None, run)] == ["a snowman", "a donut"]
    prompt = OraclePrompt.from_config(OraclePromptConfig(), run, denoiser)
    batch = prompt(make_cameras(0.0, [0.0], 2.0, 45.0, 8))
    torch.testing.assert_close(batch.cond.embeddings.flatten(), torch.tensor([0.0, 0.5, 0.5]))
    torch.testing.assert_close(batch.uncond.embeddings.flatten(), torch.full((3,), 1 / 3))
