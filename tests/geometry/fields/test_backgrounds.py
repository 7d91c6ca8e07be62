"""Backgrounds: solid and learned colours, and the training-time random solid-colour replacement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geometry.fields.backgrounds import (
    LearnedBackground,
    NeuralEnvironmentMap,
    SolidBackground,
    random_color_augment,
)
from geometry.functional.frequency import frequency_bands, frequency_encode
from geometry.functional.sh import spherical_harmonics

GREEN = torch.tensor([0.0, 1.0, 0.0])


def _dirs(n: int, h: int = 1, w: int = 1, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, h, w, 3, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_random_background_probability_and_eval_mode():
    bg = SolidBackground(tuple(GREEN.tolist()), random_color_prob=0.3).train()
    dirs = _dirs(4000)
    out = bg(dirs, generator=torch.Generator().manual_seed(0))
    replaced = (out[:, 0, 0] != GREEN).any(-1)
    assert abs(replaced.float().mean().item() - 0.3) < 0.03  # binomial std ≈ 0.007
    colours = out[replaced][:, 0, 0]
    assert ((colours > 0.02) & (colours < 0.98)).all(
        -1
    ).float().mean() > 0.8  # uniform: mostly not black/white
    assert torch.equal(bg.eval()(dirs), GREEN.expand(4000, 1, 1, 3))


def test_black_white_mode_replaces_with_solid_pure_white_or_black_only():
    bg = SolidBackground(
        tuple(GREEN.tolist()), random_color_prob=0.5, random_color_mode="black_white"
    ).train()
    out = bg(_dirs(2000, 3, 4), generator=torch.Generator().manual_seed(1))
    flat = out.flatten(1, 2)  # (B, H·W, 3)
    solid = (flat == flat[:, :1]).all(-1).all(-1)
    assert solid.all()  # every replacement fills its whole image with one colour
    first = flat[:, 0]
    white, black, green = (first == 1).all(-1), (first == 0).all(-1), (first == GREEN).all(-1)
    assert (white | black | green).all()  # nothing in between: no grey, no uniform colours
    assert abs((white | black).float().mean().item() - 0.5) < 0.05
    assert abs(white.sum().item() - black.sum().item()) < 0.15 * (white | black).sum().item()  # even odds
    always = random_color_augment(
        torch.full((500, 2, 2, 3), 0.3), 1.0, torch.Generator().manual_seed(2), "black_white"
    )
    assert torch.isin(always, torch.tensor([0.0, 1.0])).all()


def test_bad_random_colour_options_are_refused():
    with pytest.raises(ValueError, match="random_color_mode"):
        SolidBackground(random_color_prob=0.5, random_color_mode="checkerboard")
    with pytest.raises(ValueError, match="random_color_prob"):
        SolidBackground(random_color_prob=1.5)


def test_learned_backgrounds_use_the_shared_encodings_and_train():
    dirs = _dirs(2, 3, 4)
    learned, env = LearnedBackground(), NeuralEnvironmentMap(n_frequencies=6)
    torch.testing.assert_close(learned.encode(dirs), spherical_harmonics(dirs, 4))
    torch.testing.assert_close(env.encode(dirs), frequency_encode(dirs, frequency_bands(6)))
    for bg in (learned, env):
        out = bg.eval()(dirs)
        assert out.shape == (2, 3, 4, 3) and out.min() >= 0 and out.max() <= 1
        torch.testing.assert_close(out, torch.sigmoid(bg.mlp(bg.encode(dirs))))
        out.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bg.parameters())
