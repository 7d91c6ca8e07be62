"""Exact point-to-mesh distances and samples of a true surface given by its SDF, for the accuracy /
completeness figures of an exported mesh (DTU-style: accuracy = how far the mesh is from the truth,
completeness = how far the truth is from the mesh).

Hand-written (numpy + scipy's cKDTree): trimesh's proximity queries need rtree / embree, which are not
dependencies here. Candidate faces come from the k nearest face centroids; a point's answer is exact once the
best distance found is no more than (distance to the k-th centroid − the largest centroid-to-vertex radius),
since no face outside the k can then come closer; k doubles for the points where that does not hold yet.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes
from torch import Tensor


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, 3) closest points on triangles (a, b, c) to points p, all (N, 3) float64 — Ericson, Real-Time
    Collision Detection §5.1.5: the Voronoi region of p (a vertex, an edge or the face) by barycentric tests."""
    dot = lambda x, y: np.einsum("ij,ij->i", x, y)  # noqa: E731
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    # Interior of the face first, then overwrite by the regions in the reverse order of Ericson's early exits.
    denom = va + vb + vc
    safe = np.where(np.abs(denom) > 1e-30, denom, 1.0)
    v, w = vb / safe, vc / safe
    out = a + ab * v[:, None] + ac * w[:, None]
    region = lambda mask, value: np.copyto(out, value, where=mask[:, None])  # noqa: E731
    e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    region(e_bc, b + (c - b) * _ratio(d4 - d3, (d4 - d3) + (d5 - d6))[:, None])
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    region(e_ac, a + ac * _ratio(d2, d2 - d6)[:, None])
    region((d6 >= 0) & (d5 <= d6), c)
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    region(e_ab, a + ab * _ratio(d1, d1 - d3)[:, None])
    region((d3 >= 0) & (d4 <= d3), b)
    region((d1 <= 0) & (d2 <= 0), a)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den = 0 (an edge of zero length: its start is its closest point)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def point_mesh_distance(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 16, pairs: int = 1 << 20
) -> np.ndarray:
    """(N,) exact unsigned distance from each point (N, 3) to the triangle mesh (vertices (V, 3), faces (F, 3))."""
    tri = vertices.astype(np.float64)[faces]  # (F, 3, 3)
    centroids = tri.mean(axis=1)
    reach = np.linalg.norm(
        tri - centroids[:, None], axis=-1
    ).max()  # no face point is further from its centroid
    tree = cKDTree(centroids)
    points = points.astype(np.float64)
    best = np.full(len(points), np.inf)
    todo = np.arange(len(points))
    k = min(k, len(faces))
    while len(todo):
        chunk = max(1, pairs // k)  # (point, candidate face) pairs per batch: bounded memory as k grows
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            dist_c, cand = tree.query(points[idx], k=k)
            cand = cand.reshape(len(idx), -1)
            p = np.repeat(points[idx], cand.shape[1], axis=0)
            t = tri[cand.reshape(-1)]
            d = np.linalg.norm(closest_point_on_triangles(p, t[:, 0], t[:, 1], t[:, 2]) - p, axis=-1)
            best[idx] = d.reshape(len(idx), -1).min(axis=1)
            # Exact when every unseen face is provably further: its centroid is beyond the k-th, minus reach.
            exact = best[idx] <= np.asarray(dist_c).reshape(len(idx), -1)[:, -1] - reach
            best[idx[~exact]] = np.where(k >= len(faces), best[idx[~exact]], np.inf)
        todo = todo[np.isinf(best[todo])]
        k = min(2 * k, len(faces))
    return best


def _sdf_gradient(sdf_fn: Callable[[Tensor], Tensor], p: Tensor, eps: float = 1e-5) -> Tensor:
    eye = torch.eye(3, dtype=p.dtype)
    return torch.stack([(sdf_fn(p + eps * e) - sdf_fn(p - eps * e)) / (2 * eps) for e in eye], dim=-1)


@torch.no_grad()
def true_surface_samples(
    sdf_fn: Callable[[Tensor], Tensor], n: int, radius: float = 1.0, resolution: int = 200, seed: int = 0
) -> np.ndarray:
    """(n, 3) points on the zero level of sdf_fn (world units), spread area-uniformly: marching cubes of the
    SDF at `resolution`³ over [−radius, radius]³, area-weighted samples, then Newton steps x ← x − f·∇f/|∇f|²
    onto the exact level (the marching-cubes surface is off by ~h²/8R)."""
    axis = torch.linspace(-radius, radius, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = torch.cat([sdf_fn(g) for g in grid.split(1 << 18)]).reshape((resolution,) * 3).numpy()
    verts, faces, _, _ = marching_cubes(values, 0.0, spacing=(2 * radius / (resolution - 1),) * 3)
    verts = verts - radius
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)  # uniform barycentrics (Osada et al. 2002, eq. 1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    p = torch.from_numpy((tri[face] * bary[..., None]).sum(1))
    for _ in range(4):
        f, g = sdf_fn(p), _sdf_gradient(sdf_fn, p)
        p = p - (f / g.pow(2).sum(-1).clamp_min(1e-12))[:, None] * g
    return p.float().numpy()
