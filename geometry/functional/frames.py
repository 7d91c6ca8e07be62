"""World frame → the y-up frame of glTF, game engines and Gaussian-splat tools (one mapping for every file).

The world is z-up with the object's front (azimuth 0, the prompt's "front view") facing +x (DESIGN.md §3).
glTF 2.0 (§3.4) is y-up with an asset's front facing +Z, as are DreamGaussian's .ply files and splat viewers.
The proper rotation that takes one to the other is

    (X, Y, Z)_y-up = (y, z, x)_world        (world +x → +Z front, world +z → +Y up, world +y → +X)

a cyclic permutation (det = +1), so winding and handedness are kept and nothing is mirrored.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

WORLD_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
# The same rotation as a unit quaternion (w, x, y, z): −120° about (1, 1, 1)/√3.
WORLD_TO_Y_UP_QUAT = (0.5, -0.5, -0.5, -0.5)


def to_y_up(xyz: np.ndarray) -> np.ndarray:
    """World points or directions (N, 3) → y-up (N, 3) float32."""
    return (np.asarray(xyz, dtype=np.float64) @ WORLD_TO_Y_UP.T).astype(np.float32)


def from_y_up(xyz: np.ndarray) -> np.ndarray:
    """Inverse of to_y_up."""
    return (np.asarray(xyz, dtype=np.float64) @ WORLD_TO_Y_UP).astype(np.float32)


def quat_multiply(a: Float[Tensor, "*S 4"], b: Float[Tensor, "*S 4"]) -> Float[Tensor, "*S 4"]:
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions: the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quats_to_y_up(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 4"]:
    """Orientations (w, x, y, z) of objects in the world frame, expressed in the y-up frame: q_R ⊗ q."""
    q_r = torch.tensor(WORLD_TO_Y_UP_QUAT, dtype=quats.dtype, device=quats.device).expand_as(quats)
    return quat_multiply(q_r, quats)
