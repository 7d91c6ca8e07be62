"""Accuracy of an exported textured mesh against a known surface (an analytic scene or any SDF + colour).

Used by the export tests and by the oracle-demo export check: geometry error = mean |sdf| at the mesh's
vertices and at area-uniform surface samples; colour error = |texture(uv) − true albedo| at those samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from geometry.mesh.distance import point_mesh_distance, true_surface_samples
from geometry.mesh.mesh import Mesh
from geometry.mesh.texture import sample_texture


@dataclass
class SurfaceAccuracy:
    """vertex_sdf / sample_sdf: mean |sdf| (world units) at vertices / surface samples; color_error: mean over
    samples of the largest per-channel |texture − albedo| in [0, 1]; color_error_median likewise (robust to
    samples straddling a colour boundary)."""

    vertex_sdf: float
    sample_sdf: float
    color_error: float
    color_error_median: float


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Area-uniform random surface points (n, 3) and their interpolated UVs (n, 2) (None without UVs)."""
    rng = np.random.default_rng(seed)
    v = mesh.vertices.astype(np.float64)[mesh.faces]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)  # uniform barycentrics on a triangle (Osada et al. 2002, eq. 1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    points = (v[face] * bary[..., None]).sum(1)
    uv = None
    if mesh.uv is not None:
        uv = (mesh.uv.astype(np.float64)[mesh.faces[face]] * bary[..., None]).sum(1)
    return points.astype(np.float32), None if uv is None else uv.astype(np.float32)


@torch.no_grad()
def surface_accuracy(
    mesh: Mesh,
    base_color: Tensor,
    sdf_fn: Callable[[Tensor], Tensor],
    albedo_fn: Callable[[Tensor], Tensor],
    n_samples: int = 20_000,
    seed: int = 0,
) -> SurfaceAccuracy:
    """Compare a textured world-frame (z-up) mesh with the true surface; base_color (H, W, 3), row 0 = v top."""
    points, uv = sample_surface(mesh, n_samples, seed)
    p = torch.from_numpy(points)
    vertex_sdf = float(sdf_fn(torch.from_numpy(mesh.vertices).float()).abs().mean())
    sample_sdf = float(sdf_fn(p).abs().mean())
    err = (sample_texture(base_color.cpu(), torch.from_numpy(uv)) - albedo_fn(p).float()).abs().amax(-1)
    return SurfaceAccuracy(vertex_sdf, sample_sdf, float(err.mean()), float(err.median()))


@dataclass
class SurfaceDistances:
    """accuracy: mean distance (world units) from the mesh to the true surface (|sdf| at area-uniform mesh
    samples); completeness: mean distance from area-uniform samples of the true surface to the mesh."""

    accuracy: float
    completeness: float


@torch.no_grad()
def surface_distances(
    mesh: Mesh,
    sdf_fn: Callable[[Tensor], Tensor],
    n_samples: int = 20_000,
    seed: int = 0,
    radius: float = 1.0,
) -> SurfaceDistances:
    """Accuracy and completeness of a world-frame mesh against the zero level of `sdf_fn` inside radius."""
    points, _ = sample_surface(mesh, n_samples, seed)
    accuracy = float(sdf_fn(torch.from_numpy(points).double()).abs().mean())
    truth = true_surface_samples(lambda p: sdf_fn(p).double(), n_samples, radius, seed=seed)
    completeness = float(point_mesh_distance(truth, mesh.vertices, mesh.faces).mean())
    return SurfaceDistances(accuracy, completeness)
