"""Analytic scenes: exact SDFs against brute force, the renderer against analytic ray casting, the loader."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.cameras import get_rays, make_cameras, project_points
from geometry.primitives import Box, Cone, Cylinder, Sphere, Torus
from geometry.scene import (
    BUILTIN_SCENES,
    Scene,
    SceneError,
    builtin_scene,
    load_scene,
    resolve_scene,
    scene_from_dict,
)

WHITE = (1.0, 1.0, 1.0)
S2 = math.sqrt(2.0)


def _scene(*prims) -> Scene:
    return Scene(name="test", primitives=tuple(prims))


def _sdf(prim, *points) -> torch.Tensor:
    return prim.sdf(torch.tensor(points, dtype=torch.float64))


# ---------------------------------------------------------------- SDF values with known answers

KNOWN = [
    (
        Sphere(center=(0.1, 0.2, -0.1), radius=0.3, color=WHITE),
        [(0.6, 0.2, -0.1), (0.1, 0.2, -0.1)],
        [0.2, -0.3],
    ),
    (
        Box(center=(0, 0, 0), size=(0.4, 0.6, 0.2), color=WHITE),
        [(0.3, 0.4, 0.2), (0.5, 0, 0), (0, 0, 0), (0.3, 0.4, 0.0), (0.0, 0.25, 0.0)],
        [0.1 * math.sqrt(3), 0.3, -0.1, 0.1 * S2, -0.05],
    ),
    (
        Cylinder(center=(0, 0, 0), radius=0.2, height=0.6, color=WHITE),
        [(0, 0, 0.5), (0.5, 0, 0), (0.3, 0, 0.4), (0, 0, 0), (0, 0, 0.25), (0, 0.2, -0.3)],
        [0.2, 0.3, 0.1 * S2, -0.2, -0.05, 0.0],
    ),
    (
        Torus(center=(0, 0, 0), radius_major=0.4, radius_minor=0.1, color=WHITE),
        [(0.4, 0, 0), (0, 0.4, 0.3), (0, 0, 0), (0.7, 0, 0), (0, -0.45, 0)],
        [-0.1, 0.2, 0.3, 0.2, -0.05],
    ),
    (
        Cone(center=(0, 0, 0), radius=0.3, height=0.6, color=WHITE),
        # apex, above apex, base rim, below base, diagonal off the rim, just above the base, on the axis inside
        [(0, 0, 0.3), (0, 0, 0.5), (0.3, 0, -0.3), (0, 0, -0.5), (0.4, 0, -0.4), (0, 0, -0.29)],
        [0.0, 0.2, 0.0, 0.2, 0.1 * S2, -0.01],
    ),
]


@pytest.mark.parametrize("prim, points, expected", KNOWN, ids=lambda v: getattr(v, "TYPE", ""))
def test_sdf_known_distances(prim, points, expected):
    torch.testing.assert_close(
        _sdf(prim, *points), torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_cone_slant_distance_along_normal():
    # Offsetting a slant point along the slant's outward normal (h, r)/|(h, r)| moves the SDF by the offset.
    r, h = 0.3, 0.6
    cone = Cone(center=(0, 0, 0), radius=r, height=h, color=WHITE)
    n_rho, n_z = h / math.hypot(h, r), r / math.hypot(h, r)
    rho0, z0 = r * 0.5, 0.0  # the slant at z = 0 has radius r/2
    for delta in (0.05, -0.02):
        phi = 0.7
        rho, z = rho0 + delta * n_rho, z0 + delta * n_z
        assert _sdf(cone, (rho * math.cos(phi), rho * math.sin(phi), z)).item() == pytest.approx(
            delta, abs=1e-9
        )


# ---------------------------------------------------------------- exactness and sign against brute force


def _grid(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, v = torch.meshgrid(a, b, indexing="ij")
    return u.reshape(-1), v.reshape(-1)


def _revolve(rho: torch.Tensor, z: torch.Tensor, n_phi: int = 360) -> torch.Tensor:
    phi = torch.linspace(0, 2 * math.pi, n_phi + 1, dtype=torch.float64)[:-1]
    rr, pp = _grid(rho, phi)
    zz, _ = _grid(z, phi)
    return torch.stack([rr * pp.cos(), rr * pp.sin(), zz], dim=-1)


def _lin(a: float, b: float, n: int = 120) -> torch.Tensor:
    return torch.linspace(a, b, n, dtype=torch.float64)


def _surface_and_inside(prim):
    """Dense local surface samples and an independent local membership test for each primitive type."""
    if isinstance(prim, Sphere):
        r = prim.radius
        theta = _lin(0, math.pi, 150)
        surface = _revolve(r * theta.sin(), r * theta.cos())
        return surface, lambda q: q.norm(dim=-1) < r
    if isinstance(prim, Box):
        half = torch.tensor(prim.size, dtype=torch.float64) / 2
        faces = []
        for axis in range(3):
            a, b = [i for i in range(3) if i != axis]
            u, v = _grid(_lin(-half[a], half[a]), _lin(-half[b], half[b]))
            for sign in (-1, 1):
                f = torch.zeros(u.shape[0], 3, dtype=torch.float64)
                f[:, a], f[:, b], f[:, axis] = u, v, sign * half[axis]
                faces.append(f)
        return torch.cat(faces), lambda q: (q.abs() < half).all(dim=-1)
    if isinstance(prim, Cylinder):
        r, h2 = prim.radius, prim.height / 2
        side = _revolve(torch.full((120,), r, dtype=torch.float64), _lin(-h2, h2))
        caps = [_revolve(_lin(0, r, 60), torch.full((60,), s * h2, dtype=torch.float64)) for s in (-1, 1)]
        return torch.cat([side, *caps]), lambda q: (q[:, :2].norm(dim=-1) < r) & (q[:, 2].abs() < h2)
    if isinstance(prim, Torus):
        R, r = prim.radius_major, prim.radius_minor
        v = _lin(0, 2 * math.pi, 90)
        surface = _revolve(R + r * v.cos(), r * v.sin(), 480)
        return surface, lambda q: (q[:, :2].norm(dim=-1) - R) ** 2 + q[:, 2] ** 2 < r**2
    if isinstance(prim, Cone):
        r, h = prim.radius, prim.height
        z = _lin(-h / 2, h / 2, 150)
        lateral = _revolve(r * (h / 2 - z) / h, z)
        base = _revolve(_lin(0, r, 60), torch.full((60,), -h / 2, dtype=torch.float64))

        def inside(q):
            return (q[:, 2].abs() < h / 2) & (q[:, :2].norm(dim=-1) < r * (h / 2 - q[:, 2]) / h)

        return torch.cat([lateral, base]), inside
    raise AssertionError(prim)


POSED = [
    Sphere(center=(0.1, -0.2, 0.05), radius=0.35, color=WHITE),
    Box(center=(-0.1, 0.1, 0.0), size=(0.5, 0.3, 0.4), rotation_deg=(20.0, -35.0, 50.0), color=WHITE),
    Cylinder(center=(0.0, 0.1, -0.1), radius=0.2, height=0.5, rotation_deg=(60.0, 10.0, -30.0), color=WHITE),
    Torus(
        center=(0.05, 0.0, 0.1),
        radius_major=0.35,
        radius_minor=0.12,
        rotation_deg=(-40.0, 25.0, 80.0),
        color=WHITE,
    ),
    Cone(center=(0.0, -0.05, 0.0), radius=0.35, height=0.6, rotation_deg=(30.0, 70.0, -15.0), color=WHITE),
]


@pytest.mark.parametrize("prim", POSED, ids=lambda p: p.TYPE)
def test_sdf_is_exact_signed_and_lipschitz(prim):
    """|sdf| = distance to densely sampled surface; sign = independent membership; rotation via scipy.

    scipy's extrinsic "xyz" Euler convention is the documented R = Rz·Ry·Rx, so a wrong rotation order in the
    scene code breaks both the distance and the sign comparisons.
    """
    gen = torch.Generator().manual_seed(0)
    rot = Rotation.from_euler("xyz", prim.rotation_deg, degrees=True)
    center = torch.tensor(prim.center, dtype=torch.float64)
    surface_local, inside_local = _surface_and_inside(prim)
    surface = torch.from_numpy(rot.apply(surface_local.numpy())) + center
    queries = (torch.rand(300, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.8
    sdf = prim.sdf(queries)

    local = torch.from_numpy(rot.inv().apply((queries - center).numpy()))
    inside = inside_local(local)
    assert torch.equal(sdf < 0, inside)

    brute = torch.cdist(queries, surface).min(dim=1).values
    # Samples lie on the surface, so brute >= true distance; sample spacing (< 0.012) bounds the excess.
    assert (sdf.abs() <= brute + 1e-9).all()
    assert (brute - sdf.abs()).max() < 0.01

    other = queries + 0.3 * torch.randn(300, 3, generator=gen, dtype=torch.float64)
    assert ((prim.sdf(other) - sdf).abs() <= (other - queries).norm(dim=-1) + 1e-9).all()


def test_rotation_order_is_x_then_y_then_z():
    # Local z goes to world -y under Rx(90), then to world +x under Rz(90). The opposite order (Rx·Rz)
    # would leave the axis along world -y.
    cyl = Cylinder(center=(0, 0, 0), radius=0.05, height=0.8, rotation_deg=(90.0, 0.0, 90.0), color=WHITE)
    d = _sdf(cyl, (0.35, 0, 0), (0, 0.35, 0), (0, 0, 0.35), (0.45, 0, 0))
    assert d[0] < 0 and d[1] > 0 and d[2] > 0
    assert d[3].item() == pytest.approx(0.05, abs=1e-9)


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


# ---------------------------------------------------------------- loader


def _valid() -> dict:
    return {
        "name": "t",
        "primitives": [{"type": "sphere", "center": [0, 0, 0], "radius": 0.5, "color": [1, 0, 0]}],
    }


def _with(**changes) -> dict:
    d = _valid()
    for key, value in changes.items():
        if value is None:
            del d["primitives"][0][key]
        else:
            d["primitives"][0][key] = value
    return d


BAD = [
    (_with(type="pyramid"), "primitive 0: unknown or missing type 'pyramid'"),
    (_with(radius=None), "primitive 0 (sphere): missing field 'radius'"),
    (_with(radiuss=0.2), "primitive 0 (sphere): unexpected field 'radiuss'"),
    (_with(center=[0, 0]), "field 'center' must be a list of 3"),
    (_with(color=[1.2, 0, 0]), "field 'color' values must be in [0, 1]"),
    (_with(radius=-0.1), "field 'radius' must be > 0"),
    (_with(radius="big"), "field 'radius' must be a finite number"),
    (_with(center=[0.8, 0, 0], radius=0.3), "primitive 0 (sphere) reaches distance 1.1000"),
    ({"name": "t"}, "'primitives' must be a non-empty list"),
    ({"primitives": _valid()["primitives"]}, "missing or empty 'name'"),
    ({**_valid(), "lights": []}, "unexpected top-level key 'lights'"),
    ([1, 2], "a scene must be a mapping"),
    (
        {
            "name": "t",
            "primitives": [
                {
                    "type": "torus",
                    "center": [0, 0, 0],
                    "radius_major": 0.2,
                    "radius_minor": 0.3,
                    "color": [0, 0, 0],
                }
            ],
        },
        "radius_minor must be smaller than radius_major",
    ),
]


@pytest.mark.parametrize("data, message", BAD)
def test_scene_errors_name_the_problem(data, message):
    with pytest.raises(SceneError) as err:
        scene_from_dict(data, source="my.yaml")
    text = str(err.value)
    assert message in text and text.startswith("my.yaml") and "\n" not in text


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprimitives: [ {type: sphere\n")
    with pytest.raises(SceneError, match=r"bad\.yaml: malformed YAML at line \d+") as err:
        load_scene(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(SceneError, match=r"missing\.yaml: scene file not found.*a snowman"):
        load_scene(tmp_path / "missing.yaml")
    with pytest.raises(SceneError, match="unknown built-in scene 'a spaceship'; choose one of: a snowman"):
        resolve_scene("a spaceship")


def test_load_roundtrip_and_resolve(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: two things\nprimitives:\n"
        "  - {type: cone, center: [0, 0, 0.1], radius: 0.2, height: 0.4, rotation_deg: [0, 90, 0], color: [1, 0.5, 0]}\n"
        "  - {type: box, center: [0, 0, -0.3], size: [0.2, 0.3, 0.1], color: [0, 0, 1]}\n"
    )
    scene = resolve_scene(str(path))
    assert scene.name == "two things"
    assert scene.primitives == (
        Cone(center=(0, 0, 0.1), radius=0.2, height=0.4, rotation_deg=(0, 90, 0), color=(1, 0.5, 0)),
        Box(center=(0, 0, -0.3), size=(0.2, 0.3, 0.1), color=(0, 0, 1)),
    )
    # The rotated cone's apex points along +x, the farthest point of the scene.
    assert scene.bounding_radius == pytest.approx(
        max(math.hypot(0.2, 0.1 + 0.2), math.hypot(0.1, 0.15, 0.35))
    )
    for alias in ("A Snowman", "snowman", "  a   snowman "):
        assert resolve_scene(alias) == builtin_scene("a snowman")


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
