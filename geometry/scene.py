"""Analytic scenes: a union of primitives with exact SDFs, and an accurate unlit-albedo renderer (DESIGN.md §8).

Scenes are ground truth: the oracle prior renders them as its data distribution, and tests compare learned
geometry and the other renderers against them. The renderer sphere-traces the exact scene SDF from each
ray's entry into the unit sphere, then polishes hits with Newton steps, so depths are accurate to ~1e-5.
Loading/validation of the YAML format lives in geometry/scene_io.py and is re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int64
from torch import Tensor

from geometry.cameras import Cameras, get_rays
from geometry.primitives import Primitive
from geometry.render_output import RenderOutput
from geometry.scene_io import (  # re-exported: the file format is part of this module's API
    BUILTIN_SCENES,
    SceneError,
    builtin_scene,
    load_scene,
    resolve_scene,
    scene_from_dict,
)

SdfFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N"]]


# ---------------------------------------------------------------- stateless ray math


@contextlib.contextmanager
def _single_threaded_on_cpu():
    """Run the tracing loop with one intra-op thread.

    Sphere tracing issues thousands of small elementwise ops; on a CPU shared with other jobs each op that
    fans out to the thread pool waits milliseconds for a descheduled worker (measured: 4×64² renders take
    0.3-0.9 s single-threaded vs 6-14 s with 2 threads under load). GPU work is unaffected.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _dot(a: Float[Tensor, "N 3"], b: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
    # Elementwise on purpose: a reduction over a size-3 dim is slow on a busy CPU (see primitives.py).
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def ray_sphere_interval(
    origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"], radius: float = 1.0
) -> tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Entry/exit distances of unit-direction rays through the origin-centered sphere of `radius`.

    Solves |o + t d|² = radius² (a quadratic with unit leading coefficient). Entry is clamped to 0 for
    origins inside the sphere. Returns (t_near, t_far, valid); invalid rays miss or have the sphere behind.
    """
    b = _dot(origins, dirs)
    c = _dot(origins, origins) - radius**2
    disc = b * b - c
    root = disc.clamp_min(0.0).sqrt()
    t_near = (-b - root).clamp_min(0.0)
    t_far = -b + root
    return t_near, t_far, (disc > 0) & (t_far > 0)


def sphere_trace(
    sdf: SdfFn,
    origins: Float[Tensor, "N 3"],
    dirs: Float[Tensor, "N 3"],
    t_near: Float[Tensor, "N"],
    t_far: Float[Tensor, "N"],
    valid: Bool[Tensor, "N"],
    max_steps: int = 256,
    hit_eps: float = 1e-5,
    tail_rays: int = 64,
) -> tuple[Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Sphere tracing (Hart 1996): march t += sdf(o + t d) until sdf < hit_eps or t > t_far.

    An exact SDF never overshoots, so the first surface along the ray is found. Only still-marching rays are
    evaluated each step. The few near-tangent rays that would crawl for hundreds of tiny steps (each one a
    whole SDF evaluation's worth of op launches) are finished together by `march_tail` once at most
    `tail_rays` remain. Returns (t (N,), hit (N,) bool); t is meaningful only where hit.
    """
    t = t_near.clone()
    hit = torch.zeros_like(valid)
    idx = valid.nonzero().squeeze(-1)
    for _ in range(max_steps):
        if idx.numel() <= tail_rays:
            break
        t_i = t[idx]
        s = sdf(origins[idx] + t_i[:, None] * dirs[idx])
        converged = s < hit_eps
        hit[idx[converged]] = True
        t_next = t_i + s.clamp_min(0.0)
        t[idx] = torch.where(converged, t_i, t_next)
        idx = idx[~converged & (t_next < t_far[idx])]
    if idx.numel() > 0:
        t_tail, hit_tail = march_tail(sdf, origins[idx], dirs[idx], t[idx], t_far[idx], hit_eps)
        t[idx], hit[idx] = t_tail, hit_tail
    return t, hit


def march_tail(
    sdf: SdfFn,
    origins: Float[Tensor, "M 3"],
    dirs: Float[Tensor, "M 3"],
    t_start: Float[Tensor, "M"],
    t_far: Float[Tensor, "M"],
    hit_eps: float = 1e-5,
    n_samples: int = 512,
    bisections: int = 30,
) -> tuple[Float[Tensor, "M"], Bool[Tensor, "M"]]:
    """First point with sdf < hit_eps on [t_start, t_far] for a few rays, in a handful of batched SDF calls.

    Samples every ray densely at once (sdf(start) ≥ hit_eps, so the first sample below hit_eps brackets the
    first hit), then bisects the bracket. The hit criterion is sphere tracing's own; a touch shorter than the
    sample spacing ((t_far − t_start) / n_samples, ~4e-3 world units) is a tangent graze that no pixel-center
    ray resolves reliably anyway.
    """
    m = origins.shape[0]
    u = torch.linspace(0.0, 1.0, n_samples, dtype=origins.dtype, device=origins.device)
    ts = t_start[:, None] + (t_far - t_start)[:, None] * u[None]  # (M, S)
    values = sdf((origins[:, None] + ts[..., None] * dirs[:, None]).reshape(-1, 3)).view(m, n_samples)
    below = values < hit_eps
    hit = below.any(dim=1)
    first = below.to(torch.uint8).argmax(dim=1)  # first True; 0 where none (those rays are misses)
    rows = torch.arange(m, device=origins.device)
    lo, hi = ts[rows, (first - 1).clamp_min(0)], ts[rows, first]
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        above = sdf(origins + mid[:, None] * dirs) >= hit_eps
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return hi, hit


def newton_refine(
    sdf: SdfFn,
    origins: Float[Tensor, "N 3"],
    dirs: Float[Tensor, "N 3"],
    t: Float[Tensor, "N"],
    steps: int = 2,
    h: float = 1e-4,
    max_step: float = 1e-2,
) -> Float[Tensor, "N"]:
    """Newton's method on f(t) = sdf(o + t d) near a hit, f' by central differences of step `h`.

    Skipped where the ray is (nearly) tangent (f' > -0.05) and clamped to `max_step`: it only polishes a hit
    that sphere tracing already found (to ~1e-7 residual), it never searches.
    """
    for _ in range(steps):
        f = sdf(origins + t[:, None] * dirs)
        df = (sdf(origins + (t + h)[:, None] * dirs) - sdf(origins + (t - h)[:, None] * dirs)) / (2 * h)
        step = torch.where(df < -0.05, -f / df.clamp_max(-0.05), torch.zeros_like(f))
        t = t + step.clamp(-max_step, max_step)
    return t


def expand_background(
    background: Tensor | None, batch: int, height: int, width: int, like: Tensor
) -> Float[Tensor, "B H W 3"]:
    """Background as (B,H,W,3) from None (white), (3,), (B,3) or (B,H,W,3), values in [0,1]."""
    if background is None:
        return torch.ones(batch, height, width, 3, dtype=like.dtype, device=like.device)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape == (3,):
        bg = bg.view(1, 1, 1, 3)
    elif bg.shape == (batch, 3):
        bg = bg.view(batch, 1, 1, 3)
    elif bg.shape != (batch, height, width, 3):
        raise ValueError(
            f"background has shape {tuple(bg.shape)}; pass (3,), ({batch}, 3) or ({batch}, {height}, {width}, 3)"
        )
    return bg.expand(batch, height, width, 3)


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
    @_single_threaded_on_cpu()
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
    @_single_threaded_on_cpu()
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
        bg = expand_background(background, B, H, W, cameras.c2w)
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
        rgb = _pool(albedo.view(*fine, 3), k) / (k * k) + (1.0 - opacity) * bg
        depth = _pool(t.view(*fine, 1), k) / hits.clamp_min(1.0)
        normal = F.normalize(_pool(normal.view(*fine, 3), k), dim=-1)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, normal=normal, extras={"background": bg})


__all__ = [
    "BUILTIN_SCENES",
    "Scene",
    "SceneError",
    "builtin_scene",
    "expand_background",
    "load_scene",
    "newton_refine",
    "ray_sphere_interval",
    "resolve_scene",
    "scene_from_dict",
    "march_tail",
    "sphere_trace",
]
