"""The standard 3DGS .ply layout (Kerbl et al. 2023), readable by common splat viewers.

Hand-written binary PLY writer/reader (the `plyfile` package is not a dependency; the format is a short header
plus one packed float32 record per Gaussian). Properties, in order: x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1)
opacity scale_0..2 rot_0..3, with opacity as a logit, scales as logs, rot as (w, x, y, z) and f_rest stored
channel-major (all K coefficients of red, then green, then blue), as the reference implementation does.
Positions are the project's world coordinates (z-up, DESIGN.md §3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.mesh_io import write_atomic


def ply_property_names(num_rest: int) -> list[str]:
    """num_rest: SH coefficients beyond DC per channel (0, 3, 8 or 15)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest)]
    return names + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def gaussians_to_ply_bytes(tensors: dict[str, Tensor]) -> bytes:
    """tensors: means (N,3), log_scales (N,3), quats (N,4), opacity_logits (N,1), sh_dc (N,3), sh_rest (N,K,3)."""
    t = {k: v.detach().float().cpu() for k, v in tensors.items()}
    n, k = t["means"].shape[0], t["sh_rest"].shape[1]
    rest = t["sh_rest"].transpose(1, 2).reshape(n, 3 * k)  # channel-major
    quats = t["quats"] / t["quats"].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    columns = [t["means"], torch.zeros(n, 3), t["sh_dc"], rest, t["opacity_logits"], t["log_scales"], quats]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = ply_property_names(k)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def write_gaussians_ply(path: str | Path, tensors: dict[str, Tensor]) -> Path:
    """Atomic write (readers never see half a file)."""
    path = Path(path)
    write_atomic(path, gaussians_to_ply_bytes(tensors))
    return path


def read_gaussians_ply(path: str | Path, max_sh_degree: int | None = None) -> dict[str, Tensor]:
    """Read a binary little-endian 3DGS .ply (float properties). SH bands above max_sh_degree are dropped,
    missing ones are zero-filled. Raises ValueError naming the problem for anything else."""
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
    data = np.frombuffer(raw[end + len("end_header\n") :], dtype="<f4", count=n * len(names)).reshape(n, -1)
    col = {name: i for i, name in enumerate(names)}
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_0"]
    missing = [m for m in need if m not in col]
    if missing:
        raise ValueError(f"{path} lacks 3DGS properties {missing}: it is not a Gaussian-splat .ply")

    def cols(keys: list[str]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(data[:, [col[c] for c in keys]])).float()

    n_rest = sum(name.startswith("f_rest_") for name in names) // 3
    rest = cols([f"f_rest_{i}" for i in range(3 * n_rest)]).reshape(n, 3, n_rest).transpose(1, 2)
    if max_sh_degree is not None:
        want = (max_sh_degree + 1) ** 2 - 1
        rest = torch.cat([rest[:, :want], torch.zeros(n, max(0, want - n_rest), 3)], dim=1)
    return {
        "means": cols(["x", "y", "z"]),
        "log_scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacity_logits": cols(["opacity"]),
        "sh_dc": cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "sh_rest": rest.contiguous(),
    }
