"""Analytic scenes: the union SDF, albedo and normals, and the renderer against analytic ray casting."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.analytic import BUILTIN_SCENES, Scene, builtin_scene
from geometry.analytic.primitives import Box, Sphere
from geometry.cameras import get_rays, make_cameras, project_points

WHITE = (1.0, 1.0, 1.0)


def _scene(*prims) -> Scene:
    return Scene(name="test", primitives=tuple(prims))


def test_union_albedo_and_normal():
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    scene = _scene(
        Sphere(center=(-0.3, 0, 0), radius=0.2, color=red),
        Box(center=(0.3, 0, 0), size=(0.2, 0.2, 0.2), color=blue),
    )
    pts = torch.tensor([[-0.3, 0.0, 0.25], [0.3, 0.0, 0.3], [-0.05, 0, 0]])
    torch.testing.assert_close(scene.sdf(pts), torch.tensor([0.05, 0.2, 0.05]))
    torch.testing.assert_close(scene.albedo(pts[:2]), torch.tensor([red, blue]))
    # Sphere normals are radial; the box's +z face normal is +z.
    dirs = torch.nn.functional.normalize(
        torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    on_sphere = torch.tensor([-0.3, 0.0, 0.0]) + 0.2 * dirs
    torch.testing.assert_close(scene.normal(on_sphere), dirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        scene.normal(torch.tensor([[0.32, 0.03, 0.1]])), torch.tensor([[0.0, 0.0, 1.0]])
    )


# ---------------------------------------------------------------- renderer against analytic ray casting


def test_render_sphere_depth_normal_color_background():
    c, r, color = torch.tensor([0.1, -0.1, 0.05]), 0.45, (0.2, 0.7, 0.3)
    scene = _scene(Sphere(center=tuple(c.tolist()), radius=r, color=color))
    cams = make_cameras(
        torch.tensor([10.0, -30.0, 89.0]),
        torch.tensor([20.0, 140.0, 250.0]),
        torch.tensor([2.2, 2.6, 1.8]),
        50.0,
        41,
    )
    bg = torch.rand(3, 41, 41, 3, generator=torch.Generator().manual_seed(0))
    out = scene.render(cams, background=bg)
    o, d = get_rays(cams)
    oc = (o - c).double()
    b = (oc * d.double()).sum(-1)
    miss_distance = ((oc * oc).sum(-1) - b * b).clamp_min(0).sqrt()  # ray's closest approach to the center
    t = -b - (b * b - (oc * oc).sum(-1) + r * r).clamp_min(0).sqrt()
    hit = miss_distance < r - 1e-3
    miss = miss_distance > r + 1e-3
    assert hit.sum() > 300 and miss.sum() > 300

    assert (out.depth[..., 0][hit].double() - t[hit]).abs().max() < 1e-4
    assert (out.opacity[..., 0][hit] == 1).all() and (out.opacity[..., 0][miss] == 0).all()
    assert (out.depth[..., 0][miss] == 0).all() and (out.normal[miss] == 0).all()
    torch.testing.assert_close(out.rgb[hit], torch.tensor(color).expand(int(hit.sum()), 3))
    torch.testing.assert_close(out.rgb[miss], bg[miss])
    torch.testing.assert_close(out.extras["background"], bg)
    p = o.double() + t[..., None] * d.double()
    torch.testing.assert_close(out.normal[hit].double(), ((p - c.double()) / r)[hit], atol=1e-3, rtol=0)


def test_render_silhouette_matches_projected_disc():
    r, dist, H = 0.5, 2.0, 64
    scene = _scene(Sphere(center=(0, 0, 0), radius=r, color=WHITE))
    cams = make_cameras(25.0, 60.0, dist, 40.0, H)
    # A sphere seen from distance D subtends half-angle asin(r/D); centered on the optical axis it projects
    # to a disc of radius f·tan(asin(r/D)) around the principal point.
    radius_px = cams.focal[0].item() * math.tan(math.asin(r / dist))
    i, j = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(H) + 0.5, indexing="ij")
    rho = ((i - H / 2) ** 2 + (j - H / 2) ** 2).sqrt()
    clear = (rho - radius_px).abs() > 0.02
    out = scene.render(cams, background=torch.zeros(3))
    assert torch.equal(out.opacity[0, ..., 0][clear] == 1, (rho < radius_px)[clear])

    aa = scene.render(cams, background=torch.zeros(3), supersample=4)
    coverage = aa.opacity.sum().item()
    assert coverage == pytest.approx(math.pi * radius_px**2, rel=0.01)
    # Antialiased rgb is the coverage-weighted blend of the (white) albedo over the (black) background.
    torch.testing.assert_close(aa.rgb, aa.opacity.expand(-1, -1, -1, 3))
    assert ((aa.opacity > 0) & (aa.opacity < 1)).any()


def test_render_box_face_depth():
    dist, half = 2.5, 0.3
    scene = _scene(Box(center=(0, 0, 0), size=(2 * half,) * 3, color=(0.9, 0.1, 0.1)))
    cams = make_cameras(0.0, 0.0, dist, 30.0, 33)  # on +x, looking at the face x = +half
    out = scene.render(cams, background=torch.tensor([[0.0, 0.0, 1.0]]))
    assert out.depth[0, 16, 16, 0].item() == pytest.approx(dist - half, abs=1e-4)
    o, d = get_rays(cams)
    t = (half - o[..., 0]) / d[..., 0]  # ray/plane x = half
    p = o + t[..., None] * d
    on_face = (p[..., 1].abs() < half - 1e-3) & (p[..., 2].abs() < half - 1e-3)
    assert on_face.sum() > 100
    assert (out.depth[..., 0][on_face] - t[on_face]).abs().max() < 1e-4
    torch.testing.assert_close(
        out.normal[on_face], torch.tensor([1.0, 0.0, 0.0]).expand(int(on_face.sum()), 3)
    )
    assert torch.equal(out.rgb[out.opacity[..., 0] == 0][:, 2], torch.ones(int((out.opacity == 0).sum())))


def test_render_colors_follow_primitives_and_backgrounds_broadcast():
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    scene = _scene(
        Sphere(center=(0, -0.4, 0), radius=0.25, color=red),
        Box(center=(0, 0.4, 0), size=(0.4, 0.4, 0.4), color=blue),
    )
    cams = make_cameras(0.0, torch.tensor([0.0, 30.0]), 2.5, 45.0, 32)
    centers = torch.tensor([[0.0, -0.4, 0.0], [0.0, 0.4, 0.0]]).expand(2, 2, 3)
    px = project_points(cams, centers).floor().long()  # (B, 2 primitives, 2)
    for bg in (torch.tensor([0.5, 0.5, 0.5]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), None):
        out = scene.render(cams, background=bg)
        expected_bg = torch.ones(2, 32, 32, 3) if bg is None else bg.expand(2, 3).view(2, 1, 1, 3)
        torch.testing.assert_close(out.extras["background"], expected_bg.expand(2, 32, 32, 3))
        for b in range(2):
            torch.testing.assert_close(out.rgb[b, px[b, 0, 1], px[b, 0, 0]], torch.tensor(red))
            torch.testing.assert_close(out.rgb[b, px[b, 1, 1], px[b, 1, 0]], torch.tensor(blue))
        empty = out.opacity[..., 0] == 0
        torch.testing.assert_close(out.rgb[empty], out.extras["background"][empty])
        hits = out.rgb[~empty]
        assert ((hits == torch.tensor(red)).all(-1) | (hits == torch.tensor(blue)).all(-1)).all()
    with pytest.raises(ValueError, match="background has shape"):
        scene.render(cams, background=torch.zeros(5, 3))


@pytest.mark.parametrize("name", BUILTIN_SCENES)
def test_builtin_scenes_load_and_render(name):
    scene = builtin_scene(name)
    assert scene.name == name
    assert 0.45 <= scene.bounding_radius <= 1.0
    cams = make_cameras(15.0, torch.tensor([0.0, 90.0, 180.0, 270.0]), 2.2, 45.0, 32)
    out = scene.render(cams)
    hit = out.opacity[..., 0] == 1
    assert 0.03 < hit.float().mean() < 0.7 and hit.flatten(1).any(1).all()
    o, d = get_rays(cams)
    points = (o + out.depth * d)[hit]
    assert points.norm(dim=-1).max() <= scene.bounding_radius + 1e-3
    assert scene.sdf(points).abs().max() < 1e-4
    colors = torch.tensor([p.color for p in scene.primitives])
    assert ((out.rgb[hit][:, None] - colors[None]).abs().amax(-1).min(1).values < 1e-6).all()
    assert len(torch.unique(out.rgb[hit], dim=0)) >= 2


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    scene = builtin_scene("a rocket")
    cams = make_cameras(20.0, torch.tensor([0.0, 135.0]), 2.2, 45.0, 48)
    cpu = scene.render(cams, supersample=2)
    gpu = scene.render(cams.to("cuda"), supersample=2).to("cpu")
    agree = (gpu.opacity == cpu.opacity).float().mean()
    assert agree > 0.995  # float rounding may flip a few exactly-grazing sub-rays
    both = (gpu.opacity == 1) & (cpu.opacity == 1)
    assert (gpu.depth[both] - cpu.depth[both]).abs().max() < 1e-4
