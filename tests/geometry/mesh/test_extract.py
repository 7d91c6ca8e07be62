"""Surface extraction: grid sampling, marching cubes, hollow-pocket filling and the automatic thresholds, against
analytic spheres."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geometry.mesh.extract import (
    OpacityProbe,
    fill_cavities,
    grid_points,
    marching_cubes,
    otsu_threshold,
    ray_max_density,
    sample_grid,
    silhouette_threshold,
)
from geometry.mesh.mesh import ExportError, signed_volume
from tests.geometry.mesh.helpers import PEAK, SHARPNESS, density_of, sphere_sdf


def test_grid_points_span_the_cube_and_sample_grid_matches_pointwise():
    pts = grid_points(0.8, 5)
    assert pts.shape == (5, 5, 5, 3)
    torch.testing.assert_close(pts[0, 0, 0], torch.tensor([-0.8, -0.8, -0.8]))
    torch.testing.assert_close(pts[4, 2, 0], torch.tensor([0.8, 0.0, -0.8]))  # first index is x
    values = sample_grid(lambda p: p[:, 0] + 10 * p[:, 2], 0.8, 5, chunk=7)  # chunked on purpose
    torch.testing.assert_close(values, pts[..., 0] + 10 * pts[..., 2])


def test_marching_cubes_sphere_is_accurate_and_outward():
    values = sample_grid(density_of(sphere_sdf), 1.0, 48)
    mesh = marching_cubes(values, PEAK / 2, 1.0)
    v = torch.from_numpy(mesh.vertices)
    assert sphere_sdf(v).abs().max() < 0.01  # cell size 2/47 ≈ 0.043: sub-cell accurate
    assert signed_volume(mesh.vertices, mesh.faces) == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.03)
    normals = mesh.with_normals().normals
    assert (np.einsum("ij,ij->i", normals, mesh.vertices) > 0).all()  # outward on a centred sphere


def test_no_surface_is_a_clear_error():
    empty = sample_grid(lambda p: torch.zeros(len(p)), 1.0, 16)
    with pytest.raises(ExportError, match="no surface"):
        marching_cubes(empty, otsu_threshold(empty), 1.0)


def test_otsu_threshold_lands_on_the_surface():
    values = sample_grid(density_of(sphere_sdf), 1.0, 48)
    mesh = marching_cubes(values, otsu_threshold(values), 1.0)
    assert sphere_sdf(torch.from_numpy(mesh.vertices)).abs().mean() < 0.01


def _sphere_probe(n: int = 2000, seed: int = 0) -> OpacityProbe:
    """Rays from a sphere of radius 3 towards random targets; opacity = exact ray/sphere(0.5) hit test."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    targets = (torch.rand(n, 3, generator=g) - 0.5) * 1.4
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    closest = (origins - (origins * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1)
    return OpacityProbe(origins, dirs, (closest < 0.5).float())


def test_ray_max_density_matches_closest_approach():
    probe = _sphere_probe(300)
    values = sample_grid(density_of(sphere_sdf), 1.0, 64)
    closest = (probe.origins - (probe.origins * probe.dirs).sum(-1, keepdim=True) * probe.dirs).norm(dim=-1)
    expected = PEAK * torch.sigmoid((0.5 - closest) / SHARPNESS)
    far = (closest - 0.5).abs() > 0.05  # away from the sigmoid's steep band, trilinear sampling is exact-ish
    assert (ray_max_density(values, 1.0, probe)[far] - expected[far]).abs().max() < 2.0


def test_silhouette_threshold_recovers_the_surface():
    values = sample_grid(density_of(sphere_sdf), 1.0, 64)
    level = silhouette_threshold(values, 1.0, _sphere_probe())
    mesh = marching_cubes(values, level, 1.0)
    assert sphere_sdf(torch.from_numpy(mesh.vertices)).abs().mean() < 0.01
    with pytest.raises(ExportError, match="no surface"):
        probe = _sphere_probe(50)
        silhouette_threshold(values, 1.0, OpacityProbe(probe.origins, probe.dirs, torch.zeros(50)))


def test_fill_cavities_removes_inner_walls_of_a_hollow_shell():
    """A shell (dense for 0.3 < r < 0.5) with a thin tunnel to its hollow core exports only its outer sphere."""
    res = 64
    g = torch.linspace(-1, 1, res)
    x, y, z = torch.meshgrid(g, g, g, indexing="ij")
    r = (x**2 + y**2 + z**2).sqrt()
    values = ((r > 0.3) & (r < 0.5)).float() * 10.0
    tunnel = ((x**2 + y**2).sqrt() < 0.03) & (
        z > 0
    )  # a 2×2-voxel tunnel into the core: sealed by the closing
    values[tunnel] = 0.0
    hollow = marching_cubes(values, 5.0, 1.0)
    inner = np.linalg.norm(hollow.vertices, axis=1) < 0.4
    assert inner.mean() > 0.2  # without filling, the core's wall is exported
    solid = marching_cubes(fill_cavities(values, 5.0, closing=2), 5.0, 1.0)
    radii = np.linalg.norm(solid.vertices, axis=1)
    assert radii.min() > 0.44 and abs(radii.mean() - 0.5) < 0.03
    untouched = fill_cavities(values, 5.0, closing=0)  # closing 0: the tunnel keeps the core open
    assert torch.equal(untouched, values)
