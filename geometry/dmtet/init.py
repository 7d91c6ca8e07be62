"""Initial signed distances at the tet-grid vertices: a sphere, a mesh file, a NeRF's surface or density.

All three give a signed distance in world units (< 0 inside), so the SDF parameter has the same scale, and its
learning rate the same meaning, whichever file or previous stage the geometry starts from.

The mesh SDF is hand-written because trimesh's `signed_distance` and `contains` need rtree (or embree), which
the project does not depend on: the sign comes from ray parity along the lattice lines (a vote of the three
axes), the distance from exact point–triangle distances to candidate faces found with a k-d tree.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from distill3d.errors import UserError

log = logging.getLogger(__name__)


class InitError(UserError, ValueError):
    """The DMTet cannot start from what it was given (an unreadable mesh file, a NeRF with no surface)."""


def sphere_sdf(points: Float[Tensor, "V 3"], radius: float) -> Float[Tensor, " V"]:
    """Exact signed distance |x| − radius of a sphere at the origin (world units)."""
    return points.norm(dim=-1) - radius


def density_to_sdf(
    density: Float[Tensor, " V"], threshold: float, resolution: int, cell_size: float, clamp: float
) -> Float[Tensor, " V"]:
    """Signed distance (world units, < 0 inside) to the level set density = threshold, from lattice samples.

    density: samples at the lattice vertices in the tet grid's order (row (i·n + j)·n + k, n = resolution + 1).
    The reference is −(σ − threshold) clamped to ±1. Raw density differences are 10–100s, so clamped most
    vertices are ±1 and their crossings sit at edge midpoints (on the blob softplus(50·(1 − |x|/0.5)) at
    res 32: 0.18 cells mean radial error, against 0.017 for this function). Dividing by one global scale keeps
    the unclamped crossings exactly (marching tets places them at the ratio s_a / (s_a − s_b)), and choosing
    that scale as the density's gradient norm at the surface (the median over vertices next to a sign change,
    central differences on the lattice, no extra field queries) makes the values distances near the surface,
    in the units of the sphere and mesh inits. Per-vertex division (a Newton step) was measured worse: the
    central differences reach a cell past the crossing.

    Far from the surface (no vertex of the other sign within a cube diagonal, so no tet edge of it crosses)
    the density says nothing about distance: empty space is flat, so (threshold − σ)/scale is one small
    constant, about a cell, everywhere. Under SDS noise those vertices then flip as soon as the surface comes
    near, and each flip exposes more of them: on a 96³ grid the surface grew to 3 M faces in 250 steps. They
    get the lattice's Euclidean distance to the other sign instead (scipy's exact EDT, minus half a cell for
    the crossing between: within about half a cell of the true distance); clamp (world units) bounds both.
    """
    n = resolution + 1
    if density.shape[0] != n**3:
        raise ValueError(f"density has {density.shape[0]} samples but a {resolution}³ tet grid has {n**3}")
    sigma = density.double().reshape(n, n, n)
    inside = sigma > threshold
    near = torch.zeros_like(inside)
    for axis in range(3):  # vertices with an axis neighbour of the other sign
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        change = inside[tuple(lo)] != inside[tuple(hi)]
        near[tuple(lo)] |= change
        near[tuple(hi)] |= change
    if not near.any():
        raise ValueError(f"the density never crosses the level {threshold:.4g}: there is no surface")
    grad_norm = torch.stack(torch.gradient(sigma, spacing=cell_size)).norm(dim=0)  # one-sided at the faces
    scale = grad_norm[near].median()
    if not scale > 0:  # only for a pathological field; any positive scale keeps the crossings
        scale = (sigma[near] - threshold).abs().max() / cell_size
    sdf = (threshold - sigma) / scale
    far = _far_distance(inside, cell_size)
    sdf = torch.where(far > 0, torch.where(inside, -far, far), sdf)
    return sdf.clamp(-clamp, clamp).reshape(-1).float()


def _far_distance(inside: Bool[Tensor, "n n n"], cell_size: float) -> Float[Tensor, "n n n"]:
    """Distance (world units) from each lattice vertex to the surface between it and the nearest vertex of the
    other sign (EDT − half a cell); 0 for vertices within a cube diagonal of one, whose values place crossings."""
    from scipy.ndimage import distance_transform_edt

    mask = inside.numpy()
    cells = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))  # in cells
    far = np.where(cells > math.sqrt(3.0) + 1e-6, (cells - 0.5) * cell_size, 0.0)
    return torch.from_numpy(far)


# ---- mesh files ---------------------------------------------------------------------------------------------
def load_init_mesh(path: str | Path, radius: float):
    """The triangle mesh in `path` (any format trimesh reads), as given (no rescaling); InitError otherwise."""
    import trimesh

    path = Path(path).expanduser()
    fix = "give a triangle mesh file (.obj, .ply, .stl, .off, .glb) or use geometry.init=sphere"
    if not path.is_file():
        raise InitError(f"geometry.init_mesh={str(path)!r} does not exist; {fix}")
    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as err:  # trimesh raises many types for a truncated or foreign file
        raise InitError(
            f"geometry.init_mesh={str(path)!r} cannot be read ({type(err).__name__}: {err}); {fix}"
        ) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InitError(f"geometry.init_mesh={str(path)!r} holds no triangles; {fix}")
    extent = float(np.abs(mesh.bounds).max())
    if extent >= radius:
        raise InitError(
            f"geometry.init_mesh={str(path)!r} reaches |coordinate| = {extent:.3g}, outside the grid of radius "
            f"{radius:g}; scale the mesh to fit inside or raise geometry.radius"
        )
    if not mesh.is_watertight:
        log.warning(
            "init mesh %s is not watertight: its inside is a vote of ray parities along the three axes, "
            "so large holes may leak",
            path,
        )
    return mesh


def _crossings_below(
    triangles: np.ndarray, axis: int, n: int, low: float, cell: float
) -> Bool[np.ndarray, "n n n"]:
    """Odd parity of the surface crossings below each lattice vertex along the lattice line through it.

    triangles: (F, 3, 3) float64 world coordinates; the lattice has n points per axis from `low`, spacing `cell`.
    The lines are shifted by a tiny irrational fraction of a cell so that none passes exactly through a mesh
    edge or vertex (lattice-aligned meshes such as boxes would otherwise count a crossing twice or never).
    """
    b, c = [d for d in range(3) if d != axis]
    shift = np.array([math.sqrt(2.0), math.sqrt(3.0)]) * 1e-6
    flat = (triangles[:, :, [b, c]] - low) / cell - shift  # (F, 3, 2) in line units
    lo = np.clip(np.ceil(flat.min(axis=1)), 0, n - 1).astype(np.int64)  # (F, 2) first line index inside
    hi = np.clip(np.floor(flat.max(axis=1)), -1, n - 1).astype(np.int64)
    spans = np.maximum(hi - lo + 1, 0)  # (F, 2) lines per direction
    counts = spans[:, 0] * spans[:, 1]
    tri = np.repeat(np.arange(len(flat)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    j = lo[tri, 0] + local // spans[tri, 1]
    k = lo[tri, 1] + local % spans[tri, 1]
    # 2-D barycentrics of the line's point (j, k) in the projected triangle.
    v0, e1, e2 = flat[tri, 0], flat[tri, 1] - flat[tri, 0], flat[tri, 2] - flat[tri, 0]
    q = np.stack([j, k], axis=1) - v0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):  # edge-on triangles (det = 0) are not hits
        w1 = (q[:, 0] * e2[:, 1] - q[:, 1] * e2[:, 0]) / det
        w2 = (e1[:, 0] * q[:, 1] - e1[:, 1] * q[:, 0]) / det
        hit = (det != 0) & (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
    tri, j, k, w1, w2 = tri[hit], j[hit], k[hit], w1[hit], w2[hit]
    along = triangles[tri, :, axis]
    at = (1 - w1 - w2) * along[:, 0] + w1 * along[:, 1] + w2 * along[:, 2]
    first_above = np.clip(np.ceil((at - low) / cell), 0, None).astype(np.int64)  # first vertex past the hit
    keep = first_above < n
    index = [None, None, None]
    index[axis], index[b], index[c] = first_above[keep], j[keep], k[keep]
    hits = np.zeros((n, n, n), np.int32)
    np.add.at(hits, tuple(index), 1)
    return np.cumsum(hits, axis=axis) % 2 == 1


def mesh_inside(triangles: np.ndarray, resolution: int, radius: float) -> Bool[np.ndarray, " V"]:
    """Lattice vertices inside a closed triangle mesh: the majority of the x, y and z ray parities."""
    n, cell = resolution + 1, 2.0 * radius / resolution
    votes = sum(_crossings_below(triangles, axis, n, -radius, cell).astype(np.int8) for axis in range(3))
    return (votes >= 2).reshape(-1)


def mesh_distance(mesh, points: np.ndarray, cell: float, k: int = 16) -> Float[np.ndarray, " V"]:
    """Unsigned distance from points (V, 3) to the mesh: exact within 3 cells of it, near-exact beyond.

    Every point gets its distance to the nearest of dense surface samples (an overestimate by at most the
    sample spacing, about cell / 3); points within 3 cells, those that place the zero crossings, are refined
    with exact point–triangle distances to the faces of their k nearest samples.
    """
    import trimesh
    from scipy.spatial import cKDTree

    count = int(np.clip(8.0 * mesh.area / cell**2, 10_000, 2_000_000))  # spacing ≈ cell / √8
    samples, face_index = trimesh.sample.sample_surface(mesh, count, seed=0)
    samples = np.concatenate([samples, mesh.triangles_center])  # every face has at least one sample
    face_index = np.concatenate([face_index, np.arange(len(mesh.faces))])
    tree = cKDTree(samples)
    distance, _ = tree.query(points, k=1, workers=-1)
    near = np.flatnonzero(distance < 3.0 * cell)
    if len(near):
        _, candidates = tree.query(points[near], k=k, workers=-1)
        query = np.repeat(points[near], k, axis=0)
        closest = trimesh.triangles.closest_point(mesh.triangles[face_index[candidates].reshape(-1)], query)
        exact = np.linalg.norm(closest - query, axis=1).reshape(-1, k).min(axis=1)
        distance[near] = np.minimum(distance[near], exact)
    return distance


def mesh_sdf(
    path: str | Path, points: Float[Tensor, "V 3"], resolution: int, radius: float
) -> Float[Tensor, " V"]:
    """Signed distance (world units, < 0 inside) at the tet-grid lattice points to the mesh in `path`."""
    return surface_sdf(
        load_init_mesh(path, radius), points, resolution, radius, f"geometry.init_mesh={str(path)!r}"
    )


def surface_sdf(
    mesh, points: Float[Tensor, "V 3"], resolution: int, radius: float, what: str
) -> Float[Tensor, " V"]:
    """Signed distance (world units, < 0 inside) at the tet-grid lattice points to a closed trimesh.Trimesh.

    what: the mesh's origin for the error message (a file option, or the stage it was exported from).
    """
    cell = 2.0 * radius / resolution
    inside = mesh_inside(np.asarray(mesh.triangles, np.float64), resolution, radius)
    if not inside.any():
        raise InitError(
            f"{what} encloses no tet-grid vertex at grid_resolution={resolution}; "
            "use a closed mesh larger than a cell or raise geometry.grid_resolution"
        )
    distance = mesh_distance(mesh, points.double().cpu().numpy(), cell)
    return torch.from_numpy(np.where(inside, -distance, distance)).float()
