"""Marching tetrahedra: the table's winding, watertight outward meshes of analytic SDFs, exact gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from geometry.dmtet.tet_grid import build_tet_grid, tet_edges
from geometry.functional.marching_tets import NUM_TRIANGLES, deform_vertices, marching_tets


def sphere_sdf(p: torch.Tensor, radius: float = 0.5) -> torch.Tensor:
    return p.norm(dim=-1) - radius


def torus_sdf(p: torch.Tensor, major: float = 0.5, minor: float = 0.2) -> torch.Tensor:
    ring = torch.stack([torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - major, p[..., 2]], dim=-1)
    return ring.norm(dim=-1) - minor


def _sdf_gradient(fn, p: torch.Tensor) -> torch.Tensor:
    p = p.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(p).sum(), p)
    return grad


def _random_positive_tet(gen: torch.Generator) -> torch.Tensor:
    while True:
        p = torch.rand(4, 3, generator=gen, dtype=torch.float64)
        volume = torch.linalg.det(p[1:] - p[:1])
        if volume.abs() > 1e-2:  # well-shaped enough that the plane test below is well-conditioned
            return p if volume > 0 else p[[0, 2, 1, 3]]


@pytest.mark.parametrize("code", range(16))
def test_table_gives_outward_triangles_on_the_linear_zero_plane(code):
    gen = torch.Generator().manual_seed(code)
    tets = torch.tensor([[0, 1, 2, 3]])
    for _ in range(10):
        pos = _random_positive_tet(gen)
        magnitude = 0.05 + torch.rand(4, generator=gen, dtype=torch.float64)
        inside = torch.tensor([code >> i & 1 for i in range(4)], dtype=torch.bool)
        sdf = torch.where(inside, -magnitude, magnitude)
        verts, faces = marching_tets(pos, sdf, tets)

        assert faces.shape == (NUM_TRIANGLES[code], 3) and faces.dtype == torch.int64
        n_in = int(inside.sum())
        assert verts.shape[0] == {0: 0, 1: 3, 2: 4, 3: 3, 4: 0}[n_in]  # one vertex per crossed edge
        if n_in in (0, 4):
            continue
        # The SDF's linear interpolant s(x) = s0 + g·(x − p0): its zero set is the plane the cut lies in.
        g = torch.linalg.solve(pos[1:] - pos[:1], sdf[1:] - sdf[:1])
        assert torch.allclose(
            sdf[0] + (verts - pos[0]) @ g, torch.zeros(len(verts), dtype=torch.float64), atol=1e-12
        )
        tri = verts[faces]
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        cosine = (normal @ g) / (normal.norm(dim=1) * g.norm())
        # CCW seen from outside: the normal is the SDF's gradient direction, exactly (the cut is planar).
        assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-9)
        assert len(set(faces.flatten().tolist())) == verts.shape[0]


def _surface_report(fn, res, radius=1.0):
    grid = build_tet_grid(res, radius)
    verts, faces = marching_tets(grid.vertices, fn(grid.vertices), grid.tets)
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False, validate=False)
    error = fn(verts.double()).abs().max().item() / grid.cell_size
    return grid, verts, faces, mesh, error


# (sdf, smallest radius of curvature ρ, Euler characteristic, enclosed volume)
SHAPES = {
    "sphere": (sphere_sdf, 0.5, 2, 4 / 3 * math.pi * 0.5**3),
    "torus": (torus_sdf, 0.2, 0, 2 * math.pi**2 * 0.5 * 0.2**2),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_analytic_surfaces_are_watertight_outward_and_close(shape):
    fn, rho, euler, volume = SHAPES[shape]
    grid, verts, faces, mesh, error = _surface_report(fn, 32)
    h = grid.cell_size
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == euler  # genus 0 / genus 1: no spurious handles or holes
    assert mesh.volume > 0 and mesh.volume == pytest.approx(volume, rel=0.02)

    tri = verts.double()[faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    along = (normal * _sdf_gradient(fn, tri.mean(1))).sum(-1)
    nondegenerate = normal.norm(dim=1) > 1e-12 * h**2  # exact zeros of the SDF on lattice points make slivers
    assert (along[nondegenerate] > 0).double().mean() > 0.99
    assert (along[nondegenerate] > 0).all()

    # Linear interpolation of a smooth SDF along an edge of length L errs by at most L²/8 · max|s''|, and
    # |s''| ≤ 1/ρ' within L of the surface (ρ' = ρ − L, a rigorous but loose bound). Kuhn edges are at most
    # √3·h, so to leading order the error is 3h²/(8ρ): at res 32 in [−1, 1]³, 4.7 % of h for the sphere
    # (measured 4.35 %) and 11.7 % for the torus (measured 10.2 %). The 2 %-of-a-cell goal therefore needs
    # finer cells (next test); it is the interpolation, not the extraction, that errs.
    longest = math.sqrt(3) * h
    assert error <= longest**2 / (8 * (rho - longest)) / h
    leading = 3 * h / (8 * rho)
    assert error > 0.8 * leading  # near the leading-order estimate: a wrong interpolation formula would show


def test_sphere_vertices_lie_within_two_percent_of_a_cell_at_fine_resolution():
    # h = 0.025: the bound 3h²/(8R) is 1.9 % of h (measured ≈ 1.8 %).
    _, _, _, mesh, error = _surface_report(sphere_sdf, 80)
    assert mesh.is_watertight and mesh.volume > 0
    assert error <= 0.02


def test_one_vertex_per_crossed_grid_edge_at_the_interpolated_zero():
    grid = build_tet_grid(12, 1.0)
    sdf = sphere_sdf(grid.vertices, 0.53)  # no lattice point exactly on the surface
    verts, faces = marching_tets(grid.vertices, sdf, grid.tets)
    edges = tet_edges(grid.tets)
    a, b = edges[:, 0], edges[:, 1]
    crossed = (sdf[a] < 0) != (sdf[b] < 0)
    a, b = a[crossed], b[crossed]
    s_a, s_b = sdf[a, None], sdf[b, None]
    expected = (grid.vertices[a] * s_b - grid.vertices[b] * s_a) / (s_b - s_a)
    # Same order: both are sorted by the edge key (smaller index · V + larger index).
    assert torch.allclose(verts, expected, atol=1e-6)
    assert torch.unique(verts, dim=0).shape[0] == verts.shape[0]
    assert torch.equal(torch.unique(faces), torch.arange(len(verts)))


def test_exact_zeros_count_as_outside():
    grid = build_tet_grid(8, 1.0)  # h = 0.25: lattice points with |p| = 0.5 sit exactly on the sphere
    sdf = sphere_sdf(grid.vertices)
    assert (sdf == 0).sum() > 0
    verts, faces = marching_tets(grid.vertices, sdf, grid.tets)
    nudged_verts, nudged_faces = marching_tets(grid.vertices, torch.where(sdf == 0, 1e-6, sdf), grid.tets)
    assert torch.isfinite(verts).all()
    assert torch.equal(faces, nudged_faces)
    assert torch.allclose(verts, nudged_verts, atol=1e-5)
    assert trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).is_watertight


@pytest.mark.parametrize("value", [1.0, -1.0])
def test_no_crossing_gives_empty_outputs_that_still_backpropagate(value):
    grid = build_tet_grid(3, 1.0)
    pos = grid.vertices.clone().requires_grad_(True)
    sdf = torch.full((len(pos),), value, requires_grad=True)
    verts, faces = marching_tets(pos, sdf, grid.tets)
    assert verts.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int64
    verts.sum().backward()
    assert torch.equal(pos.grad, torch.zeros_like(pos)) and torch.equal(sdf.grad, torch.zeros_like(sdf))


def _small_problem():
    grid = build_tet_grid(4, 1.0)
    pos = grid.vertices.double()
    sdf = sphere_sdf(pos, 0.55) + 0.03 * torch.sin(3 * pos[:, 0] + 2 * pos[:, 1] - pos[:, 2])
    # gradcheck's ±1e-6 steps must not change which vertices are inside (topology is piecewise constant).
    assert sdf.abs().min() > 1e-3
    return grid.tets, pos, sdf


def test_vertices_gradcheck_against_sdf_and_positions():
    tets, pos, sdf = _small_problem()
    assert marching_tets(pos, sdf, tets)[0].shape[0] > 20
    sdf_in = sdf.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: marching_tets(pos, s, tets)[0], (sdf_in,), eps=1e-6, atol=1e-7)
    pos_in = pos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: marching_tets(p, sdf, tets)[0], (pos_in,), eps=1e-6, atol=1e-7)


def test_raising_the_sdf_shrinks_the_volume_at_the_rate_of_the_area():
    # For an exact SDF, s + c moves the surface inward by c: dV/dc = −area = −4πR². R = 0.53 keeps lattice
    # points off the surface: at an exact zero the volume is only one-sidedly differentiable in c.
    grid = build_tet_grid(32, 1.0)
    sdf = sphere_sdf(grid.vertices.double(), 0.53).requires_grad_(True)
    verts, faces = marching_tets(grid.vertices.double(), sdf, grid.tets)
    tri = verts[faces]
    volume = torch.linalg.det(tri).sum() / 6  # divergence theorem, as geometry/mesh/mesh.py's signed_volume
    (grad,) = torch.autograd.grad(volume, sdf)
    assert grad.sum().item() == pytest.approx(-4 * math.pi * 0.53**2, rel=0.01)  # measured 0.4 % off


def test_deformation_stays_inside_the_requested_fraction_of_a_cell():
    grid = build_tet_grid(4, 1.0)
    gen = torch.Generator().manual_seed(0)
    param = 100 * torch.randn(grid.vertices.shape, generator=gen)
    for fraction in (0.5, 0.25, 0.1):
        moved = deform_vertices(grid.vertices, param, grid.cell_size, fraction)
        assert (moved - grid.vertices).abs().max() <= fraction * grid.cell_size + 1e-6
    assert torch.equal(deform_vertices(grid.vertices, torch.zeros_like(param), grid.cell_size), grid.vertices)
    with pytest.raises(ValueError):
        deform_vertices(grid.vertices, param, grid.cell_size, 1.5)


def test_below_one_sixth_of_a_cell_no_tet_inverts():
    grid = build_tet_grid(4, 1.0)
    gen = torch.Generator().manual_seed(1)
    extreme = 50 * torch.sign(torch.randn(grid.vertices.shape, generator=gen))  # tanh → ±1: box corners
    for fraction, positive in ((0.16, True), (0.5, False)):
        p = deform_vertices(grid.vertices.double(), extreme.double(), grid.cell_size, fraction)[grid.tets]
        volume = torch.linalg.det(p[:, 1:] - p[:, :1])
        assert bool((volume > 0).all()) is positive


def test_table_has_two_triangles_exactly_for_two_two_splits():
    counts = [int(NUM_TRIANGLES[c]) for c in range(16)]
    assert counts == [0 if c in (0, 15) else 2 if bin(c).count("1") == 2 else 1 for c in range(16)]
    assert np.asarray(NUM_TRIANGLES).sum() == 6 * 2 + 8 * 1
