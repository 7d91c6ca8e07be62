"""NeRF positional encoding (Mildenhall et al. 2020, eq. 4), laid out like tinycudann's Frequency encoding."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def frequency_bands(n_frequencies: int, device=None) -> Float[Tensor, "K"]:
    """π·2^k for k < n_frequencies."""
    return math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32, device=device)


def frequency_encode(
    x: Float[Tensor, "*S D"], freqs: Float[Tensor, "K"], include_input: bool = True
) -> Float[Tensor, "*S E"]:
    """[x (if include_input)] then, per input dim d and frequency k: sin(f_k x_d), cos(f_k x_d)."""
    angles = x[..., :, None] * freqs.to(x)  # (*S, D, K)
    encoded = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)  # (*S, D·K·2)
    return torch.cat([x, encoded], dim=-1) if include_input else encoded
