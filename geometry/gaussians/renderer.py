"""Renders 3D Gaussians into a RenderOutput: gsplat on CUDA tensors, the torch twin elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from geometry.backend import check_backend, use_cuda_library
from geometry.cameras import Cameras, get_rays, intrinsics, ray_directions_camera
from geometry.functional.compositing import over_background
from geometry.functional.regularizers import opaque_loss, sparsity_loss
from geometry.gaussians.model import GaussianModel, covariance_3d
from geometry.gaussians.rasterize import rasterize_gsplat, rasterize_torch
from geometry.render_output import RenderOutput
from geometry.renderer import Renderer

OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class SplatRendererConfig:
    """backend: "auto" (gsplat on CUDA tensors, else the torch twin) | "cuda" | "torch".
    eps2d: screen-space low-pass in px² (3DGS: 0.3). near_plane/far_plane: camera-z culling (world units).
    normal: "gaussian" (composite each Gaussian's shortest axis, facing the camera) | "none".
    """

    backend: str = "auto"
    eps2d: float = 0.3
    near_plane: float = 0.01
    far_plane: float = 1e10
    normal: str = "gaussian"

    def validate(self) -> None:
        check_backend(self.backend, "renderer")
        if self.normal not in ("gaussian", "none"):
            raise ValueError(f"renderer.normal must be gaussian|none, got '{self.normal}'")


def world_to_opencv(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """View matrices world → OpenCV camera (x right, y down, z forward) from OpenGL camera-to-world poses."""
    return OPENGL_TO_OPENCV.to(c2w) @ torch.linalg.inv(c2w)


class SplatRenderer(Renderer):
    """RenderOutput with rgb over the background (clamped to [0, 1]), opacity, depth, normal.

    Depth is Σ w·(distance along the ray) (0 where empty), like the volume renderer. `extras` carries what the
    densification strategy reads after backward: "means2d" (C, N, 2) with retained grad, "radii" (C, N, 2).
    """

    Config = SplatRendererConfig
    loss_names: ClassVar[tuple[str, ...]] = ("sparsity", "opaque")

    def __init__(self, cfg: SplatRendererConfig, geometry: GaussianModel, material=None, background=None):
        super().__init__(geometry, material, background)
        cfg.validate()
        self.cfg = cfg

    def regularizers(self, render: RenderOutput, active: set[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "sparsity" in active:
            out["sparsity"] = sparsity_loss(render.opacity)
        if "opaque" in active:
            out["opaque"] = opaque_loss(render.opacity)
        return out

    def features(self, cameras: Cameras, shading: str | None) -> Float[Tensor, "B N D"]:
        """Per-camera channels to composite: rgb (shaded by the material), normal (facing the camera), z."""
        g = self.geometry
        rgb = g.colors(cameras.position)
        normal = g.normals()[None].expand(len(cameras), -1, -1)
        to_cam = cameras.position[:, None] - g.means[None]
        normal = normal * torch.where((normal * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        if self.material is not None:
            B, N = rgb.shape[:2]
            light = cameras.light_position if cameras.light_position is not None else cameras.position
            rgb = self.material(
                rgb.reshape(-1, 3),
                normal.reshape(-1, 3),
                g.means[None].expand(B, -1, -1).reshape(-1, 3),
                light[:, None].expand(-1, N, -1).reshape(-1, 3),
                shading,
            ).reshape(B, N, 3)
        w2c = world_to_opencv(cameras.c2w)
        z = (g.means @ w2c[:, 2, :3].transpose(0, 1) + w2c[:, 2, 3]).transpose(0, 1)[..., None]
        return torch.cat([rgb, normal, z], dim=-1)

    def forward(self, cameras: Cameras, shading: str | None = None, background_color=None) -> RenderOutput:
        g, H, W, cfg = self.geometry, cameras.height, cameras.width, self.cfg
        feats = self.features(cameras, shading)
        viewmats = world_to_opencv(cameras.c2w)
        Ks = intrinsics(cameras).to(cameras.c2w)
        if use_cuda_library(cfg.backend, g.means.device, "gsplat", "renderer"):
            out, alpha, info = rasterize_gsplat(
                g.means, g.unit_quats, g.scales, g.opacities, feats, viewmats, Ks, W, H,
                cfg.eps2d, cfg.near_plane, cfg.far_plane,
            )  # fmt: skip
        else:
            covars = covariance_3d(g.quats, g.scales)
            out, alpha, info = rasterize_torch(
                g.means,
                covars,
                g.opacities,
                feats,
                viewmats,
                Ks,
                W,
                H,
                cfg.eps2d,
                cfg.near_plane,
                cfg.far_plane,
            )
        means2d = info["means2d"]
        if self.training and torch.is_grad_enabled() and means2d.requires_grad:
            means2d.retain_grad()  # densification reads the view-space gradient after backward
        dirs_cam = ray_directions_camera(cameras)  # z = -1: |d| converts camera z into distance along the ray
        _, dirs = get_rays(cameras)
        bg = self.background_for(cameras, dirs, background_color)
        # SH colours are clamped at 0 only (3DGS); the composite can exceed 1, which no image prior has seen.
        rgb = over_background(out[..., :3], alpha, bg).clamp(0.0, 1.0)
        normal = out[..., 3:6] if cfg.normal == "gaussian" else None
        depth = out[..., 6:7] * dirs_cam.norm(dim=-1, keepdim=True)
        extras = {"background": bg, "means2d": means2d, "radii": info["radii"]}
        if "num_pairs" in info:  # the twin's (pixel, Gaussian) pair count, for benchmarks
            extras["num_pairs"] = torch.tensor(info["num_pairs"])
        return RenderOutput(rgb=rgb, opacity=alpha, depth=depth, normal=normal, extras=extras)
