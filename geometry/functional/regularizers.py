"""Regularizers on rendered opacity, shared by the renderers that declare them (threestudio's names)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def sparsity_loss(opacity: Float[Tensor, "B H W 1"]) -> Float[Tensor, ""]:
    """mean sqrt(α² + 0.01): pushes empty pixels to empty (a smooth L1 on opacity; Latent-NeRF/threestudio)."""
    return (opacity.pow(2) + 0.01).sqrt().mean()


def opaque_loss(opacity: Float[Tensor, "B H W 1"], eps: float = 1e-5) -> Float[Tensor, ""]:
    """Binary entropy of opacity, −[α log α + (1 − α) log(1 − α)]: pushes every pixel to fully in or out."""
    a = opacity.clamp(eps, 1.0 - eps)
    return -(a * a.log() + (1 - a) * (1 - a).log()).mean()


def covered_mean(values: Float[Tensor, "B H W 1"], covered: Tensor) -> Float[Tensor, ""]:
    """Mean of `values` over the covered pixels only (0 when none is covered), as threestudio averages the
    orientation and z-variance losses: an object that fills little of the image is not diluted by the rest."""
    mask = covered.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
