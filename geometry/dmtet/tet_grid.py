"""The tetrahedral grid DMTet deforms: a regular cubic lattice with every cube cut into six tetrahedra.

The project builds its own grid instead of downloading the tet files other implementations ship (those are
quartet/TetGen outputs): a Kuhn (Freudenthal) split is a few lines, exact, and conforming by construction.
Each cube [0, 1]³ (in cell units) is cut along its main diagonal (0,0,0)–(1,1,1) into the 6 tetrahedra
{0, e_a, e_a + e_b, e_a + e_b + e_c} for the 6 orders (a, b, c) of the axes. Every cube uses the same split,
so the face diagonals of neighbouring cubes agree (each square face is cut along the diagonal through its
corner of smallest index sum) and every interior triangle is shared by exactly two tetrahedra.

Grids are cached as .npz files (written atomically) under $DISTILL3D_CACHE_DIR/tets, else
$XDG_CACHE_HOME/distill3d/tets, else ~/.cache/distill3d/tets; a file that does not read back cleanly is
rebuilt. World units, z-up, centred on the origin (DESIGN.md §3).
"""

from __future__ import annotations

import itertools
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from distill3d.files import atomic_target

log = logging.getLogger(__name__)

# 6·256³ tets are 100 M rows (3.2 GB as int64): more than any CPU or single-GPU run should allocate by accident.
MAX_RESOLUTION = 256
# Bump when the vertex or tet order changes, so stale cache files are rebuilt rather than silently reused.
_FORMAT_VERSION = 1


@dataclass
class TetGrid:
    """A conforming tetrahedral grid of the cube [−radius, radius]³.

    vertices (V, 3) float32 with V = (resolution + 1)³, lattice point (i, j, k) at row (i·n + j)·n + k for
    n = resolution + 1 (x slowest); tets (T, 4) int64 with T = 6·resolution³, every tet positively oriented
    (det(p1 − p0, p2 − p0, p3 − p0) > 0); cell_size = 2·radius / resolution (world units).
    """

    vertices: Float[Tensor, "V 3"]
    tets: Int[Tensor, "T 4"]
    cell_size: float
    resolution: int
    radius: float

    def to(self, device: torch.device | str) -> TetGrid:
        return TetGrid(
            self.vertices.to(device), self.tets.to(device), self.cell_size, self.resolution, self.radius
        )


def _check_args(resolution: int, radius: float) -> None:
    if not 1 <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"tet grid resolution must be in 1..{MAX_RESOLUTION} cells per axis (32..256 is the useful range), "
            f"got {resolution}"
        )
    if not radius > 0:
        raise ValueError(f"tet grid radius must be positive, got {radius}")


def _kuhn_corner_offsets(n: int) -> np.ndarray:
    """(6, 4) index offsets of the 6 Kuhn tets of the cube whose smallest corner is at offset 0."""
    stride = np.array([n * n, n, 1])  # row offset of one lattice step along x, y, z
    offsets = []
    for order in itertools.permutations(range(3)):
        unit = np.eye(3, dtype=np.int64)[list(order)]  # the steps e_a, e_b, e_c in this order
        corners = np.concatenate(
            [np.zeros((1, 3), np.int64), np.cumsum(unit, axis=0)]
        )  # (4, 3) in cell units
        # Edges from corner 0 are e_a, e_a+e_b, e_a+e_b+e_c, so the volume's sign is the permutation's sign;
        # swapping two corners of the odd ones makes all six positive.
        if np.linalg.det((corners[1:] - corners[0]).astype(np.float64)) < 0:
            corners[[1, 2]] = corners[[2, 1]]
        offsets.append(corners @ stride)
    return np.stack(offsets)


def build_tet_grid(resolution: int, radius: float = 1.0) -> TetGrid:
    """Build the Kuhn grid of `resolution` cells per axis in [−radius, radius]³ (no cache)."""
    _check_args(resolution, radius)
    vertices, tets = _build_arrays(resolution, radius)
    return _to_grid(vertices, tets, resolution, radius)


def _build_arrays(resolution: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    n = resolution + 1
    # float64 then one rounding, so the lattice is symmetric and hits ±radius exactly.
    axis = np.linspace(-radius, radius, n)
    vertices = (
        np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)
    )
    cell = np.arange(resolution, dtype=np.int32)
    i, j, k = np.meshgrid(cell, cell, cell, indexing="ij")
    base = ((i * n + j) * n + k).reshape(-1, 1, 1)  # row of each cube's smallest corner; n³ < 2³¹ for n ≤ 257
    tets = (base + _kuhn_corner_offsets(n).astype(np.int32)).reshape(-1, 4)
    return vertices, tets


def _to_grid(vertices: np.ndarray, tets: np.ndarray, resolution: int, radius: float) -> TetGrid:
    return TetGrid(
        vertices=torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32)),
        tets=torch.from_numpy(tets.astype(np.int64)),
        cell_size=2.0 * radius / resolution,
        resolution=resolution,
        radius=float(radius),
    )


def tet_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where grids are cached: cache_dir if given, else $DISTILL3D_CACHE_DIR/tets, else the XDG/home cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("DISTILL3D_CACHE_DIR"):
        return Path(os.environ["DISTILL3D_CACHE_DIR"]).expanduser() / "tets"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "distill3d" / "tets"


def tet_cache_path(resolution: int, radius: float, cache_dir: str | os.PathLike | None = None) -> Path:
    return tet_cache_dir(cache_dir) / f"kuhn_res{resolution}_radius{float(radius):.9g}_v{_FORMAT_VERSION}.npz"


def _read_cache(path: Path, resolution: int, radius: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not the grid asked for."""
    if not path.is_file():
        return None
    n = resolution + 1
    try:
        with np.load(path, allow_pickle=False) as data:
            # Reading every member checks the zip's CRC-32, so flipped bytes surface here as BadZipFile.
            vertices, tets = data["vertices"], data["tets"]
            meta = data["meta"]
        ok = (
            vertices.shape == (n**3, 3)
            and vertices.dtype == np.float32
            and tets.shape == (6 * resolution**3, 4)
            and tets.dtype == np.int32
            and meta.tolist() == [_FORMAT_VERSION, resolution, float(radius)]
            and int(tets.min()) >= 0
            and int(tets.max()) < n**3
        )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("tet grid cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    if not ok:
        log.warning(
            "tet grid cache %s does not hold the %d³ grid of radius %g; rebuilding it",
            path,
            resolution,
            radius,
        )
        return None
    return vertices, tets


def load_tet_grid(
    resolution: int, radius: float = 1.0, cache_dir: str | os.PathLike | None = None
) -> TetGrid:
    """The Kuhn grid of `resolution` cells per axis in [−radius, radius]³, read from or written to the cache.

    A corrupt or mismatching cache file is rebuilt and replaced; an unwritable cache directory only costs
    the rebuild next time (a warning, not an error).
    """
    _check_args(resolution, radius)
    path = tet_cache_path(resolution, radius, cache_dir)
    cached = _read_cache(path, resolution, radius)
    if cached is not None:
        return _to_grid(*cached, resolution, radius)
    vertices, tets = _build_arrays(resolution, radius)
    try:
        # Concurrent runs each write their own temporary sibling; the last rename wins with identical content.
        with atomic_target(path) as tmp:
            meta = np.array([_FORMAT_VERSION, resolution, float(radius)], dtype=np.float64)
            np.savez(tmp, vertices=vertices, tets=tets, meta=meta)
    except OSError as err:
        log.warning("could not cache the tet grid at %s (%s); continuing without the cache", path, err)
    return _to_grid(vertices, tets, resolution, radius)


def tet_edges(tets: Int[Tensor, "T 4"], num_vertices: int | None = None) -> Int[Tensor, "E 2"]:
    """The unique undirected edges of `tets`, each as (smaller index, larger index), sorted.

    DMTet's SDF regularizer runs over these (the grid edges whose endpoints' signs differ).
    """
    if tets.shape[0] == 0:
        return tets.new_zeros((0, 2))
    pairs = tets[:, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]].reshape(-1, 2)
    lo, hi = pairs.min(dim=1).values, pairs.max(dim=1).values
    v = int(tets.max()) + 1 if num_vertices is None else num_vertices
    # One int64 key per edge makes the dedup a 1-D unique instead of a (slow) row-wise one.
    key = torch.unique(lo * v + hi)
    return torch.stack([key // v, key % v], dim=1)
