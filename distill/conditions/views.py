"""Which prompt a camera sees: view directions (DreamFusion §3.2) and Perp-Neg's view interpolation.

Degrees in, azimuth 0 on the object's front (+x), elevation 90 overhead (DESIGN.md §3).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

DIRECTIONS = ("front", "side", "back", "overhead")
FRONT, SIDE, BACK, OVERHEAD = range(4)


def wrap_azimuth(azimuth: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
    """Azimuth in degrees wrapped to (-180, 180]."""
    return azimuth - 360.0 * torch.ceil((azimuth - 180.0) / 360.0)


def view_direction(
    elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"], thresholds=None
) -> Int[Tensor, " B"]:
    """Index into DIRECTIONS per camera (DreamFusion §3.2 view-dependent prompting).

    thresholds: anything with front_threshold / back_threshold / overhead_threshold (a config or
    PromptEmbeddings); None = 45 / 45 / 60. Boundaries are strict: |az| = 45 is side, elevation = 60 is not
    overhead.
    """
    front = getattr(thresholds, "front_threshold", 45.0)
    back = getattr(thresholds, "back_threshold", 45.0)
    overhead = getattr(thresholds, "overhead_threshold", 60.0)
    az = wrap_azimuth(azimuth).abs()
    idx = torch.full_like(az, SIDE, dtype=torch.long)
    idx[az < front] = FRONT
    idx[az > 180.0 - back] = BACK
    idx[elevation > overhead] = OVERHEAD
    return idx


def shifted_exp_decay(coeffs: tuple[float, float, float], r: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
    """f(r) = a·exp(-b·r) + c, Perp-Neg's negative-weight curve (Armandpour et al. 2023)."""
    a, b, c = coeffs
    return a * torch.exp(-b * r) + c


def perp_neg_weights(
    elevation: Float[Tensor, " B"],
    azimuth: Float[Tensor, " B"],
    f_sb: tuple[float, float, float],
    f_fsb: tuple[float, float, float],
    f_fs: tuple[float, float, float],
    f_sf: tuple[float, float, float],
    overhead_threshold: float = 60.0,
) -> tuple[Float[Tensor, " B"], Float[Tensor, "B 2"], Int[Tensor, "B 4"]]:
    """Perp-Neg's interpolation and negative views, as the method's authors implement it (stable-dreamfusion,
    threestudio's get_text_embeddings_perp_neg):

    |az| < 90:  r = 1 − |az|/90, positive = r·front + (1−r)·side, negatives front and side with weights
                (−f_fs(r), −f_sf(1−r)).
    |az| ≥ 90:  r = 2 − |az|/90, positive = r·side + (1−r)·back, negatives side and front with weights
                (−f_sb(r), −f_fsb(r)).
    overhead (elevation > overhead_threshold): the overhead prompt alone, negatives with weight 0.
    Returns r (B,), weights (B, 2) for [neg_a, neg_b], and DIRECTIONS indices (B, 4) =
    [positive r-view, positive (1−r)-view, neg_a, neg_b].
    """
    az = wrap_azimuth(azimuth).abs()
    front_half = az < 90.0
    r = torch.where(front_half, 1.0 - az / 90.0, 2.0 - az / 90.0)
    w_front = torch.stack([-shifted_exp_decay(f_fs, r), -shifted_exp_decay(f_sf, 1.0 - r)], dim=-1)
    w_back = torch.stack([-shifted_exp_decay(f_sb, r), -shifted_exp_decay(f_fsb, r)], dim=-1)
    weights = torch.where(front_half[:, None], w_front, w_back)
    idx_front = torch.tensor([FRONT, SIDE, FRONT, SIDE], device=az.device)
    idx_back = torch.tensor([SIDE, BACK, SIDE, FRONT], device=az.device)
    views = torch.where(front_half[:, None], idx_front, idx_back)
    overhead = (elevation.to(az.device) > overhead_threshold)[:, None]
    r = torch.where(overhead[:, 0], torch.ones_like(r), r)
    weights = torch.where(overhead, torch.zeros_like(weights), weights)
    views = torch.where(overhead, torch.full_like(views, OVERHEAD), views)
    return r, weights, views
