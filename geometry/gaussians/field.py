"""The Gaussians as a continuous field for mesh export: opacity-weighted density and mean colour.

A coarse spatial hash (cells listing the Gaussians whose 3σ box touches them) keeps a 128³ grid query from
touching every Gaussian for every point; it is cached per parameter version because export queries the field
chunk by chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from geometry.functional.footprint import box_cells
from geometry.gaussians.functional import quat_to_rotmat, sh_to_rgb

if TYPE_CHECKING:
    from geometry.gaussians.model import GaussianModel

INDEX_RESOLUTION = 48
CHUNK = 4096


def spatial_index(model: GaussianModel, cutoff: float) -> tuple[Tensor, Tensor, float]:
    """(table (r, r, r, K) of Gaussian ids, −1 padded; lower corner; cell size) over the Gaussians' cutoff boxes."""
    key = (model.means._version, model.log_scales._version, model.num_gaussians, cutoff)
    cached = getattr(model, "_index_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    means, scales = model.means.detach(), model.scales.detach()
    extent = cutoff * scales.max(-1).values  # (N,) bounding half-size
    lo = means.min(0).values.min() - extent.max()
    hi = means.max(0).values.max() + extent.max()
    res = INDEX_RESOLUTION
    size = float(hi - lo) / res
    cmin = ((means - extent[:, None] - lo) / size).floor().long().clamp(0, res - 1)
    cmax = ((means + extent[:, None] - lo) / size).floor().long().clamp(0, res - 1)
    gid, cell = box_cells(cmin, cmax - cmin + 1)
    flat = (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]
    order = torch.argsort(flat, stable=True)
    flat, gid = flat[order], gid[order]
    per_cell = torch.bincount(flat, minlength=res**3)
    k = max(int(per_cell.max()), 1)
    slot = torch.arange(len(flat), device=flat.device) - torch.repeat_interleave(
        per_cell.cumsum(0) - per_cell, per_cell
    )
    table = torch.full((res**3, k), -1, dtype=torch.long, device=flat.device)
    table[flat, slot] = gid
    result = (table.reshape(res, res, res, k), lo, size)
    model._index_cache = (key, result)
    return result


@torch.no_grad()
def field_sums(
    model: GaussianModel, points: Float[Tensor, "P 3"], cutoff: float = 3.0
) -> tuple[Tensor, Tensor]:
    """(density (P,), weighted colour sum (P, 3)) from the Gaussians within `cutoff` σ of each point."""
    table, lo, size = spatial_index(model, cutoff)
    res = table.shape[0]
    ijk = ((points - lo) / size).floor().long()
    inside = ((ijk >= 0) & (ijk < res)).all(-1)
    ijk = ijk.clamp(0, res - 1)
    cand = table[ijk[:, 0], ijk[:, 1], ijk[:, 2]]  # (P, K) Gaussian ids, -1 = none
    valid = (cand >= 0) & inside[:, None]
    g = cand.clamp_min(0)
    d = points[:, None, :] - model.means[g]  # (P, K, 3)
    # Mahalanobis distance in the Gaussian's frame: (Rᵀ d) / s.
    R = quat_to_rotmat(model.quats)[g]
    local = (R.transpose(-1, -2) @ d[..., None])[..., 0] / model.scales[g]
    m2 = (local * local).sum(-1)
    # Truncated at `cutoff` σ (Mahalanobis): exactly the Gaussians the index lists, whatever the cell size.
    w = model.opacities[g] * torch.exp(-0.5 * m2) * (valid & (m2 < cutoff * cutoff))
    rgb = sh_to_rgb(model.sh_dc, model.sh_rest, None)[g]
    return w.sum(-1), (w[..., None] * rgb).sum(-2)


def gaussian_density(model: GaussianModel, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 1"]:
    """Σ_i o_i exp(−½ dᵀΣ_i⁻¹d) at each point (DreamGaussian's mesh extraction field)."""
    return torch.cat([field_sums(model, points[i : i + CHUNK])[0] for i in range(0, len(points), CHUNK)])[
        :, None
    ]


def gaussian_albedo(model: GaussianModel, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
    """Density-weighted mean of the Gaussians' (view-independent) colours, in [0, 1]; grey where empty."""
    out = []
    for i in range(0, len(points), CHUNK):
        w, c = field_sums(model, points[i : i + CHUNK])
        out.append(torch.where(w[:, None] > 1e-8, c / w.clamp_min(1e-8)[:, None], torch.full_like(c, 0.5)))
    return torch.cat(out).clamp(0, 1)
