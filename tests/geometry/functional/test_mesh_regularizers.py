"""Mesh regularizers: values on hand-computable meshes (flat grid, a fold, a flipped face), edge bookkeeping,
gradcheck, and smooth vs noisy spheres."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from geometry.functional.mesh_regularizers import (
    interior_edge_faces,
    laplacian_smoothness,
    mesh_edges,
    normal_consistency,
    uniform_laplacian,
)


def _grid(n: int, spacing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n × n vertices in the z = 0 plane, each square split along its (x, y) → (x+1, y+1) diagonal, CCW from +z."""
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    vertices = torch.stack([xs, ys, torch.zeros_like(xs)], -1).reshape(-1, 3).double() * spacing
    faces = []
    for y in range(n - 1):
        for x in range(n - 1):
            a, b, c, d = y * n + x, y * n + x + 1, (y + 1) * n + x, (y + 1) * n + x + 1
            faces += [[a, b, d], [a, d, c]]
    return vertices, torch.tensor(faces)


def _fold(angle_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two triangles on the edge v0–v1 (the x axis); the second is rotated up about it by `angle_deg`."""
    a = math.radians(angle_deg)
    vertices = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, -math.cos(a), math.sin(a)]],
        dtype=torch.float64,
    )
    return vertices, torch.tensor([[0, 1, 2], [1, 0, 3]])


def _sphere(subdivisions: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return torch.tensor(mesh.vertices, dtype=torch.float64), torch.tensor(mesh.faces, dtype=torch.long)


def test_flat_grid_has_zero_normal_consistency_and_laplacian_only_on_the_boundary():
    vertices, faces = _grid(5, spacing=0.3)
    assert normal_consistency(vertices, faces).item() == pytest.approx(0.0, abs=1e-12)
    delta = uniform_laplacian(vertices, faces).view(5, 5, 3)
    # Interior vertices have the six neighbours (±1, 0), (0, ±1), ±(1, 1): their mean is the vertex itself.
    assert delta[1:-1, 1:-1].abs().max() < 1e-12
    assert delta[0, 0].norm() > 0.1  # boundary vertices are pulled inward


def test_laplacian_of_a_3x3_grid_equals_the_hand_computed_value():
    h = 0.5
    vertices, faces = _grid(3, spacing=h)
    # ‖δ‖² per vertex (spacing 1), from each vertex's neighbour list on the 2 × 2 grid:
    # corners on a diagonal (0,0), (2,2): 8/9; the other corners: 1/2; edge midpoints: 5/16; centre: 0.
    expected = (2 * 8 / 9 + 2 * 0.5 + 4 * 5 / 16 + 0.0) / 9 * h**2
    assert laplacian_smoothness(vertices, faces).item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(
        uniform_laplacian(vertices, faces)[0], torch.tensor([-2 / 3, -2 / 3, 0.0], dtype=torch.float64) * h
    )


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 90.0, 135.0])
def test_fold_gives_one_minus_cos_of_the_dihedral_turn(angle):
    vertices, faces = _fold(angle)
    expected = 1.0 - math.cos(math.radians(angle))  # the normals turn by the fold angle about the shared edge
    assert normal_consistency(vertices, faces).item() == pytest.approx(expected, abs=1e-12)


def test_a_flipped_face_counts_two_and_boundary_or_non_manifold_edges_are_ignored():
    vertices, faces = _fold(0.0)
    assert normal_consistency(vertices, torch.tensor([[0, 1, 2], [0, 1, 3]])).item() == pytest.approx(2.0)
    assert normal_consistency(vertices, faces[:1]).item() == 0.0  # one triangle: no interior edge
    # Three faces on the edge v0–v1 (non-manifold): the edge is left out, whatever the angles.
    fan = torch.cat([vertices, torch.tensor([[0.5, 0.0, 1.0]], dtype=torch.float64)])
    fan_faces = torch.tensor([[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    assert interior_edge_faces(fan_faces, 5).shape == (0, 2)
    assert normal_consistency(fan, fan_faces).item() == 0.0


def test_a_zero_area_face_has_bounded_gradients():
    # A flat triangle plus a zero-area one on the same edge (its third vertex on the edge's midpoint), as
    # marching tetrahedra makes when a surface vertex lands on a tet vertex.
    vertices = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64
    ).requires_grad_(True)
    faces = torch.tensor([[0, 1, 2], [1, 0, 3]])
    value = normal_consistency(vertices, faces)
    assert value.item() == pytest.approx(1.0)  # the sliver's normal is zero: cos = 0
    value.backward()
    # n_b = (v0 − v1) × (v3 − v1) / floor with floor = 1e-2 · mean doubled area (1 + 0) / 2, so
    # ∂(1 − n_a · n_b)/∂v3 = (0, 1 / floor, 0) = (0, 200, 0): bounded, and descent (−y) unfolds the sliver
    # onto the far side of the edge, where the two faces agree.
    torch.testing.assert_close(vertices.grad[3], torch.tensor([0.0, 200.0, 0.0], dtype=torch.float64))


def test_edge_bookkeeping_on_a_closed_sphere():
    vertices, faces = _sphere(1)
    edges = mesh_edges(faces, vertices.shape[0])
    assert edges.shape[0] == 3 * faces.shape[0] // 2 and (edges[:, 0] < edges[:, 1]).all()
    pairs = interior_edge_faces(faces, vertices.shape[0])
    assert pairs.shape == (edges.shape[0], 2)  # closed manifold: every edge is interior
    shared = [len(set(faces[a].tolist()) & set(faces[b].tolist())) for a, b in pairs.tolist()]
    assert set(shared) == {2}


def test_gradcheck_both_regularizers():
    gen = torch.Generator().manual_seed(0)
    mesh = trimesh.creation.icosphere(subdivisions=0)
    faces = torch.tensor(mesh.faces, dtype=torch.long)
    vertices = torch.tensor(mesh.vertices) + 0.1 * torch.randn(12, 3, generator=gen, dtype=torch.float64)
    vertices.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: normal_consistency(v, faces), (vertices,))
    assert torch.autograd.gradcheck(lambda v: laplacian_smoothness(v, faces), (vertices,))


def test_noisy_sphere_scores_higher_than_smooth_sphere():
    vertices, faces = _sphere(2)
    gen = torch.Generator().manual_seed(1)
    noisy = vertices * (1.0 + 0.05 * torch.randn(vertices.shape[0], 1, generator=gen, dtype=torch.float64))
    smooth_nc, noisy_nc = normal_consistency(vertices, faces), normal_consistency(noisy, faces)
    smooth_lap, noisy_lap = laplacian_smoothness(vertices, faces), laplacian_smoothness(noisy, faces)
    assert 0 < smooth_nc < 0.05 and noisy_nc > 2 * smooth_nc
    assert 0 < smooth_lap and noisy_lap > 2 * smooth_lap


def test_empty_mesh_and_unused_vertices():
    vertices = torch.zeros(0, 3, requires_grad=True)
    faces = torch.zeros(0, 3, dtype=torch.long)
    for fn in (normal_consistency, laplacian_smoothness):
        value = fn(vertices, faces)
        assert value.item() == 0.0 and value.requires_grad
        value.backward()
    # A vertex on no face has no Laplacian and does not dilute the mean.
    grid, grid_faces = _grid(3)
    extra = torch.cat([grid, torch.tensor([[9.0, 9.0, 9.0]], dtype=torch.float64)])
    assert laplacian_smoothness(extra, grid_faces).item() == pytest.approx(
        laplacian_smoothness(grid, grid_faces).item()
    )
