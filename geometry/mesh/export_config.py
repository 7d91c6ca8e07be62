"""The `export:` options (validated before anything loads) shared by every representation's `to_mesh`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geometry.mesh.mesh import ExportError

FORMATS = ("glb", "obj", "ply")
PIVOTS = ("origin", "bottom_center")


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
    pivot: "origin" (the world origin, the object's centre of rotation in training) or "bottom_center" (the
    centre of the bounding box's bottom face, where engines expect a prop to stand). bake_views /
    bake_resolution: for representations whose colours are baked from renders (Gaussians), how many views
    around the object and at what resolution. gaussian_ply_frame: "y_up" (glTF / DreamGaussian / splat viewers:
    front +Z, up +Y) or "world" (this project's z-up frame). gaussian_ply_sh_degree: pad f_rest_* with zeros up to
    this SH degree (3 → 45 values, for loaders that expect them), or null to write the model's own degree.
    max_memory_gb: refuse a resolution whose estimated extraction peak exceeds this (None: the memory the
    machine has available when the run starts).
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
    pivot: str = "origin"
    bake_views: int = 24
    bake_resolution: int = 256
    gaussian_ply_frame: str = "y_up"
    gaussian_ply_sh_degree: int | None = None
    max_memory_gb: float | None = None  # extraction memory budget (None: what the machine has available)

    def check_memory(self) -> None:
        """Refuse, before anything runs, a grid whose extraction would not fit (geometry/mesh/memory.py)."""
        from geometry.mesh.memory import memory_problem

        problem = memory_problem(int(self.resolution), self.max_memory_gb)
        if problem:
            raise ExportError(problem)

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
        if self.pivot not in PIVOTS:
            errors.append(f"export.pivot={self.pivot!r}: use one of {list(PIVOTS)}")
        if not (1 <= self.bake_views <= 256) or not (32 <= self.bake_resolution <= 2048):
            errors.append("export.bake_views must be 1..256 and export.bake_resolution 32..2048")
        if self.gaussian_ply_frame not in ("y_up", "world"):
            errors.append(f"export.gaussian_ply_frame={self.gaussian_ply_frame!r}: use 'y_up' or 'world'")
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            errors.append(f"export.max_memory_gb={self.max_memory_gb}: use a positive number of GB, or null")
        if self.gaussian_ply_sh_degree is not None and not 0 <= self.gaussian_ply_sh_degree <= 3:
            errors.append(f"export.gaussian_ply_sh_degree={self.gaussian_ply_sh_degree}: use 0..3 or null")
        if errors:
            # One line (DESIGN.md §5): every bad value and its fix, separated by "; ".
            raise ExportError("invalid export options: " + "; ".join(errors))
        return self
