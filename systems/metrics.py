"""Evaluation against analytic ground truth (PSNR on held-out orbit views)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def psnr(prediction: Float[Tensor, "B H W 3"], target: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B"]:
    """Per-image PSNR in dB for images in [0, 1]."""
    mse = (prediction.float().clamp(0, 1) - target.float()).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))
