"""The Kuhn tet grid: positive, space-filling, conforming; the .npz cache round-trips and heals itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geometry.dmtet import tet_grid as tg
from geometry.dmtet.tet_grid import build_tet_grid, load_tet_grid, tet_cache_path, tet_edges


def _signed_volumes(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    p = vertices.double()[tets]
    return torch.linalg.det(p[:, 1:] - p[:, :1]) / 6.0


@pytest.mark.parametrize(("resolution", "radius"), [(1, 1.0), (5, 0.75), (8, 1.0)])
def test_every_tet_is_positive_and_they_fill_the_cube(resolution, radius):
    grid = build_tet_grid(resolution, radius)
    assert grid.vertices.shape == ((resolution + 1) ** 3, 3) and grid.vertices.dtype == torch.float32
    assert grid.tets.shape == (6 * resolution**3, 4) and grid.tets.dtype == torch.int64
    assert grid.cell_size == pytest.approx(2 * radius / resolution)
    assert grid.vertices.min().item() == -radius and grid.vertices.max().item() == radius
    volume = _signed_volumes(grid.vertices, grid.tets)
    # Every Kuhn tet is 1/6 of its cube: none flat, none inverted.
    assert torch.allclose(volume, torch.full_like(volume, grid.cell_size**3 / 6), rtol=1e-5)
    assert volume.sum().item() == pytest.approx((2 * radius) ** 3, rel=1e-6)


def test_interior_faces_are_shared_by_two_tets_on_opposite_sides():
    res, radius = 6, 1.0
    grid = build_tet_grid(res, radius)
    tets, verts = grid.tets, grid.vertices.double()
    # Face i of a tet is the tet without corner i; keep the opposite corner to test the sides.
    faces = torch.cat([tets[:, [j for j in range(4) if j != i]] for i in range(4)])
    opposite = torch.cat([tets[:, i] for i in range(4)])
    faces = faces.sort(dim=1).values
    unique, inverse, counts = torch.unique(faces, dim=0, return_inverse=True, return_counts=True)
    assert set(counts.tolist()) <= {1, 2}

    boundary = unique[counts == 1]
    on_boundary = (verts[boundary].abs() == radius).all(dim=1).any(dim=1)  # all 3 corners on one cube face
    assert on_boundary.all()
    assert len(boundary) == 6 * res**2 * 2  # each square of the cube's surface is cut into 2 triangles

    # The two tets of an interior face put their opposite corners on opposite sides of its plane (no overlap).
    order = torch.argsort(inverse, stable=True)
    shared = counts[inverse[order]] == 2
    pair_faces, pair_opp = faces[order][shared].view(-1, 2, 3), opposite[order][shared].view(-1, 2)
    assert (pair_faces[:, 0] == pair_faces[:, 1]).all()
    f = verts[pair_faces[:, 0]]
    normal = torch.linalg.cross(f[:, 1] - f[:, 0], f[:, 2] - f[:, 0])
    side = ((verts[pair_opp] - f[:, :1]) * normal[:, None]).sum(-1)
    assert (side[:, 0] * side[:, 1] < 0).all()
    assert len(pair_faces) == (4 * len(tets) - len(boundary)) // 2


def test_unique_edges_match_the_kuhn_count():
    n = 5
    grid = build_tet_grid(n)
    edges = tet_edges(grid.tets)
    # Axis edges, one diagonal per square face, one main diagonal per cube.
    assert len(edges) == 3 * n * (n + 1) ** 2 + 3 * n**2 * (n + 1) + n**3
    assert (edges[:, 0] < edges[:, 1]).all()
    length = (grid.vertices[edges[:, 1]] - grid.vertices[edges[:, 0]]).double().norm(dim=1) / grid.cell_size
    squared = (length**2).round().long()  # float32 lattice: lengths² are integers up to rounding
    assert torch.allclose(length**2, squared.double(), atol=1e-4)
    assert torch.bincount(squared).tolist() == [0, 3 * n * (n + 1) ** 2, 3 * n**2 * (n + 1), n**3]
    assert tet_edges(grid.tets[:0]).shape == (0, 2)


def test_cache_round_trip_reads_the_file_back(tmp_path, monkeypatch):
    reference = build_tet_grid(32, 1.0)
    first = load_tet_grid(32, 1.0, cache_dir=tmp_path)
    path = tet_cache_path(32, 1.0, tmp_path)
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind

    def no_rebuild(*args):
        raise AssertionError("the cached grid should have been read, not rebuilt")

    monkeypatch.setattr(tg, "_build_arrays", no_rebuild)
    second = load_tet_grid(32, 1.0, cache_dir=tmp_path)
    for grid in (first, second):
        assert torch.equal(grid.vertices, reference.vertices) and torch.equal(grid.tets, reference.tets)
    assert second.tets.dtype == torch.int64
    assert (second.cell_size, second.resolution, second.radius) == (2 / 32, 32, 1.0)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped_byte", "other_grid"])
def test_a_corrupt_cache_file_is_rebuilt(tmp_path, damage):
    reference = build_tet_grid(4, 0.5)
    path = tet_cache_path(4, 0.5, tmp_path)
    load_tet_grid(4, 0.5, cache_dir=tmp_path)
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped_byte":
        data = bytearray(raw)
        data[len(data) // 2] ^= 0xFF  # inside the tets member: the zip's CRC-32 catches it
        path.write_bytes(bytes(data))
    else:  # a readable file holding another grid under this name
        other = build_tet_grid(3, 0.5)
        np.savez(
            path, vertices=other.vertices.numpy(), tets=other.tets.int().numpy(), meta=np.array([1, 3, 0.5])
        )

    grid = load_tet_grid(4, 0.5, cache_dir=tmp_path)
    assert torch.equal(grid.vertices, reference.vertices) and torch.equal(grid.tets, reference.tets)
    assert path.read_bytes() == raw  # the file was replaced by a good one


def test_default_cache_dir_follows_the_project_cache_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "c"))
    load_tet_grid(2, 1.0)
    assert tet_cache_path(2, 1.0).parent == tmp_path / "c" / "tets"
    assert tet_cache_path(2, 1.0).is_file()


def test_an_unwritable_cache_only_costs_the_rebuild(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    grid = load_tet_grid(2, 1.0, cache_dir=blocker / "tets")
    assert grid.tets.shape == (48, 4)


@pytest.mark.parametrize(("resolution", "radius"), [(0, 1.0), (257, 1.0), (8, 0.0), (8, -1.0)])
def test_bad_arguments_are_refused(resolution, radius):
    with pytest.raises(ValueError):
        build_tet_grid(resolution, radius)
    with pytest.raises(ValueError):
        load_tet_grid(resolution, radius)


def test_to_moves_tensors_and_keeps_metadata():
    grid = build_tet_grid(2, 1.0).to("cpu")
    assert grid.vertices.device.type == "cpu" and grid.resolution == 2
