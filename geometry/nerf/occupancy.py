"""Occupancy grid for empty-space skipping: torch twin of nerfacc.OccGridEstimator's grid.

Hand-written because nerfacc's grid update and marching run only on CUDA tensors; on CUDA the volume renderer
uses nerfacc itself. Cells hold an EMA of the field's opacity-like value σ·Δt (density times the renderer's
step length, what nerfacc's `occ_eval_fn` is given in threestudio), so the threshold does not depend on the
density's units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    """Binary occupancy over [-r, r]^3 from an EMA of σ·Δt.

    Starts all-occupied; `update` evaluates the value at one random point per cell, keeps
    ema = max(decay·ema, value) and marks cells with ema ≥ min(threshold, mean ema) as occupied.
    """

    def __init__(self, radius: float, resolution: int) -> None:
        super().__init__()
        self.radius, self.resolution = float(radius), int(resolution)
        self.register_buffer("density_ema", torch.zeros(resolution**3))
        self.register_buffer("occupied", torch.ones(resolution, resolution, resolution, dtype=torch.bool))

    def cell_centers_jittered(self) -> Float[Tensor, "M 3"]:
        res, device = self.resolution, self.density_ema.device
        idx = torch.arange(res, device=device, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), dim=-1).reshape(-1, 3)
        return ((grid + torch.rand_like(grid)) / res * 2.0 - 1.0) * self.radius

    @torch.no_grad()
    def update(
        self,
        value_fn: Callable[[Tensor], Tensor],
        decay: float,
        threshold: float,
        all_occupied: bool = False,
        samples_per_cell: int = 1,
    ) -> None:
        """value_fn: points (M, 3) → σ·Δt (M,) or (M, 1)."""
        value = torch.stack(
            [value_fn(self.cell_centers_jittered()).reshape(-1).float() for _ in range(samples_per_cell)]
        ).amax(0)
        self.density_ema.copy_(torch.maximum(self.density_ema * decay, value))
        if all_occupied:
            self.occupied.fill_(True)
            return
        thr = min(threshold, self.density_ema.mean().item())
        self.occupied.copy_((self.density_ema >= thr).reshape(self.occupied.shape))

    def query(self, points: Float[Tensor, "*S 3"]) -> Bool[Tensor, "*S"]:
        """True where the point lies in an occupied cell; False outside the cube."""
        res = self.resolution
        cell = ((points / self.radius + 1.0) * 0.5 * res).floor().long()
        inside = ((cell >= 0) & (cell < res)).all(-1)
        cell = cell.clamp(0, res - 1)
        return inside & self.occupied[cell[..., 0], cell[..., 1], cell[..., 2]]
