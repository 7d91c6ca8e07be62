"""distill.conditions.text: prompt strings, encoding with the model's own text encoder, TextPrompt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import T5EncoderModel, T5Tokenizer

from distill.conditions.text import TextPrompt, TextPromptConfig, encode_text_prompts
from distill.conditions.views import BACK, FRONT, OVERHEAD, SIDE
from distill.models import ModelLoadConfig
from geometry.cameras import make_cameras
from systems.config import RunInfo
from tests.distill.conditions.helpers import clip_forward


def _t5_forward(path, texts):
    """Independent reference: T5 tokenizer + encoder with the attention mask, as DeepFloyd IF was trained."""
    tok = T5Tokenizer.from_pretrained(path / "tokenizer")
    enc = T5EncoderModel.from_pretrained(path / "text_encoder").eval()
    t = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return enc(t.input_ids, attention_mask=t.attention_mask).last_hidden_state


def _denoiser_of(path):
    """What TextPrompt reads of a denoiser: its load_config (no UNet needs loading for that)."""
    return SimpleNamespace(load_config=ModelLoadConfig(str(path), device="cpu"))


def test_suffix_prefix_and_manual_view_prompts():
    suffix = TextPromptConfig().view_prompt_texts("a cat")
    assert suffix == ["a cat, front view", "a cat, side view", "a cat, back view", "a cat, overhead view"]
    prefix = TextPromptConfig(view_style="prefix").view_prompt_texts("a cat")
    assert prefix == [
        "front view of a cat",
        "side view of a cat",
        "back view of a cat",
        "overhead view of a cat",
    ]
    manual = TextPromptConfig(
        view_prompts={"side": "a cat seen sideways", "back": "ignored"}, prompt_back="a cat tail"
    ).view_prompt_texts("a cat")
    assert manual == ["a cat, front view", "a cat seen sideways", "a cat tail", "a cat, overhead view"]
    with pytest.raises(ValueError, match="view_style"):
        TextPromptConfig(view_style="infix")
    with pytest.raises(ValueError, match="unknown view"):
        TextPromptConfig(view_prompts={"top": "x"})
    with pytest.raises(ValueError, match="overlap"):
        TextPromptConfig(front_threshold=150.0)  # thresholds are checked by ViewOptions


def test_embeddings_equal_direct_encoder_forward(tiny_sd_path):
    cfg = TextPromptConfig(prompt_back="the back of a red cube")
    run = RunInfo(prompt="a red cube", negative_prompt="blurry")
    emb = TextPrompt.from_config(cfg, run, _denoiser_of(tiny_sd_path))
    texts = ["a red cube", "blurry", *cfg.view_prompt_texts("a red cube")]
    assert emb.texts == tuple(texts)
    ref = clip_forward(tiny_sd_path, texts)
    torch.testing.assert_close(emb.prompt[0], ref[0])
    torch.testing.assert_close(emb.uncond[0], ref[1])
    torch.testing.assert_close(emb.views, ref[2:])
    # Per-camera selection: front, side, back, overhead cameras get their view prompt; uncond = negative.
    cams = make_cameras([0.0, 0.0, 0.0, 80.0], [10.0, 90.0, -170.0, 0.0], 1.5, 50.0, 8)
    batch = emb(cams)
    torch.testing.assert_close(batch.cond.embeddings, ref[2:][torch.tensor([FRONT, SIDE, BACK, OVERHEAD])])
    torch.testing.assert_close(batch.uncond.embeddings, ref[1].expand(4, -1, -1))
    cond_plain, _ = emb.text_embeddings(cams.elevation, cams.azimuth, view_dependent=False)
    torch.testing.assert_close(cond_plain, ref[0].expand(4, -1, -1))


def test_if_embeddings_use_t5_with_attention_mask(tiny_if_path):
    emb = encode_text_prompts(TextPromptConfig(use_cache=False), "a blue torus", "", str(tiny_if_path))
    torch.testing.assert_close(emb.prompt, _t5_forward(tiny_if_path, ["a blue torus"]))


def test_text_encoder_follows_the_denoiser_unless_named(tiny_sd_path, tiny_if_path):
    run = RunInfo(prompt="a green cone")
    # No name: the denoiser's model (the SD folder, CLIP).
    emb = TextPrompt.from_config(TextPromptConfig(use_cache=False), run, _denoiser_of(tiny_sd_path))
    torch.testing.assert_close(emb.prompt, clip_forward(tiny_sd_path, ["a green cone"]))
    # A named model wins over the denoiser's (the IF folder, T5).
    named = TextPromptConfig(pretrained_model_name_or_path=str(tiny_if_path), use_cache=False)
    emb = TextPrompt.from_config(named, run, _denoiser_of(tiny_sd_path))
    torch.testing.assert_close(emb.prompt, _t5_forward(tiny_if_path, ["a green cone"]))
    # A denoiser without a text encoder (the oracle) needs the name.
    emb = TextPrompt.from_config(named, run, SimpleNamespace(load_config=None))
    torch.testing.assert_close(emb.prompt, _t5_forward(tiny_if_path, ["a green cone"]))


def test_a_denoiser_without_a_text_encoder_is_a_clear_error():
    """The old `SDSGuidance(SDSConfig())` 'no model' error: now the text condition is what needs a model."""
    with pytest.raises(ValueError, match="pretrained_model_name_or_path"):
        TextPrompt.from_config(TextPromptConfig(), RunInfo(prompt="a cat"), SimpleNamespace(load_config=None))


def test_text_prompt_options_reach_the_condition(tiny_sd_path):
    cfg = TextPromptConfig(view_dependent_prompting=False, use_perp_neg=True, overhead_threshold=30.0)
    emb = TextPrompt.from_config(cfg, RunInfo(prompt="a chair"), _denoiser_of(tiny_sd_path))
    assert not emb.options.view_dependent_prompting and emb.options.use_perp_neg
    assert emb.overhead_threshold == 30.0
    batch = emb(make_cameras([0.0, 45.0], [30.0, 0.0], 1.5, 50.0, 8))  # configured Perp-Neg: 4 passes
    assert len(batch.passes()) == 4
    torch.testing.assert_close(batch.passes()[0].embeddings[1], emb.views[OVERHEAD])  # 45° > 30°: overhead
