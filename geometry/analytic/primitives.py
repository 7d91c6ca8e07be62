"""Analytic primitives for scenes (DESIGN.md §8): exact signed distance functions and their parameters.

Every SDF here is exact (the true Euclidean distance to the surface, negative inside), not merely a
1-Lipschitz bound, so sphere tracing converges and tests can compare against brute-force distances.
Solids of revolution (cylinder, torus, cone) reduce to a 2D distance in the (rho, z) half-plane: by
rotational symmetry the closest surface point always lies in the query point's own half-plane.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

Vec3 = tuple[float, float, float]


# ---------------------------------------------------------------- stateless SDFs (local coordinates)
# Written with elementwise ops only: small reductions (max/norm over a size-3 dim) and tiny matmuls hit
# the intra-op thread pool and cost milliseconds per call on a busy CPU, and sphere tracing calls these
# hundreds of times.


def _length(*components: Tensor) -> Tensor:
    # pow(0.5), not sqrt: sqrt goes multi-threaded from ~2k elements, which is slower on a busy CPU.
    return sum(c * c for c in components).pow(0.5)


def _sdf_rect(*d: Tensor) -> Tensor:
    """Exact SDF of an axis-aligned box (any dimension) from per-axis d_i = |q_i| - half_extent_i.

    Outside: length of the positive part; inside: the largest (least negative) component.
    """
    outside = _length(*(di.clamp_min(0.0) for di in d))
    inside = functools.reduce(torch.maximum, d).clamp_max(0.0)
    return outside + inside


def sdf_sphere(q: Float[Tensor, "N 3"], radius: float) -> Float[Tensor, "N"]:
    """Sphere of `radius` at the origin."""
    return _length(*q.unbind(-1)) - radius


def sdf_box(q: Float[Tensor, "N 3"], size: Vec3) -> Float[Tensor, "N"]:
    """Axis-aligned box with full edge lengths `size` = (sx, sy, sz), centered at the origin."""
    return _sdf_rect(*(qi.abs() - 0.5 * si for qi, si in zip(q.unbind(-1), size, strict=True)))


def sdf_cylinder(q: Float[Tensor, "N 3"], radius: float, height: float) -> Float[Tensor, "N"]:
    """Capped cylinder along local z, from z = -height/2 to +height/2: a 2D rectangle in (rho, z)."""
    x, y, z = q.unbind(-1)
    return _sdf_rect(_length(x, y) - radius, z.abs() - 0.5 * height)


def sdf_torus(q: Float[Tensor, "N 3"], radius_major: float, radius_minor: float) -> Float[Tensor, "N"]:
    """Torus in the local xy plane: distance to the ring circle (radius_major) minus the tube radius."""
    x, y, z = q.unbind(-1)
    return _length(_length(x, y) - radius_major, z) - radius_minor


def _segment_distance(
    px: Float[Tensor, "N"], pz: Float[Tensor, "N"], a: tuple[float, float], b: tuple[float, float]
) -> Float[Tensor, "N"]:
    """Euclidean distance from 2D points (px, pz) to the segment [a, b] (projection clamped to it)."""
    ex, ez = b[0] - a[0], b[1] - a[1]
    wx, wz = px - a[0], pz - a[1]
    u = ((wx * ex + wz * ez) / (ex * ex + ez * ez)).clamp(0.0, 1.0)
    return _length(wx - u * ex, wz - u * ez)


def sdf_cone(q: Float[Tensor, "N 3"], radius: float, height: float) -> Float[Tensor, "N"]:
    """Capped cone along local z: base disc of `radius` at z = -height/2, apex at z = +height/2.

    In the (rho, z) half-plane the profile is the triangle (0,-h/2), (r,-h/2), (0,h/2); its axis edge is not
    part of the surface. Distance = min over the base and slant segments; sign from the half-plane tests.
    """
    h2 = 0.5 * height
    x, y, z = q.unbind(-1)
    rho = _length(x, y)
    rim = (radius, -h2)
    dist = torch.minimum(
        _segment_distance(rho, z, (0.0, -h2), rim), _segment_distance(rho, z, rim, (0.0, h2))
    )
    # Inside: above the base plane and below the slant line rho/r + (z + h/2)/h = 1.
    inside = (z > -h2) & (rho * height + (z + h2) * radius < radius * height)
    return torch.where(inside, -dist, dist)


# ---------------------------------------------------------------- rotations


def rotation_matrix(rotation_deg: Vec3) -> Float[Tensor, "3 3"]:
    """R = Rz·Ry·Rx (extrinsic rotations about world x, then y, then z), float64; world = R·local + center."""
    rx, ry, rz = (math.radians(a) for a in rotation_deg)
    cx, sx, cy, sy, cz, sz = (
        math.cos(rx),
        math.sin(rx),
        math.cos(ry),
        math.sin(ry),
        math.cos(rz),
        math.sin(rz),
    )
    Rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]], dtype=torch.float64)
    Ry = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
    Rz = torch.tensor([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Rz @ Ry @ Rx


def _circle_farthest(center: Tensor, axis: Tensor, radius: float) -> float:
    """Largest distance from the origin to a circle (center, unit normal `axis`, radius), exactly."""
    along = center.dot(axis)
    in_plane = (center - along * axis).norm()
    return math.hypot(float(along), float(in_plane) + radius)


# ---------------------------------------------------------------- primitive dataclasses


@dataclass(frozen=True, kw_only=True)
class Primitive:
    """Common fields: world `center`, `color` [r,g,b] in [0,1], optional `rotation_deg` [rx, ry, rz].

    Subclasses add their shape fields and `local_sdf`. `TYPE` is the YAML `type:` value.
    """

    TYPE: ClassVar[str] = ""
    center: Vec3
    color: Vec3
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)

    @property
    def rotation(self) -> Float[Tensor, "3 3"]:
        return rotation_matrix(self.rotation_deg)

    @functools.cached_property
    def _rotation_entries(self) -> tuple[tuple[float, ...], ...] | None:
        """R as Python floats (None for the identity), so to_local stays elementwise."""
        if all(a == 0.0 for a in self.rotation_deg):
            return None
        return tuple(tuple(float(v) for v in row) for row in self.rotation)

    def to_local(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """World → local: q = Rᵀ(p − c), i.e. q_j = Σ_i R_ij (p − c)_i."""
        d = [points[:, i] - self.center[i] for i in range(3)]
        R = self._rotation_entries
        if R is None:
            return torch.stack(d, dim=-1)
        return torch.stack([d[0] * R[0][j] + d[1] * R[1][j] + d[2] * R[2][j] for j in range(3)], dim=-1)

    def sdf(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        """Exact signed distance in world units (rotations and translations preserve distances)."""
        return self.local_sdf(self.to_local(points))

    def local_sdf(self, q: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        raise NotImplementedError

    def _world_axis_circle(self, z_local: float, radius: float) -> float:
        R = self.rotation
        center = torch.tensor(self.center, dtype=torch.float64) + R[:, 2] * z_local
        return _circle_farthest(center, R[:, 2], radius)

    def bounding_radius(self) -> float:
        """Largest distance from the world origin to any point of the primitive (exact)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Sphere(Primitive):
    TYPE: ClassVar[str] = "sphere"
    radius: float

    def local_sdf(self, q):
        return sdf_sphere(q, self.radius)

    def bounding_radius(self) -> float:
        return math.hypot(*self.center) + self.radius


@dataclass(frozen=True, kw_only=True)
class Box(Primitive):
    TYPE: ClassVar[str] = "box"
    size: Vec3

    def local_sdf(self, q):
        return sdf_box(q, self.size)

    def bounding_radius(self) -> float:
        # A convex polytope's farthest point from the origin is one of its corners.
        signs = torch.tensor(
            [[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=torch.float64
        )
        corners = 0.5 * signs * torch.tensor(self.size, dtype=torch.float64)
        world = corners @ self.rotation.T + torch.tensor(self.center, dtype=torch.float64)
        return float(world.norm(dim=-1).max())


@dataclass(frozen=True, kw_only=True)
class Cylinder(Primitive):
    TYPE: ClassVar[str] = "cylinder"
    radius: float
    height: float

    def local_sdf(self, q):
        return sdf_cylinder(q, self.radius, self.height)

    def bounding_radius(self) -> float:
        # Convex hull of its two rim circles: the farthest point lies on a rim.
        h2 = 0.5 * self.height
        return max(self._world_axis_circle(-h2, self.radius), self._world_axis_circle(h2, self.radius))


@dataclass(frozen=True, kw_only=True)
class Torus(Primitive):
    TYPE: ClassVar[str] = "torus"
    radius_major: float
    radius_minor: float

    def local_sdf(self, q):
        return sdf_torus(q, self.radius_major, self.radius_minor)

    def bounding_radius(self) -> float:
        # Minkowski sum of the ring circle and a ball of radius_minor.
        return self._world_axis_circle(0.0, self.radius_major) + self.radius_minor


@dataclass(frozen=True, kw_only=True)
class Cone(Primitive):
    TYPE: ClassVar[str] = "cone"
    radius: float
    height: float

    def local_sdf(self, q):
        return sdf_cone(q, self.radius, self.height)

    def bounding_radius(self) -> float:
        # Convex hull of the base rim and the apex.
        h2 = 0.5 * self.height
        apex = torch.tensor(self.center, dtype=torch.float64) + self.rotation[:, 2] * h2
        return max(self._world_axis_circle(-h2, self.radius), float(apex.norm()))


PRIMITIVE_TYPES: dict[str, type[Primitive]] = {cls.TYPE: cls for cls in (Sphere, Box, Cylinder, Torus, Cone)}
