"""From a trained representation to a surface: views to render while exporting, density → mesh.

`ExportViews` is what a representation gets to look at itself while it exports (its renderer and cameras
around the object): the NeRF calibrates its density threshold on rendered silhouettes, the Gaussians bake
their texture from renders. `density_to_mesh` is marching cubes on any density field (NeRF, Gaussians).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geometry.cameras import Cameras, get_rays, look_at, make_cameras
from geometry.mesh.export_config import ExportConfig
from geometry.mesh.extract import (
    DepthProbe,
    OpacityProbe,
    fill_cavities,
    fill_hidden,
    marching_cubes,
    otsu_threshold,
    sample_grid,
    silhouette_threshold,
)
from geometry.mesh.mesh import ExportError, Mesh, remove_floaters

ColorFn = Callable[[Tensor, Tensor], Tensor]  # (points (N,3), unit normals (N,3)) -> rgb (N,3) in [0,1]

# Views for the visibility fill (extract.fill_hidden): directions about 30° apart all around, at about the
# pixel size of a 128³ grid's voxels.
CARVE_VIEWS = 48
CARVE_RESOLUTION = 128


def fibonacci_directions(n: int) -> Tensor:
    """n unit vectors spread evenly over the sphere (the golden-angle spiral), (n, 3)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = (1.0 - z * z).clamp_min(0.0).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1).float()


@dataclass
class ExportViews:
    """The renderer and the camera distance / field of view / elevation the object was evaluated at.

    surface: the mesh being exported, once extracted (export_geometry sets it before `surface_colors`), so a
    colour baker can test visibility against the very surface it textures.
    """

    renderer: nn.Module
    distance: float
    fovy_deg: float
    elevation: float = 15.0
    surface: Mesh | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.renderer.parameters()), torch.empty(0)).device

    def orbit(self, n_views: int, height: int) -> Cameras:
        """n views evenly spaced in azimuth at the evaluation elevation."""
        azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views) - 180.0
        return make_cameras(self.elevation, azimuth, self.distance, self.fovy_deg, height)

    def sphere(self, n_views: int, height: int) -> Cameras:
        """n views from every side, below and above included, looking at the origin."""
        eye = fibonacci_directions(n_views) * self.distance
        c2w = look_at(eye, torch.zeros_like(eye), _up_for(eye))
        cams = make_cameras(0.0, torch.zeros(n_views), self.distance, self.fovy_deg, height)
        cams.c2w = c2w
        cams.elevation = torch.rad2deg(torch.asin((eye[:, 2] / self.distance).clamp(-1, 1)))
        cams.azimuth = torch.rad2deg(torch.atan2(eye[:, 1], eye[:, 0]))
        return cams

    @torch.no_grad()
    def render(self, cameras: Cameras, background_color: Tensor | None = None, chunk: int = 4) -> Any:
        """Unlit renders of `cameras` (eval mode), a few views at a time, on the renderer's device, on the CPU.

        background_color: (B, 3) solid colours (black gives premultiplied colour), or None for the renderer's own.
        """
        from geometry.render_output import RenderOutput

        was_training = self.renderer.training
        self.renderer.eval()
        outs = []
        for i in range(0, len(cameras), chunk):
            bg = None if background_color is None else background_color[i : i + chunk].to(self.device)
            outs.append(
                self.renderer(cameras[i : i + chunk].to(self.device), shading="albedo", background_color=bg)
            )
        self.renderer.train(was_training)
        cat = lambda name: torch.cat([getattr(o, name).cpu() for o in outs])  # noqa: E731
        return RenderOutput(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"))

    def depth_probe(self, n_views: int = CARVE_VIEWS, height: int = CARVE_RESOLUTION) -> DepthProbe:
        """Rendered depth and opacity from views all around (below included), for `fill_hidden`."""
        cams = self.sphere(n_views, height)
        out = self.render(cams)
        depth = out.depth[..., 0] / out.opacity[..., 0].clamp_min(1e-6)  # expected depth of the surface part
        return DepthProbe(torch.linalg.inv(cams.c2w), cams.focal, depth, out.opacity[..., 0])

    def probe(self, n_views: int = 8, height: int = 64) -> OpacityProbe:
        """Rendered silhouettes for the silhouette-matched density threshold."""
        cams = self.orbit(n_views, height)
        out = self.render(cams)
        origins, dirs = get_rays(cams)
        return OpacityProbe(origins.reshape(-1, 3), dirs.reshape(-1, 3), out.opacity.reshape(-1))


def _up_for(eye: Tensor) -> Tensor:
    """World up, or +x for the (near-)vertical views where up would be parallel to the view axis."""
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(eye).clone()
    vertical = eye[:, :2].norm(dim=-1) < 1e-3 * eye.norm(dim=-1)
    up[vertical] = torch.tensor([1.0, 0.0, 0.0])
    return up


def field_device(field: Any, cfg: ExportConfig) -> torch.device:
    if cfg.device is not None:
        return torch.device(cfg.device)
    params = getattr(field, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def on_device(fn: Callable[[Tensor], Tensor], device: torch.device) -> Callable[[Tensor], Tensor]:
    """Query a field method on its device, return float32 on the CPU."""
    return lambda p: fn(p.to(device)).float().cpu()


@torch.no_grad()
def density_to_mesh(
    field: Any, cfg: ExportConfig, probe: OpacityProbe | None = None, depth_probe: DepthProbe | None = None
) -> Mesh:
    """Marching cubes on `field.density` (or `field.sdf` for isosurface sdf), pockets filled, floaters removed.

    depth_probe: rendered depth all around; with fill_cavities, what no view sees as free space is filled too
    (extract.fill_hidden), so hollows that reach the outside through gaps the renders show as opaque go.
    """
    device = field_device(field, cfg)
    radius = float(cfg.radius or getattr(field, "radius", 1.0))
    if cfg.isosurface == "sdf":
        if not callable(getattr(field, "sdf", None)):
            raise ExportError(
                f"export.isosurface=sdf needs a geometry with a signed distance field; {type(field).__name__} "
                "has a density: use export.isosurface=density"
            )
        # Negate so "inside" is the larger side for both kinds; marching_cubes then orients the same way.
        values = -sample_grid(on_device(field.sdf, device), radius, cfg.resolution, cfg.chunk)
        level = -(0.0 if cfg.threshold == "auto" else float(cfg.threshold))
    else:
        values = sample_grid(on_device(field.density, device), radius, cfg.resolution, cfg.chunk)
        if cfg.threshold != "auto":
            level = float(cfg.threshold)
        elif probe is not None:
            level = silhouette_threshold(values, radius, probe)
        else:
            level = otsu_threshold(values)
    if cfg.fill_cavities:
        if depth_probe is not None:
            values = fill_hidden(values, level, radius, depth_probe)
        values = fill_cavities(values, level, cfg.cavity_closing)
    mesh = marching_cubes(values, level, radius)
    mesh = remove_floaters(mesh, cfg.remove_floaters)
    if mesh.num_faces == 0:
        raise ExportError("the extracted mesh is empty after floater removal: lower export.remove_floaters")
    mesh.extras["level"] = level
    return mesh
