"""Game-ready export of a trained representation: surface → decimation → UV atlas → bake → GLB/OBJ/PLY.

Each representation says how it becomes a surface (`to_mesh(cfg, views)`) and what colour its surface has
(`surface_colors(cfg, views)`: the NeRF's albedo field, the Gaussians' renders projected back); everything after
that is shared. Nothing is written until the mesh and its textures exist, so a representation with no surface
raises `ExportError` and leaves `export/` alone. `distill3d mode=export resume=<run>` and the end of training
call `export_geometry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geometry.mesh.export_config import FORMATS, ExportConfig
from geometry.mesh.io import write_glb, write_obj, write_ply
from geometry.mesh.mesh import ExportError, Mesh, decimate
from geometry.mesh.surface import ExportViews
from geometry.mesh.texture import BakedTextures, bake, unwrap

__all__ = [
    "FORMATS",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ExportViews",
    "export_geometry",
    "pivot_offset",
]


@dataclass
class ExportResult:
    """files: {format or artifact name: path}; info: faces, vertices, level, pivot; timings: seconds per stage."""

    files: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def pivot_offset(vertices: np.ndarray, pivot: str) -> np.ndarray:
    """The world translation that puts the chosen pivot at the origin (z-up: the bottom is the lowest z)."""
    if pivot == "origin":
        return np.zeros(3, np.float32)
    lo, hi = vertices.min(0), vertices.max(0)
    return -np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], np.float32)


def _shifted(mesh: Mesh, offset: np.ndarray) -> Mesh:
    return Mesh((mesh.vertices + offset).astype(np.float32), mesh.faces, mesh.normals, mesh.uv, mesh.extras)


def export_geometry(
    geometry: Any, cfg: ExportConfig, out_dir: Path, views: ExportViews | None = None
) -> ExportResult:
    """Extract, decimate, unwrap, bake and write the representation's surface into out_dir.

    geometry: a representation with `to_mesh(cfg, views) -> Mesh` and `surface_colors(cfg, views) -> ColorFn`,
    optionally `metallic_roughness(points)` and `export_files(out_dir, cfg) -> {name: path}` (extra artifacts such
    as the Gaussians' .ply). Raises ExportError (a UserError) before writing anything when the options are bad
    or there is no surface.
    """
    cfg.validate()
    result = ExportResult()
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.timings[stage] = now - clock
        clock = now

    if not callable(getattr(geometry, "to_mesh", None)):
        raise ExportError(f"{type(geometry).__name__} cannot be exported as a mesh (it has no to_mesh)")
    mesh = geometry.to_mesh(cfg, views)
    result.info.update(extracted_faces=mesh.num_faces, level=mesh.extras.get("level"))
    lap("extract")
    mesh = decimate(mesh, cfg.target_faces).with_normals()
    lap("decimate")
    # The baker may test visibility against the surface it textures (geometry/mesh/projection.py).
    colors = geometry.surface_colors(cfg, None if views is None else replace(views, surface=mesh))
    lap("colors")
    metal_rough = getattr(geometry, "metallic_roughness", None)
    textured: Mesh | None = None
    baked: BakedTextures | None = None
    if {"glb", "obj"} & set(cfg.formats):
        textured = unwrap(mesh, cfg.texture_size, cfg.atlas_padding)
        lap("unwrap")
        baked = bake(
            textured, colors, cfg.texture_size, cfg.dilation, metal_rough if callable(metal_rough) else None
        )
        lap("bake")
    vertex_colors = None
    if "ply" in cfg.formats:
        with torch.no_grad():
            points, normals = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.normals)
            vertex_colors = colors(points, normals).clamp(0, 1).numpy()
        lap("vertex_colors")

    offset = pivot_offset(mesh.vertices, cfg.pivot)
    result.info.update(
        faces=mesh.num_faces, vertices=mesh.num_vertices, pivot=cfg.pivot, pivot_offset=offset.tolist()
    )
    out_dir = Path(out_dir)
    for fmt in cfg.formats:
        path = out_dir / f"{cfg.name}.{fmt}"
        if fmt == "glb":
            mr = None if baked.metallic_roughness is None else baked.metallic_roughness.cpu().numpy()
            write_glb(path, _shifted(textured, offset), baked.base_color.cpu().numpy(), mr)
        elif fmt == "obj":
            write_obj(path, _shifted(textured, offset), baked.base_color.cpu().numpy())
        else:
            write_ply(path, _shifted(mesh, offset), np.asarray(vertex_colors))
        result.files[fmt] = str(path)
    extra = getattr(geometry, "export_files", None)
    if callable(extra):
        result.files.update(extra(out_dir, cfg))
    lap("write")
    return result
