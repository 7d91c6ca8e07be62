"""Volume-rendering math of the torch twin: stratified samples along rays and compositing weights."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def stratified_bins(
    near: Float[Tensor, "R"], far: Float[Tensor, "R"], num_samples: int, jitter: bool
) -> tuple[Float[Tensor, "R N"], Float[Tensor, "R N"], Float[Tensor, "R N"]]:
    """Stratified sampling (NeRF eq. 2): N equal bins in [near, far]; one point per bin.

    Returns (t_starts, t_ends, t_points): bin edges (used for δ in compositing) and the point where the field
    is evaluated — uniform in the bin when `jitter`, its midpoint otherwise.
    """
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * u
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    frac = torch.rand_like(t_starts) if jitter else torch.full_like(t_starts, 0.5)
    return t_starts, t_ends, t_starts + frac * (t_ends - t_starts)


def composite_weights(
    sigmas: Float[Tensor, "R N"], t_starts: Float[Tensor, "R N"], t_ends: Float[Tensor, "R N"]
) -> tuple[Float[Tensor, "R N"], Float[Tensor, "R N"], Float[Tensor, "R N"]]:
    """Volume-rendering weights (Max 1995; NeRF eq. 3): same outputs as nerfacc.render_weight_from_density.

    alpha_i = 1 - exp(-σ_i δ_i); T_i = exp(-Σ_{j<i} σ_j δ_j) = Π_{j<i} (1 - alpha_j); w_i = T_i alpha_i.
    Returns (weights, transmittance, alphas), each (R, N).
    """
    tau = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-tau)
    exclusive = torch.cumsum(tau, dim=-1) - tau  # exclusive prefix sum along the ray
    transmittance = torch.exp(-exclusive)
    return transmittance * alphas, transmittance, alphas
