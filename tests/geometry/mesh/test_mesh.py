"""The Mesh type's clean-up: orientation, floater removal, decimation, degenerate faces, normals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.mesh.extract import marching_cubes, sample_grid
from geometry.mesh.mesh import (
    Mesh,
    compact,
    decimate,
    drop_degenerate,
    orient_outward,
    remove_floaters,
    signed_volume,
    vertex_normals,
)
from tests.geometry.mesh.helpers import PEAK, density_of, sphere_sdf

# A unit tetrahedron with outward (counter-clockwise seen from outside) faces: volume 1/6.
TET_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TET_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)


def test_signed_volume_and_orientation():
    assert signed_volume(TET_V, TET_F) == pytest.approx(1 / 6)
    flipped = Mesh(TET_V, TET_F[:, ::-1].copy())
    assert signed_volume(flipped.vertices, flipped.faces) == pytest.approx(-1 / 6)
    fixed = orient_outward(flipped)
    assert signed_volume(fixed.vertices, fixed.faces) == pytest.approx(1 / 6)
    assert orient_outward(Mesh(TET_V, TET_F)).faces is TET_F  # already outward: untouched
    n = vertex_normals(TET_V, TET_F)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    assert n[3] @ np.array([0, 0, 1]) > 0 and n[0] @ np.ones(3) < 0  # apex up, corner outward


def test_remove_floaters_keeps_components_by_size():
    two = lambda p: torch.minimum(sphere_sdf(p, (-0.3, 0, 0), 0.45), sphere_sdf(p, (0.7, 0, 0), 0.1))  # noqa: E731
    mesh = marching_cubes(sample_grid(density_of(two), 1.0, 48), PEAK / 2, 1.0)
    kept = remove_floaters(mesh, 0.5)
    assert (kept.vertices[:, 0] < 0.3).all() and kept.num_faces < mesh.num_faces
    assert remove_floaters(mesh, 0.0).num_faces == mesh.num_faces
    assert np.unique(kept.faces).size == kept.num_vertices  # no unreferenced vertices


def test_decimate_hits_target_and_keeps_shape():
    mesh = marching_cubes(sample_grid(density_of(sphere_sdf), 1.0, 64), PEAK / 2, 1.0)
    small = decimate(mesh, 2000)
    assert abs(small.num_faces - 2000) <= 100
    assert sphere_sdf(torch.from_numpy(small.vertices)).abs().mean() < 0.01
    assert signed_volume(small.vertices, small.faces) == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.05)
    assert decimate(mesh, 0) is mesh


def test_degenerate_faces_are_dropped_and_vertices_renumbered():
    v = np.concatenate([TET_V, [[2, 2, 2]]]).astype(np.float32)
    f = np.concatenate([TET_F, [[0, 0, 1], [1, 2, 2]]])  # two faces with repeated corners
    clean = drop_degenerate(Mesh(v, f))
    assert clean.num_faces == 4 and clean.num_vertices == 4  # the unused vertex 4 is gone too
    sub = compact(Mesh(v, TET_F + 0), np.array([False, False, False, True]))
    np.testing.assert_array_equal(sub.faces, [[0, 1, 2]])
    np.testing.assert_array_equal(sub.vertices, TET_V[[1, 2, 3]])
