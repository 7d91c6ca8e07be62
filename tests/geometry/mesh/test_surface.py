"""Export views (cameras around the object, unlit renders, the silhouette probe) and colours projected back from
renders onto a surface (what the Gaussians bake), against an analytic scene with known colours."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geometry.analytic import Scene
from geometry.analytic.primitives import Sphere
from geometry.mesh.projection import projected_colors
from geometry.mesh.surface import ExportViews, fibonacci_directions

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


class SceneRenderer(nn.Module):
    """An analytic scene behind the renderer interface ExportViews calls."""

    def __init__(self, scene: Scene):
        super().__init__()
        self.scene = scene
        self.calls: list[str | None] = []

    def forward(self, cameras, shading=None, background_color=None):
        self.calls.append(shading)
        return self.scene.render(cameras, background=background_color)


def two_spheres() -> Scene:
    return Scene(
        name="two",
        primitives=(
            Sphere(center=(0.0, -0.3, 0.0), radius=0.25, color=RED),
            Sphere(center=(0.0, 0.3, 0.0), radius=0.25, color=BLUE),
        ),
    )


def test_fibonacci_directions_cover_the_sphere_evenly():
    d = fibonacci_directions(200)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(200))
    assert d.mean(0).norm() < 0.02  # balanced
    nearest = torch.cdist(d, d).fill_diagonal_(9).min(-1).values
    assert nearest.min() > 0.5 * math.sqrt(4 * math.pi / 200)  # no clumps


def test_views_look_at_the_object_from_all_sides_and_probe_its_silhouette():
    views = ExportViews(SceneRenderer(two_spheres()), distance=2.5, fovy_deg=40.0, elevation=15.0)
    sphere = views.sphere(10, 16)
    torch.testing.assert_close(sphere.position.norm(dim=-1), torch.full((10,), 2.5))
    torch.testing.assert_close(-sphere.c2w[:, :3, 2], -F.normalize(sphere.position, dim=-1))  # looking at 0
    assert sphere.position[:, 2].min() < -2.0 and sphere.position[:, 2].max() > 2.0  # below and above
    orbit = views.orbit(6, 16)
    torch.testing.assert_close(orbit.elevation, torch.full((6,), 15.0))
    probe = views.probe(n_views=4, height=24)
    assert probe.origins.shape == (4 * 24 * 24, 3) and probe.opacity.shape == (4 * 24 * 24,)
    assert 0.05 < probe.opacity.mean() < 0.6 and set(views.renderer.calls) == {"albedo"}  # unlit renders


def test_projected_colours_recover_the_surface_colour_and_fall_back_where_unseen():
    views = ExportViews(SceneRenderer(two_spheres()), distance=2.5, fovy_deg=40.0)
    fallback = lambda p: torch.full((p.shape[0], 3), 0.5)  # noqa: E731
    colours = projected_colors(views, n_views=16, resolution=96, fallback=fallback)
    gen = torch.Generator().manual_seed(0)
    n = F.normalize(torch.randn(400, 3, generator=gen), dim=-1)
    n = n[n[:, 1].abs() < 0.8]  # away from where the spheres touch, every point is seen by some view
    for centre, colour in (((0.0, -0.3, 0.0), RED), ((0.0, 0.3, 0.0), BLUE)):
        points = torch.tensor(centre) + 0.25 * n
        got = colours(points, n)
        assert (got - torch.tensor(colour)).abs().max(-1).values.quantile(0.95) < 0.05
    hidden = torch.tensor([[0.0, -0.3, 0.0]])  # the red sphere's centre: every view's depth test fails
    torch.testing.assert_close(colours(hidden, torch.tensor([[1.0, 0.0, 0.0]])), torch.full((1, 3), 0.5))
