"""The standard 3DGS .ply layout (Kerbl et al. 2023), readable by common splat viewers.

Hand-written binary PLY writer/reader (the `plyfile` package is not a dependency; the format is a short header
plus one packed float32 record per Gaussian). Properties, in order: x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1)
opacity scale_0..2 rot_0..3, with opacity as a logit, scales as logs, rot as (w, x, y, z) and f_rest stored
channel-major (all K coefficients of red, then green, then blue), as the reference implementation does.

Frame: by default the file is written in the y-up frame DreamGaussian and splat viewers use (front +Z, up +Y;
geometry/functional/frames.py): positions and quaternions are rotated, and so are the view-dependent SH
coefficients (band by band, exactly); `frame="world"` keeps this project's z-up frame.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from distill3d.files import write_atomic
from geometry.functional.frames import WORLD_TO_Y_UP, quat_multiply, quats_to_y_up
from geometry.functional.sh import spherical_harmonics

FRAMES = ("y_up", "world")


def ply_property_names(num_rest: int) -> list[str]:
    """num_rest: SH coefficients beyond DC per channel (0, 3, 8 or 15)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest)]
    return names + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@functools.cache
def sh_rotation(rotation: tuple[tuple[float, ...], ...], bands: int) -> Tensor:
    """(K, K) matrix M taking SH coefficients of bands 1..bands−1 (K = bands² − 1) of a function on directions
    to the coefficients of the same function seen in a rotated frame d' = R d: a' = M a.

    Each band is closed under rotation, so M is exact; it is found by least squares on sample directions
    (Σ a'_k Y_k(R d) = Σ a_k Y_k(d) for all d), in float64.
    """
    R = torch.tensor(rotation, dtype=torch.float64)
    d = torch.nn.functional.normalize(
        torch.randn(512, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1
    )
    before = spherical_harmonics(d, bands)[:, 1:]  # Y(d)
    after = spherical_harmonics(d @ R.T, bands)[:, 1:]  # Y(R d)
    # Σ_k a'_k Y_k(R d) = Σ_k a_k Y_k(d) for every a ⇔ after @ M = before.
    return torch.linalg.lstsq(after, before).solution.float()


def _rotate_rest(rest: Float[Tensor, "N K 3"], rotation: np.ndarray) -> Float[Tensor, "N K 3"]:
    k = rest.shape[1]
    if k == 0:
        return rest
    M = sh_rotation(tuple(map(tuple, rotation.tolist())), round((k + 1) ** 0.5))
    return torch.einsum("ij,njc->nic", M, rest)


def to_frame(tensors: dict[str, Tensor], frame: str) -> dict[str, Tensor]:
    """Gaussian tensors in the world frame → `frame` ("y_up" rotates means, quats and SH; "world" copies)."""
    t = {k: v.detach().float().cpu() for k, v in tensors.items()}
    if frame == "world":
        return t
    R = torch.tensor(WORLD_TO_Y_UP, dtype=torch.float32)
    return {
        **t,
        "means": t["means"] @ R.T,
        "quats": quats_to_y_up(t["quats"]),
        "sh_rest": _rotate_rest(t["sh_rest"], WORLD_TO_Y_UP),
    }


def from_frame(tensors: dict[str, Tensor], frame: str) -> dict[str, Tensor]:
    """Inverse of to_frame: a file's tensors in `frame` → the world frame."""
    if frame == "world":
        return tensors
    R = torch.tensor(WORLD_TO_Y_UP, dtype=torch.float32)
    inverse_quat = torch.tensor([0.5, 0.5, 0.5, 0.5]).expand_as(
        tensors["quats"]
    )  # conjugate of WORLD_TO_Y_UP_QUAT
    return {
        **tensors,
        "means": tensors["means"] @ R,
        "quats": quat_multiply(inverse_quat, tensors["quats"]),
        "sh_rest": _rotate_rest(tensors["sh_rest"], WORLD_TO_Y_UP.T),
    }


def gaussians_to_ply_bytes(
    tensors: dict[str, Tensor], frame: str = "y_up", sh_degree: int | None = None
) -> bytes:
    """tensors: means (N,3), log_scales (N,3), quats (N,4), opacity_logits (N,1), sh_dc (N,3), sh_rest (N,K,3)
    in the world frame. sh_degree pads (with zeros) or keeps the higher bands: 3 → 45 f_rest values."""
    t = to_frame(tensors, frame)
    n = t["means"].shape[0]
    rest = t["sh_rest"]
    if sh_degree is not None:
        want = (sh_degree + 1) ** 2 - 1
        rest = torch.cat([rest[:, :want], torch.zeros(n, max(0, want - rest.shape[1]), 3)], dim=1)
    k = rest.shape[1]
    rest = rest.transpose(1, 2).reshape(n, 3 * k)  # channel-major
    quats = t["quats"] / t["quats"].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    columns = [t["means"], torch.zeros(n, 3), t["sh_dc"], rest, t["opacity_logits"], t["log_scales"], quats]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in ply_property_names(k)] + ["end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def write_gaussians_ply(
    path: str | Path, tensors: dict[str, Tensor], frame: str = "y_up", sh_degree: int | None = None
) -> Path:
    """Atomic write (readers never see half a file)."""
    return write_atomic(Path(path), gaussians_to_ply_bytes(tensors, frame, sh_degree))


def read_gaussians_ply(
    path: str | Path, max_sh_degree: int | None = None, frame: str = "y_up"
) -> dict[str, Tensor]:
    """Read a binary little-endian 3DGS .ply (float properties) stored in `frame`, into the world frame. SH bands
    above max_sh_degree are dropped, missing ones are zero-filled. Raises ValueError naming the problem."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path} is not a PLY file: expected a 'ply' header ending in 'end_header'")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported (save it from a 3DGS trainer)")
    n, names = 0, []
    for line in lines:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["property"]:
            if parts[1] not in ("float", "float32"):
                raise ValueError(f"{path}: property {parts[-1]} is {parts[1]}; the 3DGS layout uses float")
            names.append(parts[-1])
    body = raw[end + len("end_header\n") :]
    if len(body) < n * len(names) * 4:
        raise ValueError(
            f"{path} is truncated: {n} Gaussians need {n * len(names) * 4} bytes, it has {len(body)}"
        )
    data = np.frombuffer(body, dtype="<f4", count=n * len(names)).reshape(n, -1)
    col = {name: i for i, name in enumerate(names)}
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_0"]
    missing = [m for m in need if m not in col]
    if missing:
        raise ValueError(f"{path} lacks 3DGS properties {missing}: it is not a Gaussian-splat .ply")

    def cols(keys: list[str]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(data[:, [col[c] for c in keys]])).float()

    n_rest = sum(name.startswith("f_rest_") for name in names) // 3
    rest = cols([f"f_rest_{i}" for i in range(3 * n_rest)]).reshape(n, 3, n_rest).transpose(1, 2)
    tensors = {
        "means": cols(["x", "y", "z"]),
        "log_scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacity_logits": cols(["opacity"]),
        "sh_dc": cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "sh_rest": rest.contiguous(),
    }
    tensors = from_frame(tensors, frame)
    if max_sh_degree is not None:
        want = (max_sh_degree + 1) ** 2 - 1
        r = tensors["sh_rest"]
        tensors["sh_rest"] = torch.cat(
            [r[:, :want], torch.zeros(n, max(0, want - r.shape[1]), 3)], dim=1
        ).contiguous()
    return tensors
