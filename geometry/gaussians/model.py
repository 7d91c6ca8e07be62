"""3D Gaussians (Kerbl et al. 2023, "3D Gaussian Splatting"; DreamGaussian's text-to-3D recipe).

Parameters: means (N,3), log-scales (N,3), unit quaternions (N,4) as (w, x, y, z), opacity logits (N,1) and
spherical-harmonics colours (DC (N,3) + higher bands (N,K,3), degree 0-3). Colour = 0.5 + SH(dir), clamped
at 0, as in 3DGS. The number of Gaussians changes during training (geometry/densify.py replaces the Parameters and re-keys
the optimizer), and a state_dict with other row counts loads after an automatic resize (any checkpoint resumes).

For mesh export, `density(points)` is the opacity-weighted sum of Gaussians (DreamGaussian) and
`albedo(points)` the density-weighted mean colour; both use a coarse spatial hash so that a 128³ grid does not
touch every Gaussian for every point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from distill3d.errors import UserError
from geometry.gaussians.field import gaussian_albedo, gaussian_density
from geometry.gaussians.functional import covariance_3d, quat_to_rotmat, rgb_to_sh_dc, sh_to_rgb
from geometry.gaussians.ply import read_gaussians_ply, write_gaussians_ply
from geometry.mesh.export_config import ExportConfig
from geometry.mesh.extract import otsu_threshold
from geometry.mesh.mesh import Mesh
from geometry.mesh.projection import projected_colors
from geometry.mesh.surface import ColorFn, ExportViews, density_to_mesh, field_device, on_device

__all__ = ["PARAM_NAMES", "GaussianConfig", "GaussianModel", "covariance_3d", "quat_to_rotmat"]


@dataclass
class GaussianConfig:
    """Gaussian model settings.

    init: "sphere" (num_points uniform in a ball of init_radius), "ply" (a standard 3DGS .ply at init_path, stored
        in init_frame: "y_up" like this project's exports and DreamGaussian's, or "world") or "points" (call
        `init_from_points` yourself). init_opacity in (0,1); init_color RGB in [0,1].
    init_scale: world units, or None = the mean distance to the 3 nearest neighbours (3DGS).
    sh_degree: 0-3. radius: half-size of the cube the export looks in (world units).
    """

    num_points: int = 5000
    init: str = "sphere"
    init_radius: float = 0.6
    init_path: str | None = None
    init_frame: str = "y_up"
    init_opacity: float = 0.1
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    init_scale: float | None = None
    sh_degree: int = 0
    radius: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.init not in ("sphere", "ply", "points"):
            raise ValueError(f"geometry.init must be sphere|ply|points, got '{self.init}'")
        if self.init_frame not in ("y_up", "world"):
            raise ValueError(f"geometry.init_frame must be y_up|world, got '{self.init_frame}'")
        if self.init == "ply" and not self.init_path:
            raise ValueError("geometry.init=ply needs geometry.init_path (a 3DGS .ply file)")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"geometry.sh_degree must be 0..3, got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"geometry.init_opacity must be in (0, 1), got {self.init_opacity}")
        if self.num_points < 1 or self.init_radius <= 0 or self.radius <= 0:
            raise ValueError("geometry.num_points, init_radius and radius must be positive")


# ---------------------------------------------------------------------------------------------- math


def nearest_neighbor_distance(
    points: Float[Tensor, "N 3"], k: int = 3, chunk: int = 2048
) -> Float[Tensor, "N"]:
    """Mean distance to the k nearest other points (3DGS's initial scale), in chunks of rows."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01, device=points.device)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i : i + chunk], points)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        out.append(d.topk(k, largest=False).values.mean(-1))
    return torch.cat(out).clamp_min(1e-4)


# ---------------------------------------------------------------------------------------------- model

PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


class GaussianModel(nn.Module):
    """A set of N anisotropic 3D Gaussians (all tensors have N rows; N changes with densification)."""

    Config = GaussianConfig

    def __init__(self, cfg: GaussianConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GaussianConfig()
        cfg.validate()
        self.radius = cfg.radius
        self.sh_degree = cfg.sh_degree
        k = (cfg.sh_degree + 1) ** 2 - 1
        for name, shape in zip(PARAM_NAMES, ((0, 3), (0, 3), (0, 4), (0, 1), (0, 3), (0, k, 3)), strict=True):
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        if cfg.init == "sphere":
            gen = torch.Generator().manual_seed(cfg.seed)
            dirs = F.normalize(torch.randn(cfg.num_points, 3, generator=gen), dim=-1)
            r = cfg.init_radius * torch.rand(cfg.num_points, 1, generator=gen) ** (
                1 / 3
            )  # uniform in the ball
            colors = torch.tensor(cfg.init_color).expand(cfg.num_points, 3)
            self.init_from_points(dirs * r, colors)
        elif cfg.init == "ply":
            self.set_tensors(
                read_gaussians_ply(cfg.init_path, max_sh_degree=cfg.sh_degree, frame=cfg.init_frame)
            )

    # ---- construction -------------------------------------------------------------------------------
    def init_from_points(
        self, points: Float[Tensor, "N 3"], colors: Float[Tensor, "N 3"] | None = None
    ) -> None:
        """Isotropic Gaussians at `points` (e.g. a point cloud or another representation's surface samples)."""
        n = points.shape[0]
        colors = torch.full((n, 3), 0.5) if colors is None else colors
        if self.cfg.init_scale is not None:
            scale = torch.full((n,), self.cfg.init_scale)
        else:
            scale = nearest_neighbor_distance(points.float())
        p = self.cfg.init_opacity
        k = (self.sh_degree + 1) ** 2 - 1
        self.set_tensors(
            {
                "means": points.float(),
                "log_scales": scale.log()[:, None].repeat(1, 3),
                "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
                "opacity_logits": torch.full((n, 1), math.log(p / (1 - p))),
                "sh_dc": rgb_to_sh_dc(colors.float()),
                "sh_rest": torch.zeros(n, k, 3),
            }
        )

    def init_from_surface(self, sample_fn, n: int, radius: float | None = None, level: float = 0.5) -> None:
        """Gaussians on another representation's surface: `sample_fn(points (M,3)) -> (opacity-like (M,), rgb (M,3))`.

        Draws candidates in the cube of `radius`, keeps those with value > level (the occupied region), up to n.
        """
        radius = radius or self.radius
        gen = torch.Generator().manual_seed(self.cfg.seed)
        candidates = (torch.rand(n * 20, 3, generator=gen) * 2 - 1) * radius
        with torch.no_grad():
            value, rgb = sample_fn(candidates)
        keep = value.reshape(-1) > level
        if not keep.any():
            raise ValueError("init_from_surface: the other representation is empty (no value above level)")
        self.init_from_points(candidates[keep][:n], rgb[keep][:n])

    def set_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Replace every parameter by new rows (new Parameter objects: build optimizers after this, or use
        geometry/densify.py, which re-keys an existing optimizer)."""
        for name in PARAM_NAMES:
            setattr(self, name, nn.Parameter(tensors[name].to(getattr(self, name).device).contiguous()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints hold however many Gaussians the run had: resize first, then the normal copy.
        for name in PARAM_NAMES:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                # A new Parameter (autograd caches leaf shapes); optimizers are built after loading.
                setattr(
                    self,
                    name,
                    nn.Parameter(torch.empty_like(state_dict[key], device=getattr(self, name).device)),
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- activated values ---------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Float[Tensor, "N"]:
        return torch.sigmoid(self.opacity_logits[:, 0])

    @property
    def unit_quats(self) -> Float[Tensor, "N 4"]:
        return F.normalize(self.quats, dim=-1)

    def colors(self, camera_positions: Float[Tensor, "B 3"] | None = None) -> Float[Tensor, "B N 3"]:
        """View-dependent RGB per camera (B=1 without cameras; SH degree 0 is view-independent)."""
        if self.sh_rest.shape[1] == 0 or camera_positions is None:
            rgb = sh_to_rgb(self.sh_dc, self.sh_rest, None)[None]
            return rgb if camera_positions is None else rgb.expand(camera_positions.shape[0], -1, -1)
        dirs = F.normalize(self.means[None] - camera_positions[:, None], dim=-1)
        return sh_to_rgb(self.sh_dc, self.sh_rest, dirs)

    def normals(self) -> Float[Tensor, "N 3"]:
        """Each Gaussian's shortest axis (unoriented): the normal of the flat disc it tends to become."""
        R = quat_to_rotmat(self.quats)
        axis = self.log_scales.argmin(-1)
        return torch.gather(R, 2, axis[:, None, None].expand(-1, 3, 1))[..., 0]

    # ---- fields for mesh export ---------------------------------------------------------------------
    def density(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 1"]:
        """Opacity-weighted Gaussian density Σ_i o_i exp(-½ dᵀΣ_i⁻¹d) (DreamGaussian's mesh extraction)."""
        return gaussian_density(self, points)

    def albedo(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        """Density-weighted mean of the Gaussians' (view-independent) colours, in [0,1]; grey where empty."""
        return gaussian_albedo(self, points)

    # ---- export and stage converters -----------------------------------------------------------------
    def to_mesh(self, cfg: ExportConfig, views: ExportViews | None = None) -> Mesh:
        """Marching cubes on the opacity-weighted density (DreamGaussian), silhouette-matched level."""
        probe = (
            views.probe()
            if views is not None and cfg.threshold == "auto" and cfg.isosurface == "density"
            else None
        )
        return density_to_mesh(self, cfg, probe)

    def surface_colors(self, cfg: ExportConfig, views: ExportViews | None = None) -> ColorFn:
        """What the model renders, projected back onto the surface from views all around (depth-tested); the
        density-weighted colour only where no view sees the surface."""
        albedo = on_device(self.albedo, field_device(self, cfg))
        if views is None:
            return lambda points, normals: albedo(points)
        return projected_colors(views, cfg.bake_views, cfg.bake_resolution, albedo)

    def export_files(self, out_dir: Path, cfg: ExportConfig) -> dict[str, str]:
        """The Gaussians themselves as a standard 3DGS .ply beside the mesh."""
        tensors = {name: getattr(self, name) for name in PARAM_NAMES}
        path = write_gaussians_ply(
            Path(out_dir) / "gaussians.ply", tensors, cfg.gaussian_ply_frame, cfg.gaussian_ply_sh_degree
        )
        return {"gaussians_ply": str(path)}

    @torch.no_grad()
    def init_from(self, other: nn.Module, views: ExportViews | None = None) -> None:
        """Start a stage from another representation: copy Gaussians, or place them on a field's surface.
        views (renders of `other`) are not needed: the field is sampled directly."""
        if isinstance(other, GaussianModel):
            self.set_tensors({name: getattr(other, name).detach().clone() for name in PARAM_NAMES})
            return
        if not callable(getattr(other, "density", None)) or not callable(getattr(other, "albedo", None)):
            raise TypeError(
                f"Gaussians cannot be initialized from {type(other).__name__} (no density/albedo)"
            )
        device = next(iter(other.parameters()), torch.empty(0)).device
        radius = float(getattr(other, "radius", self.radius))
        gen = torch.Generator().manual_seed(self.cfg.seed)
        candidates = (torch.rand(self.cfg.num_points * 20, 3, generator=gen) * 2 - 1) * radius
        density = torch.cat([other.density(c.to(device)).reshape(-1).cpu() for c in candidates.split(65536)])
        # The occupied region at the level export would choose without renders (Otsu's split of the densities).
        level = otsu_threshold(density) if density.max() > 0 else float("inf")
        inside = candidates[density > max(level, 0.0)][: self.cfg.num_points]
        if len(inside) == 0:
            raise UserError(
                f"cannot place Gaussians on {type(other).__name__}: it has no surface yet (all densities ≤ {level:.3g});"
                " train the previous stage longer"
            )
        colors = torch.cat([other.albedo(c.to(device)).cpu() for c in inside.split(65536)])
        self.init_from_points(inside, colors)
        self.to(device)
