"""Game-ready export of a trained field: extraction → cleanup → decimation → UV atlas → bake → GLB/OBJ/PLY.

`export_field` is what `distill3d mode=export resume=<run>` and the end of training call. Nothing is written
until the mesh and textures exist, so a field with no surface raises `ExportError` and leaves `export/` alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geometry.mesh import (
    ExportError,
    Mesh,
    OpacityProbe,
    decimate,
    fill_cavities,
    marching_cubes,
    otsu_threshold,
    remove_floaters,
    sample_grid,
    silhouette_threshold,
)
from geometry.mesh_io import write_glb, write_obj, write_ply
from geometry.texture import BakedTextures, bake, unwrap

FORMATS = ("glb", "obj", "ply")

__all__ = [
    "ExportConfig",
    "ExportError",
    "OpacityProbe",
    "export_field",
    "extract_mesh",
    "opacity_probe_from_renderer",
]


@dataclass
class ExportConfig:
    """Options of the `export:` config group (all validated by validate()).

    enabled: export at the end of training (mode=export always exports).
    formats: any of glb | obj | ply. resolution: marching-cubes grid size per axis (cells ≈ 2·radius/res).
    isosurface: "density" (surface where density = threshold, inside denser) or "sdf" (surface where
    sdf = threshold, inside negative). threshold: a number, or "auto" — for sdf, 0; for density, the level
    whose occupied region best matches rendered silhouettes (max IoU with opacity > 0.5) when an opacity
    probe is given, else Otsu's split of the sampled densities. remove_floaters: keep connected components
    with at least this fraction of the largest one's faces (0 = keep all, 1 = largest only). fill_cavities:
    treat hollow pockets of the inside region as solid (no inner-wall triangles); cavity_closing: voxels of
    morphological closing that seal thin tunnels into such pockets first (0 = only fully enclosed pockets).
    target_faces: decimate to about this many faces (0 = no decimation). texture_size: square texture side
    in texels. dilation: texels of seam padding. radius: half-side of the extraction cube in world units
    (None = the field's `radius`, else 1). device: where the field is queried (None = the field's device).
    """

    enabled: bool = True  # a training run exports at its end
    formats: list[str] = field(default_factory=lambda: ["glb", "obj"])
    resolution: int = 256
    threshold: Any = "auto"
    isosurface: str = "density"
    remove_floaters: float = 0.05
    fill_cavities: bool = True
    cavity_closing: int = 2
    target_faces: int = 50_000
    texture_size: int = 1024
    dilation: int = 4
    atlas_padding: int = 2
    radius: float | None = None
    name: str = "model"
    chunk: int = 262_144
    device: str | None = None

    def validate(self) -> ExportConfig:
        """Raise ExportError with one line per bad value (and how to fix it); return self when valid."""
        errors = []
        bad_formats = [f for f in self.formats if f not in FORMATS]
        if bad_formats or not self.formats:
            errors.append(f"export.formats={list(self.formats)}: pick one or more of {list(FORMATS)}")
        if not (16 <= int(self.resolution) <= 1024):
            errors.append(
                f"export.resolution={self.resolution}: use a grid size between 16 and 1024 (e.g. 256)"
            )
        if self.isosurface not in ("density", "sdf"):
            errors.append(f"export.isosurface={self.isosurface!r}: use 'density' (NeRF) or 'sdf'")
        if not (self.threshold == "auto" or isinstance(self.threshold, int | float)):
            errors.append(f"export.threshold={self.threshold!r}: use 'auto' or a number")
        elif self.isosurface == "density" and self.threshold != "auto" and self.threshold <= 0:
            errors.append(f"export.threshold={self.threshold}: a density threshold must be > 0 (or 'auto')")
        if not (0 <= self.cavity_closing <= 8):
            errors.append(f"export.cavity_closing={self.cavity_closing}: use 0..8 voxels (default 2)")
        if not (0.0 <= self.remove_floaters <= 1.0):
            errors.append(
                f"export.remove_floaters={self.remove_floaters}: use a fraction in [0, 1] (0 = off)"
            )
        if self.target_faces < 0 or 0 < self.target_faces < 100:
            errors.append(f"export.target_faces={self.target_faces}: use 0 (no decimation) or at least 100")
        if not (16 <= self.texture_size <= 8192):
            errors.append(
                f"export.texture_size={self.texture_size}: use a size between 16 and 8192 (e.g. 1024)"
            )
        if not (0 <= self.dilation <= 64):
            errors.append(f"export.dilation={self.dilation}: use 0..64 texels (default 4)")
        if self.radius is not None and self.radius <= 0:
            errors.append(f"export.radius={self.radius}: use a positive half-size in world units, or null")
        if errors:
            # One line (DESIGN.md §5): every bad value and its fix, separated by "; ".
            raise ExportError("invalid export options: " + "; ".join(errors))
        return self


def _field_device(field: Any, cfg: ExportConfig) -> torch.device:
    if cfg.device is not None:
        return torch.device(cfg.device)
    params = getattr(field, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _on(field_fn: Callable[[Tensor], Tensor], device: torch.device) -> Callable[[Tensor], Tensor]:
    """Query a field method on its device, return float32 on the CPU."""
    return lambda p: field_fn(p.to(device)).float().cpu()


@torch.no_grad()
def extract_mesh(field: Any, cfg: ExportConfig, opacity_probe: OpacityProbe | None = None) -> Mesh:
    """Marching cubes on the field (density or sdf), then floater removal; no decimation, no normals."""
    device = _field_device(field, cfg)
    radius = float(cfg.radius or getattr(field, "radius", 1.0))
    if cfg.isosurface == "sdf":
        # Negate so "inside" is the larger side for both kinds; marching_cubes then orients the same way.
        values = -sample_grid(_on(field.sdf, device), radius, cfg.resolution, cfg.chunk)
        level = -(0.0 if cfg.threshold == "auto" else float(cfg.threshold))
    else:
        values = sample_grid(_on(field.density, device), radius, cfg.resolution, cfg.chunk)
        if cfg.threshold != "auto":
            level = float(cfg.threshold)
        elif opacity_probe is not None:
            level = silhouette_threshold(values, radius, opacity_probe)
        else:
            level = otsu_threshold(values)
    if cfg.fill_cavities:
        values = fill_cavities(values, level, cfg.cavity_closing)
    mesh = marching_cubes(values, level, radius)
    mesh = remove_floaters(mesh, cfg.remove_floaters)
    if mesh.num_faces == 0:
        raise ExportError("the extracted mesh is empty after floater removal: lower export.remove_floaters")
    mesh.extras["level"] = level
    return mesh


def _metallic_roughness_fn(field: Any, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    fn = getattr(
        field, "metallic_roughness", None
    )  # (N,3) → (N,2) (metallic, roughness), if the material has them
    return _on(fn, device) if callable(fn) else None


def export_field(
    field: Any,
    cfg: ExportConfig,
    out_dir: Path,
    opacity_probe: OpacityProbe | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, str]:
    """Extract, decimate, unwrap, bake and write the field's surface into out_dir; return {format: path}.

    field: anything with `density(points (N,3)) -> (N,1)` (or `sdf(points) -> (N,)` for isosurface "sdf"),
    `albedo(points) -> (N,3)` in [0,1] (treated as sRGB display colour), optional `metallic_roughness`, and
    optionally `radius`. timings, when given, receives seconds per stage. Raises ExportError (a ValueError)
    before writing anything when the options are bad or the field has no surface.
    """
    cfg.validate()
    times = timings if timings is not None else {}
    device = _field_device(field, cfg)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] = now - clock
        clock = now

    mesh = extract_mesh(field, cfg, opacity_probe)
    times["extract_faces"] = mesh.num_faces
    lap("extract")
    mesh = decimate(mesh, cfg.target_faces).with_normals()
    lap("decimate")
    albedo_fn = _on(field.albedo, device)
    textured: Mesh | None = None
    baked: BakedTextures | None = None
    if {"glb", "obj"} & set(cfg.formats):
        textured = unwrap(mesh, cfg.texture_size, cfg.atlas_padding)
        lap("unwrap")
        baked = bake(
            textured, albedo_fn, cfg.texture_size, cfg.dilation, _metallic_roughness_fn(field, device)
        )
        lap("bake")
    vertex_colors = None
    if "ply" in cfg.formats:
        with torch.no_grad():
            vertex_colors = albedo_fn(torch.from_numpy(mesh.vertices)).clamp(0, 1).numpy()
        lap("vertex_colors")

    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    for fmt in cfg.formats:
        path = out_dir / f"{cfg.name}.{fmt}"
        if fmt == "glb":
            mr = None if baked.metallic_roughness is None else baked.metallic_roughness.cpu().numpy()
            write_glb(path, textured, baked.base_color.cpu().numpy(), mr)
        elif fmt == "obj":
            write_obj(path, textured, baked.base_color.cpu().numpy())
        else:
            write_ply(path, mesh, np.asarray(vertex_colors))
        written[fmt] = str(path)
    lap("write")
    return written


@torch.no_grad()
def opacity_probe_from_renderer(renderer: Callable[..., Any], cameras: Any) -> OpacityProbe:
    """Render `cameras` with any renderer returning a RenderOutput and keep rays + opacity for the
    silhouette-matched density threshold (cameras: geometry.cameras.Cameras, a few views at low resolution)."""
    from geometry.cameras import get_rays

    out = renderer(cameras)
    origins, dirs = get_rays(cameras)
    return OpacityProbe(
        origins.reshape(-1, 3).cpu(), dirs.reshape(-1, 3).cpu(), out.opacity.reshape(-1).cpu()
    )
