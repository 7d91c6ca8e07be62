"""Where rays enter and leave the scene bounds: the one copy of ray–sphere and ray–box intersection."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def _dot(a: Float[Tensor, "N 3"], b: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    # Elementwise on purpose: a reduction over a size-3 dim is slow on a busy CPU (many tiny kernels).
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def ray_sphere_interval(
    origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], radius: float = 1.0
) -> tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Entry/exit distances of unit-direction rays through the origin-centred sphere of `radius`.

    Solves |o + t d|² = r² (unit leading coefficient): t = −b ± sqrt(b² − c), b = o·d, c = |o|² − r². Entry is
    clamped to 0 for origins inside. Returns (near, far, hit); near = far = 0 where the ray misses or the
    sphere is behind it.
    """
    b = _dot(origins, dirs)
    c = _dot(origins, origins) - radius**2
    disc = b * b - c
    root = disc.clamp_min(0.0).sqrt()
    near, far = (-b - root).clamp_min(0.0), (-b + root).clamp_min(0.0)
    hit = (disc > 0) & (far > 0)
    return near.masked_fill(~hit, 0.0), far.masked_fill(~hit, 0.0), hit


def ray_box_interval(
    origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], radius: float
) -> tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Ray–AABB intersection with the cube [−r, r]³ (slab method). near = far where the ray misses."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) * inv, (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1).clamp_min(0.0)
    hit = far > near
    far = torch.maximum(far, near)
    return near, far, hit
