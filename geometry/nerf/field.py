"""The implicit volume of DreamFusion / Magic3D-coarse: hash grid → small MLPs → density and albedo.

Plain torch MLPs (tcnn's FullyFusedMLP would only speed up the 64-wide layers; the hash grid dominates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from geometry.fields.hash_grid import HashGrid, HashGridConfig
from geometry.functional.mlp import mlp
from geometry.mesh.export_config import ExportConfig
from geometry.mesh.mesh import Mesh
from geometry.mesh.surface import ColorFn, ExportViews, density_to_mesh, field_device, on_device

# Defaults of the two published density blobs: (scale, std-or-radius).
_BLOB_DEFAULTS = {"blob_magic3d": (10.0, 0.5), "blob_dreamfusion": (5.0, 0.2)}


@dataclass
class NeRFConfig:
    """Implicit volume. World units throughout; the grid covers the cube [−radius, radius]³.

    density_blob_scale / density_blob_std: None = the chosen blob's published values
        (blob_magic3d: 10, radius 0.5; blob_dreamfusion: 5, std 0.2).
    density_bias_constant: the bias for density_bias="constant".
    finite_difference_eps: world-unit step of the central differences for normal_type="finite_difference".
    """

    radius: float = 1.0
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    mlp_hidden: int = 64
    mlp_layers: int = 1
    density_bias: Literal["blob_magic3d", "blob_dreamfusion", "constant", "none"] = "blob_magic3d"
    density_blob_scale: float | None = None
    density_blob_std: float | None = None
    density_bias_constant: float = 0.0
    density_activation: Literal["softplus", "trunc_exp", "exp", "relu"] = "softplus"
    normal_type: Literal["analytic", "finite_difference", "none"] = "analytic"
    finite_difference_eps: float = 1e-2

    def __post_init__(self) -> None:
        if isinstance(self.hash_grid, dict):  # plain dicts from YAML
            self.hash_grid = HashGridConfig(**self.hash_grid)
        if self.radius <= 0:
            raise ValueError(f"NeRF radius={self.radius}; use a positive bounding radius in world units")
        if self.density_bias not in ("blob_magic3d", "blob_dreamfusion", "constant", "none"):
            raise ValueError(
                f"density_bias={self.density_bias!r}; use 'blob_magic3d', 'blob_dreamfusion', 'constant' or 'none'"
            )
        if self.density_activation not in _ACTIVATIONS:
            raise ValueError(
                f"density_activation={self.density_activation!r}; use one of {sorted(_ACTIVATIONS)}"
            )
        if self.normal_type not in ("analytic", "finite_difference", "none"):
            raise ValueError(
                f"normal_type={self.normal_type!r}; use 'analytic', 'finite_difference' or 'none'"
            )
        if self.mlp_hidden < 1 or self.mlp_layers < 0 or self.finite_difference_eps <= 0:
            raise ValueError("NeRF needs mlp_hidden >= 1, mlp_layers >= 0 and finite_difference_eps > 0")
        scale, std = _BLOB_DEFAULTS.get(self.density_bias, (0.0, 1.0))
        self.density_blob_scale = scale if self.density_blob_scale is None else self.density_blob_scale
        self.density_blob_std = std if self.density_blob_std is None else self.density_blob_std
        if self.density_blob_std <= 0:
            raise ValueError(f"density_blob_std={self.density_blob_std}; use a positive radius / std")


@dataclass
class FieldOutput:
    """Field values at N points: density (N, 1) ≥ 0 (per world unit), albedo (N, 3) in [0, 1],
    normal (N, 3) unit vectors (−∇density direction, zero where the gradient vanishes) or None."""

    density: Float[Tensor, "N 1"]
    albedo: Float[Tensor, "N 3"]
    normal: Float[Tensor, "N 3"] | None = None


class _TruncExp(torch.autograd.Function):
    # Instant-NGP's truncated exponential: exact exp forward, gradient clamped so density spikes cannot explode.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """exp(x) whose backward uses exp(min(x, 15)) (Müller et al. 2022, Instant-NGP density activation)."""
    return _TruncExp.apply(x)


_ACTIVATIONS = {"softplus": F.softplus, "trunc_exp": trunc_exp, "exp": torch.exp, "relu": F.relu}


def density_bias(
    points: Float[Tensor, "N 3"], kind: str, scale: float, std: float, constant: float = 0.0
) -> Float[Tensor, "N 1"]:
    """Initial density bias added to the raw density, so optimisation starts from a blob at the origin.

    blob_magic3d (Magic3D):        scale·(1 − ‖x‖/std)           (std = blob radius; negative outside it)
    blob_dreamfusion (DreamFusion): scale·exp(−‖x‖² / (2·std²))
    """
    if kind == "blob_magic3d":
        return scale * (1.0 - points.norm(dim=-1, keepdim=True) / std)
    if kind == "blob_dreamfusion":
        return scale * torch.exp(-points.square().sum(-1, keepdim=True) / (2.0 * std**2))
    if kind == "constant":
        return points.new_full((points.shape[0], 1), constant)
    return points.new_zeros(points.shape[0], 1)


class ImplicitVolume(nn.Module):
    """Density + albedo field on a hash grid: density = act(raw + bias(x)), albedo = sigmoid(features).

    Points are (N, 3) world coordinates; points outside [−radius, radius]³ get density 0.
    """

    def __init__(self, cfg: NeRFConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or NeRFConfig()
        self.radius = cfg.radius
        self.encoding = HashGrid(cfg.hash_grid)
        n_enc = self.encoding.n_output_dims
        self.density_mlp = mlp(n_enc, cfg.mlp_hidden, cfg.mlp_layers, 1)
        self.feature_mlp = mlp(n_enc, cfg.mlp_hidden, cfg.mlp_layers, 3)
        self._activation = _ACTIVATIONS[cfg.density_activation]

    def set_step(self, step: int) -> None:
        self.encoding.set_step(step)

    def _query(self, points: Tensor, want_albedo: bool = True) -> tuple[Tensor, Tensor | None]:
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(
                f"ImplicitVolume expects world points of shape (N, 3), got {tuple(points.shape)}"
            )
        unit = (points / self.radius + 1.0) * 0.5  # [−r, r]³ → [0, 1]³
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1, keepdim=True)
        encoded = self.encoding(unit.clamp(0.0, 1.0))
        c = self.cfg
        bias = density_bias(
            points, c.density_bias, c.density_blob_scale, c.density_blob_std, c.density_bias_constant
        )
        # Under mixed precision the MLPs run in fp16/bf16; their outputs come back to fp32 here, so the
        # activations (an exponential) and all compositing downstream stay in full precision.
        density = self._activation(self.density_mlp(encoded).float() + bias) * inside
        albedo = torch.sigmoid(self.feature_mlp(encoded).float()) if want_albedo else None
        return density, albedo

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 1"]:
        """Volume density (per world unit) at world points; 0 outside the bounding cube."""
        return self._query(points, want_albedo=False)[0]

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Diffuse colour in [0, 1] at world points."""
        return self._query(points)[1]

    def forward(self, points: Float[Tensor, "N 3"], with_normal: bool = False) -> FieldOutput:
        if not with_normal or self.cfg.normal_type == "none":
            density, albedo = self._query(points)
            return FieldOutput(density=density, albedo=albedo)
        if self.cfg.normal_type == "finite_difference":
            density, albedo = self._query(points)
            return FieldOutput(density=density, albedo=albedo, normal=self._finite_difference_normal(points))
        return self._forward_analytic(points)

    def _forward_analytic(self, points: Tensor) -> FieldOutput:
        # Normals as a differentiable function of the parameters (create_graph) so that normal losses
        # (orientation, smoothness) train the field. Only while training: an evaluation render needs the
        # normal's value, not a double-backward graph (which would cost memory and time for nothing).
        train = torch.is_grad_enabled() and self.training
        with torch.enable_grad():
            p = points if points.requires_grad else points.detach().requires_grad_(True)
            density, albedo = self._query(p)
            (grad,) = torch.autograd.grad(density.sum(), p, create_graph=train)
        normal = F.normalize(-grad, dim=-1)
        if not train:
            density, albedo, normal = density.detach(), albedo.detach(), normal.detach()
        return FieldOutput(density=density, albedo=albedo, normal=normal)

    def _finite_difference_normal(self, points: Tensor) -> Tensor:
        # Central differences along each axis: 6 extra density queries per point.
        eps = self.cfg.finite_difference_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        offsets = torch.cat([offsets, -offsets])  # (6, 3): +x +y +z −x −y −z
        shifted = (points[:, None, :] + offsets).reshape(-1, 3)
        d = self.density(shifted).reshape(-1, 6)
        grad = (d[:, :3] - d[:, 3:]) / (2.0 * eps)
        return F.normalize(-grad, dim=-1)

    # ---- export and stage converters -----------------------------------------------------------------
    def to_mesh(self, cfg: ExportConfig, views: ExportViews | None = None) -> Mesh:
        """Marching cubes on the density at the level that best reproduces the rendered silhouettes; with
        fill_cavities, what no render sees as free space is inside (the hollow under a NeRF's dense shell)."""
        density = views is not None and cfg.isosurface == "density"
        probe = views.probe() if density and cfg.threshold == "auto" else None
        depth_probe = views.depth_probe() if density and cfg.fill_cavities else None
        return density_to_mesh(self, cfg, probe, depth_probe)

    def surface_colors(self, cfg: ExportConfig, views: ExportViews | None = None) -> ColorFn:
        """The albedo field at each surface point (normals unused: the field is view-independent)."""
        albedo = on_device(self.albedo, field_device(self, cfg))
        return lambda points, normals: albedo(points)

    @torch.no_grad()
    def init_from(self, other: nn.Module, views: ExportViews | None = None) -> None:
        """Start a stage from another representation: the same NeRF configuration copies its weights.
        views (renders of `other`) are not needed."""
        if isinstance(other, ImplicitVolume):
            self.load_state_dict(other.state_dict())
            return
        raise TypeError(f"an ImplicitVolume cannot be initialized from {type(other).__name__}")
