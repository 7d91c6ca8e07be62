"""Per-Gaussian math of 3DGS (Kerbl et al. 2023): rotations, covariances, SH colours."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from geometry.functional.sh import SH_C0, spherical_harmonics


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices of (w, x, y, z) quaternions (normalized here; 3DGS / gsplat convention)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """Σ = R S Sᵀ Rᵀ (3DGS eq. 6)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(1, 2)


def sh_to_rgb(
    sh_dc: Float[Tensor, "N 3"], sh_rest: Float[Tensor, "N K 3"], dirs: Float[Tensor, "*B N 3"] | None
) -> Float[Tensor, "*B N 3"]:
    """Colour = max(0, 0.5 + Σ_lm c_lm Y_lm(dir)) (3DGS); dirs are unit vectors from the camera to the Gaussian."""
    rgb = SH_C0 * sh_dc
    if sh_rest.shape[1] > 0 and dirs is not None:
        bands = round(math.sqrt(sh_rest.shape[1] + 1))
        basis = spherical_harmonics(dirs, bands)[..., 1:]  # (*B, N, K)
        rgb = rgb + (basis[..., None] * sh_rest).sum(-2)
    return (rgb + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    return (rgb - 0.5) / SH_C0
