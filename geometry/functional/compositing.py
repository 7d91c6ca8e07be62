"""Putting a render over its background: the one copy used by every renderer and the analytic scenes."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def over_background(
    premultiplied: Float[Tensor, "B H W 3"],
    opacity: Float[Tensor, "B H W 1"],
    background: Float[Tensor, "B H W 3"],
) -> Float[Tensor, "B H W 3"]:
    """The "over" operator (Porter & Duff 1984) for colour already multiplied by its opacity: c + (1 − α)·bg."""
    return premultiplied + (1.0 - opacity) * background


def background_image(
    background: Tensor | None, batch: int, height: int, width: int, like: Tensor
) -> Float[Tensor, "B H W 3"]:
    """A (B, H, W, 3) background from None (white), (3,), (B, 3) or (B, H, W, 3), values in [0, 1]."""
    if background is None:
        return torch.ones(batch, height, width, 3, dtype=like.dtype, device=like.device)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape == (3,):
        bg = bg.view(1, 1, 1, 3)
    elif bg.shape == (batch, 3):
        bg = bg.view(batch, 1, 1, 3)
    elif bg.shape != (batch, height, width, 3):
        raise ValueError(
            f"background has shape {tuple(bg.shape)}; pass (3,), ({batch}, 3) or ({batch}, {height}, {width}, 3)"
        )
    return bg.expand(batch, height, width, 3)
