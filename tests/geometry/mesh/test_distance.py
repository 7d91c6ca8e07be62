"""Point-to-mesh distances are exact (vs brute force and vs a dense sampling of a triangle), true-surface samples
lie on the level set, and accuracy / completeness tell a mesh that misses part of the surface from one that fits."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from geometry.analytic import builtin_scene
from geometry.mesh.distance import closest_point_on_triangles, point_mesh_distance, true_surface_samples
from geometry.mesh.mesh import Mesh
from geometry.mesh.metrics import surface_distances


def _sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - 0.5


def test_closest_point_on_a_triangle_matches_a_dense_sampling_of_it():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 1, 3))
    q = rng.normal(size=(400, 3)) * 2
    closest = closest_point_on_triangles(q, *(np.repeat(x, len(q), 0) for x in (a, b, c)))
    u, v = np.meshgrid(np.linspace(0, 1, 300), np.linspace(0, 1, 300))
    keep = u + v <= 1
    dense = a + (b - a) * u[keep][:, None] + (c - a) * v[keep][:, None]
    sampled = np.sqrt(((q[:, None] - dense[None]) ** 2).sum(-1)).min(1)
    exact = np.linalg.norm(closest - q, axis=1)
    # The exact distance is never above the sampled one and below it by at most the sampling spacing.
    assert (sampled - exact).min() > -1e-9 and (sampled - exact).max() < 0.02


def test_point_mesh_distance_equals_brute_force():
    mesh = trimesh.creation.icosphere(2, radius=0.5)
    points = np.random.default_rng(1).normal(size=(500, 3)) * 0.6
    tri = mesh.vertices[mesh.faces]
    p = np.repeat(points, len(tri), 0)
    t = np.tile(tri, (len(points), 1, 1))
    brute = np.linalg.norm(closest_point_on_triangles(p, t[:, 0], t[:, 1], t[:, 2]) - p, axis=-1)
    brute = brute.reshape(len(points), -1).min(1)
    np.testing.assert_allclose(point_mesh_distance(points, mesh.vertices, mesh.faces, k=4), brute, atol=1e-12)


def test_true_surface_samples_lie_on_the_level_set():
    scene = builtin_scene("a snowman")
    samples = true_surface_samples(scene.sdf, 2000, resolution=96)
    assert np.abs(scene.sdf(torch.from_numpy(samples).double()).numpy()).max() < 1e-5


def test_accuracy_and_completeness_of_a_full_and_a_half_sphere():
    ico = trimesh.creation.icosphere(3, radius=0.5)
    full = Mesh(ico.vertices.astype(np.float32), ico.faces.astype(np.int64))
    fit = surface_distances(full, _sphere_sdf, 4000)
    # Vertices on the sphere, chords inside it: both errors are below the largest sagitta r(1 − cos θ/2).
    edge = np.linalg.norm(ico.vertices[ico.edges[:, 0]] - ico.vertices[ico.edges[:, 1]], axis=1).max()
    sagitta = 0.5 - np.sqrt(0.25 - (edge / 2) ** 2)
    assert 0 < fit.accuracy < sagitta and 0 < fit.completeness < sagitta, (fit, sagitta)
    upper = ico.faces[(ico.vertices[ico.faces][:, :, 2] > 0).all(axis=1)]
    half = Mesh(ico.vertices.astype(np.float32), upper.astype(np.int64))
    cut = surface_distances(half, _sphere_sdf, 4000)
    # Accuracy stays (what is there is right); completeness sees the missing half (mean distance ≈ 0.2 there).
    assert cut.accuracy < sagitta and cut.completeness > 0.05, cut
