"""Renders an explicit triangle mesh (DMTet's isosurface, Magic3D's second stage) into a RenderOutput.

Rasterization, interpolation and silhouette anti-aliasing go through `MeshRasterizer` (nvdiffrast on CUDA
tensors, the torch twin elsewhere). The material is queried only at covered pixels, like the other renderers
query it only at samples: albedo = geometry.albedo(surface points), then shading with the cameras' light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from geometry.backend import check_backend
from geometry.cameras import Cameras, get_rays
from geometry.functional.compositing import over_background
from geometry.functional.mesh_regularizers import (
    face_areas_normals,
    laplacian_smoothness,
    normal_consistency,
)
from geometry.mesh.raster import MeshRasterizer, clip_space
from geometry.render_output import RenderOutput
from geometry.renderer import Renderer

NORMAL_MODES = ("vertex", "face")


@dataclass
class MeshRendererConfig:
    """backend: "auto" (nvdiffrast on CUDA tensors, else the torch twin) | "cuda" | "torch".
    near / far: clip planes in world units (camera z); surfaces outside are not drawn.
    antialias: blend across silhouettes (nvdiffrast's antialias): the only source of gradients that move the
        outline, so mask and colour losses can reshape the mesh; off = point-sampled coverage.
    normal: "vertex" (area-weighted vertex normals, interpolated and renormalized: smooth shading) | "face" (flat).
    return_normal: fill RenderOutput.normal (normals are computed anyway when the shading needs them).
    """

    backend: str = "auto"
    near: float = 0.01
    far: float = 100.0
    antialias: bool = True
    normal: str = "vertex"
    return_normal: bool = True

    def validate(self) -> None:
        check_backend(self.backend, "renderer")
        if self.normal not in NORMAL_MODES:
            raise ValueError(f"renderer.normal must be one of {NORMAL_MODES}, got {self.normal!r}")
        if not 0.0 < self.near < self.far:
            raise ValueError(
                f"renderer.near and far must satisfy 0 < near < far, got {self.near}, {self.far}"
            )


def vertex_normals(vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "V 3"]:
    """Unit area-weighted vertex normals: Σ over incident faces of (v1 − v0) × (v2 − v0), normalized.

    Vertices on no (or only degenerate) faces get a zero normal rather than a NaN.
    """
    area_normals = face_areas_normals(vertices, faces)
    summed = vertices.new_zeros(vertices.shape).index_add(
        0, faces.long().flatten(), area_normals.repeat_interleave(3, dim=0)
    )
    return F.normalize(summed, dim=-1, eps=1e-12)


class MeshRenderer(Renderer):
    """RenderOutput of `geometry.isosurface()`: rgb over the background, opacity, depth, world normals.

    geometry: `isosurface() -> (vertices (V, 3) world units, faces (F, 3) counter-clockwise seen from outside)`,
    `albedo(points (N, 3)) -> (N, 3)` in [0, 1]. material: geometry.fields.materials.Material or None (unlit).

    Every channel follows the volume renderer's semantics, premultiplied by coverage: depth = opacity · distance
    from the camera centre to the surface along the ray, normal = opacity · unit world normal (not flipped
    towards the camera), both 0 where empty. With `antialias` all channels are blended together across
    silhouettes, so depth / opacity and normal / opacity stay the surface's values there too.
    extras: "background" (B, H, W, 3); "mesh_vertices" (V, 3), "mesh_faces" (F, 3) for the regularizers.
    """

    Config = MeshRendererConfig
    loss_names: ClassVar[tuple[str, ...]] = ("normal_consistency", "laplacian")

    def __init__(
        self,
        cfg: MeshRendererConfig,
        geometry: nn.Module,
        material: nn.Module | None = None,
        background: nn.Module | None = None,
    ) -> None:
        super().__init__(geometry, material, background)
        cfg.validate()
        self.cfg = cfg
        self.rasterizer = MeshRasterizer(cfg.backend)

    def regularizers(self, render: RenderOutput, active: set[str]) -> dict[str, Tensor]:
        if not active & set(self.loss_names):
            return {}
        if "mesh_vertices" not in render.extras:
            raise ValueError(
                "mesh regularizers need the render's extras 'mesh_vertices' / 'mesh_faces': pass the "
                "MeshRenderer's own output (RenderOutput.cat drops them)"
            )
        vertices, faces = render.extras["mesh_vertices"], render.extras["mesh_faces"]
        out: dict[str, Tensor] = {}
        if "normal_consistency" in active:
            out["normal_consistency"] = normal_consistency(vertices, faces)
        if "laplacian" in active:
            out["laplacian"] = laplacian_smoothness(vertices, faces)
        return out

    def _needs_normal(self, shading: str | None) -> bool:
        material_needs = self.material is not None and self.material.requires_normal(shading)
        return self.cfg.return_normal or material_needs

    def forward(
        self, cameras: Cameras, shading: str | None = None, background_color: Tensor | None = None
    ) -> RenderOutput:
        cfg, H, W = self.cfg, cameras.height, cameras.width
        vertices, faces = self.geometry.isosurface()
        origins, dirs = get_rays(cameras)
        background = self.background_for(cameras, dirs, background_color).to(vertices.dtype)
        extras = {"background": background, "mesh_vertices": vertices, "mesh_faces": faces}
        if faces.shape[0] == 0:
            return self._empty(vertices, background, extras)

        pos_clip = clip_space(vertices, cameras, cfg.near, cfg.far)
        rast = self.rasterizer.rasterize(pos_clip, faces, H, W)
        face_id = rast[..., 3].detach().long() - 1  # (B, H, W), −1 where empty
        mask = face_id >= 0
        need_normal = self._needs_normal(shading)
        if need_normal and cfg.normal == "vertex":
            attrs = torch.cat([vertices, vertex_normals(vertices, faces)], dim=-1)
            interpolated = self.rasterizer.interpolate(attrs, rast, faces)
            points, normal = interpolated[..., :3], F.normalize(interpolated[..., 3:], dim=-1, eps=1e-12)
        else:
            points = self.rasterizer.interpolate(vertices, rast, faces)
            normal = None
            if need_normal:  # flat shading: the winning triangle's own normal
                unit_faces = F.normalize(face_areas_normals(vertices, faces), dim=-1, eps=1e-12)
                normal = unit_faces[face_id.clamp_min(0)]
        coverage = mask[..., None].to(points.dtype)
        if normal is not None:
            normal = normal * coverage  # the empty pixels' normals are the clamped index's: zero them

        color = self._shade(cameras, points, normal, mask, shading)
        rgb = over_background(color, coverage, background)
        depth = (points - origins.to(points.dtype)).norm(dim=-1, keepdim=True) * coverage
        channels = [rgb, coverage, depth] + ([normal] if cfg.return_normal else [])
        image = torch.cat(channels, dim=-1)
        if cfg.antialias:
            image = self.rasterizer.antialias(image, rast, pos_clip, faces)
        return RenderOutput(
            rgb=image[..., 0:3],
            opacity=image[..., 3:4],
            depth=image[..., 4:5],
            normal=image[..., 5:8] if cfg.return_normal else None,
            extras=extras,
        )

    def _shade(
        self,
        cameras: Cameras,
        points: Float[Tensor, "B H W 3"],
        normal: Float[Tensor, "B H W 3"] | None,
        mask: Tensor,
        shading: str | None,
    ) -> Float[Tensor, "B H W 3"]:
        """Material colour at covered pixels (albedo queried there only), zero elsewhere."""
        pixel = mask.flatten().nonzero()[:, 0]
        flat = points.reshape(-1, 3)
        color = flat.new_zeros(flat.shape)
        if pixel.shape[0] == 0:
            return color.view(points.shape)
        surface = flat[pixel]
        albedo = self.geometry.albedo(surface).to(points.dtype)
        if self.material is None:
            shaded = albedo
        else:
            light = cameras.light_position if cameras.light_position is not None else cameras.position
            light = light.to(points.dtype)[pixel // (cameras.height * cameras.width)]
            surface_normal = None if normal is None else normal.reshape(-1, 3)[pixel]
            shaded = self.material(albedo, surface_normal, surface, light, shading)
        return color.index_put((pixel,), shaded.to(color.dtype)).view(points.shape)

    def _empty(
        self, vertices: Float[Tensor, "V 3"], background: Float[Tensor, "B H W 3"], extras: dict[str, Tensor]
    ) -> RenderOutput:
        """An all-background render for a mesh with no faces (an SDF with no zero crossing).

        The zero added to every channel depends on the vertices, so a loss on this render still backwards
        (giving zero gradients) instead of raising "does not require grad".
        """
        zero = vertices.sum() * 0.0
        B, H, W, _ = background.shape
        empty = background.new_zeros(B, H, W, 1) + zero
        return RenderOutput(
            rgb=background + zero,
            opacity=empty,
            depth=empty.clone(),
            normal=background.new_zeros(B, H, W, 3) + zero if self.cfg.return_normal else None,
            extras=extras,
        )
