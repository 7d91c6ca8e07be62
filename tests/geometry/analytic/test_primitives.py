"""Analytic primitives: exact SDFs against known distances and brute force, rotation order, bounding radii."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.analytic.primitives import Box, Cone, Cylinder, Sphere, Torus

WHITE = (1.0, 1.0, 1.0)
S2 = math.sqrt(2.0)


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
