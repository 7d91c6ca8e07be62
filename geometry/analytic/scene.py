"""Analytic scenes: a union of primitives with exact SDFs, and an accurate unlit-albedo renderer (DESIGN.md §8).

Scenes are ground truth: the oracle prior renders them as its data distribution, and tests compare learned
geometry and the other renderers against them. The renderer sphere-traces the exact scene SDF from each
ray's entry into the unit sphere, then polishes hits with Newton steps, so depths are accurate to ~1e-5.
Loading/validation of the YAML format lives in geometry/analytic/scene_io.py (it builds Scenes; this module
knows nothing of files), ray marching in geometry/analytic/tracing.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int64
from torch import Tensor

from geometry.analytic.primitives import Primitive
from geometry.analytic.tracing import newton_refine, single_threaded_on_cpu, sphere_trace
from geometry.cameras import Cameras, get_rays
from geometry.functional.compositing import background_image, over_background
from geometry.functional.rays import ray_sphere_interval
from geometry.render_output import RenderOutput

SdfFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N"]]


# ---------------------------------------------------------------- stateless ray math


def _pool(x: Float[Tensor, "B Hk Wk C"], k: int) -> Float[Tensor, "B H W C"]:
    """Sum over k×k blocks of sub-pixels (block (i, j) holds fine rows i·k..i·k+k-1, columns likewise)."""
    B, Hk, Wk, C = x.shape
    return x.reshape(B, Hk // k, k, Wk // k, k, C).sum(dim=(2, 4))


# ---------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Scene:
    """A named union of primitives in world units (z-up), inside the unit sphere.

    The union's SDF (min over exact primitive SDFs) is exact outside; inside overlapping primitives it
    underestimates the depth, which sphere tracing from outside never sees. Albedo = color of the primitive
    with the smallest SDF.
    """

    name: str
    primitives: tuple[Primitive, ...]

    def sdf(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        """Signed distance (world units, negative inside) of the union: min over primitives."""
        return functools.reduce(torch.minimum, (p.sdf(points) for p in self.primitives))

    def nearest_primitive(self, points: Float[Tensor, "N 3"]) -> Int64[Tensor, "N"]:
        """Index of the primitive with the smallest SDF at each point (first one on ties)."""
        best = self.primitives[0].sdf(points)
        index = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        for i, prim in enumerate(self.primitives[1:], start=1):
            s = prim.sdf(points)
            closer = s < best
            best, index = torch.where(closer, s, best), torch.where(closer, i, index)
        return index

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Color in [0,1] of the primitive closest to (or most deeply containing) each point."""
        colors = torch.tensor([p.color for p in self.primitives], dtype=points.dtype, device=points.device)
        return colors[self.nearest_primitive(points)]

    def normal(self, points: Float[Tensor, "N 3"], eps: float = 1e-5) -> Float[Tensor, "N 3"]:
        """Unit outward normal: SDF gradient by central differences, evaluated in float64.

        float64 keeps the difference quotient accurate (~1e-9) with a tiny step; where the gradient is
        undefined (edges, medial axis) this gives the average of the one-sided normals.
        """
        p = points.detach().to(torch.float64)
        grad = torch.stack(
            [
                self.sdf(p + eps * e) - self.sdf(p - eps * e)
                for e in torch.eye(3, dtype=p.dtype, device=p.device)
            ],
            dim=-1,
        )
        return F.normalize(grad, dim=-1).to(points.dtype)

    @property
    def bounding_radius(self) -> float:
        """Largest distance from the origin to any point of the scene (exact)."""
        return max(p.bounding_radius() for p in self.primitives)

    @torch.no_grad()
    @single_threaded_on_cpu()
    def trace(
        self, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"]
    ) -> tuple[Float[Tensor, "N"], Bool[Tensor, "N"]]:
        """First-hit distance along unit-direction rays (t, hit); t = 0 where the ray misses."""
        t_near, t_far, valid = ray_sphere_interval(origins, dirs, 1.0)
        t, hit = sphere_trace(self.sdf, origins, dirs, t_near, t_far, valid)
        if hit.any():
            t[hit] = newton_refine(self.sdf, origins[hit], dirs[hit], t[hit])
        return torch.where(hit, t, torch.zeros_like(t)), hit

    @torch.no_grad()
    @single_threaded_on_cpu()
    def render(
        self, cameras: Cameras, background: Tensor | None = None, supersample: int = 1
    ) -> RenderOutput:
        """Unlit albedo render over `background` ((3,), (B,3) or (B,H,W,3) in [0,1]; default white).

        One ray per pixel center (or k×k sub-pixel rays for supersample=k, averaged: antialiased rgb and
        opacity). Hits have opacity 1 and depth = distance along the ray (world units); misses show the
        background with opacity 0, depth 0 and normal 0. With supersampling, depth is the mean over the
        sub-rays that hit and normal the normalized mean of their normals.
        """
        if not isinstance(supersample, int) or supersample < 1:
            raise ValueError(f"supersample must be a positive int, got {supersample!r}")
        B, H, W, k = len(cameras), cameras.height, cameras.width, supersample
        bg = background_image(background, B, H, W, cameras.c2w)
        origins, dirs = get_rays(cameras.with_resolution(H * k, W * k))
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        t, hit = self.trace(o, d)
        albedo, normal = torch.zeros_like(o), torch.zeros_like(o)
        if hit.any():
            points = o[hit] + t[hit, None] * d[hit]
            albedo[hit] = self.albedo(points)
            normal[hit] = self.normal(points)
        fine = (B, H * k, W * k)
        hits = _pool(hit.to(o.dtype).view(*fine, 1), k)
        opacity = hits / (k * k)
        rgb = over_background(_pool(albedo.view(*fine, 3), k) / (k * k), opacity, bg)
        depth = _pool(t.view(*fine, 1), k) / hits.clamp_min(1.0)
        normal = F.normalize(_pool(normal.view(*fine, 3), k), dim=-1)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, normal=normal, extras={"background": bg})
