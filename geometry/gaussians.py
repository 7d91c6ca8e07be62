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

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from geometry.background import sh_basis_degree3

SH_C0 = 0.28209479177387814  # Y_00: f_dc = (rgb - 0.5) / SH_C0 (3DGS .ply convention)


@dataclass
class GaussianConfig:
    """Gaussian model settings.

    init: "sphere" (num_points uniform in a ball of init_radius), "ply" (a standard 3DGS .ply at init_path) or
        "points" (call `init_from_points` yourself). init_opacity in (0,1); init_color RGB in [0,1].
    init_scale: world units, or None = the mean distance to the 3 nearest neighbours (3DGS).
    sh_degree: 0-3. radius: half-size of the cube the export looks in (world units).
    """

    num_points: int = 5000
    init: str = "sphere"
    init_radius: float = 0.6
    init_path: str | None = None
    init_opacity: float = 0.1
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    init_scale: float | None = None
    sh_degree: int = 0
    radius: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.init not in ("sphere", "ply", "points"):
            raise ValueError(f"geometry.init must be sphere|ply|points, got '{self.init}'")
        if self.init == "ply" and not self.init_path:
            raise ValueError("geometry.init=ply needs geometry.init_path (a 3DGS .ply file)")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"geometry.sh_degree must be 0..3, got {self.sh_degree}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"geometry.init_opacity must be in (0, 1), got {self.init_opacity}")
        if self.num_points < 1 or self.init_radius <= 0 or self.radius <= 0:
            raise ValueError("geometry.num_points, init_radius and radius must be positive")


# ---------------------------------------------------------------------------------------------- math


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices of (w, x, y, z) quaternions (normalized here; 3DGS / gsplat convention)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """Σ = R S Sᵀ Rᵀ (3DGS eq. 6)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(1, 2)


def sh_to_rgb(
    sh_dc: Float[Tensor, "N 3"], sh_rest: Float[Tensor, "N K 3"], dirs: Float[Tensor, "*B N 3"] | None
) -> Float[Tensor, "*B N 3"]:
    """Colour = max(0, 0.5 + Σ_lm c_lm Y_lm(dir)) (3DGS); dirs are unit vectors from the camera to the Gaussian."""
    rgb = SH_C0 * sh_dc
    if sh_rest.shape[1] > 0 and dirs is not None:
        basis = sh_basis_degree3(dirs)[..., 1 : 1 + sh_rest.shape[1]]  # (*B, N, K)
        rgb = rgb + (basis[..., None] * sh_rest).sum(-2)
    return (rgb + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    return (rgb - 0.5) / SH_C0


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
            from geometry.gaussians_io import read_gaussians_ply

            self.set_tensors(read_gaussians_ply(cfg.init_path, max_sh_degree=cfg.sh_degree))

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
    @torch.no_grad()
    def _field(self, points: Float[Tensor, "P 3"], cutoff: float = 3.0) -> tuple[Tensor, Tensor]:
        """(density (P,), weighted colour sum (P,3)) from the Gaussians within `cutoff` σ of each point."""
        index = self._spatial_index(cutoff)
        cells, table, lo, size = index
        res = table.shape[0]
        ijk = ((points - lo) / size).floor().long()
        inside = ((ijk >= 0) & (ijk < res)).all(-1)
        ijk = ijk.clamp(0, res - 1)
        cand = table[ijk[:, 0], ijk[:, 1], ijk[:, 2]]  # (P, K) Gaussian ids, -1 = none
        valid = (cand >= 0) & inside[:, None]
        g = cand.clamp_min(0)
        d = points[:, None, :] - self.means[g]  # (P, K, 3)
        # Mahalanobis distance in the Gaussian's frame: (Rᵀ d) / s.
        R = quat_to_rotmat(self.quats)[g]
        local = (R.transpose(-1, -2) @ d[..., None])[..., 0] / self.scales[g]
        m2 = (local * local).sum(-1)
        # Truncated at `cutoff` σ (Mahalanobis): exactly the Gaussians the index lists, whatever the cell size.
        w = self.opacities[g] * torch.exp(-0.5 * m2) * (valid & (m2 < cutoff * cutoff))
        rgb = sh_to_rgb(self.sh_dc, self.sh_rest, None)[g]
        return w.sum(-1), (w[..., None] * rgb).sum(-2)

    def _spatial_index(self, cutoff: float) -> tuple:
        """Coarse grid over the Gaussians' cutoff boxes: table (r,r,r,K) of Gaussian ids (-1 padded). Cached per
        parameter version, because export queries the field chunk by chunk."""
        key = (self.means._version, self.log_scales._version, self.num_gaussians, cutoff)
        cached = getattr(self, "_index_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        extent = cutoff * self.scales.max(-1).values  # (N,) bounding half-size
        lo = self.means.min(0).values.min() - extent.max()
        hi = self.means.max(0).values.max() + extent.max()
        res = 48
        size = float(hi - lo) / res
        cmin = ((self.means - extent[:, None] - lo) / size).floor().long().clamp(0, res - 1)
        cmax = ((self.means + extent[:, None] - lo) / size).floor().long().clamp(0, res - 1)
        span = cmax - cmin + 1
        count = span.prod(-1)
        gid = torch.repeat_interleave(torch.arange(self.num_gaussians), count)
        local = torch.arange(int(count.sum())) - torch.repeat_interleave(count.cumsum(0) - count, count)
        sx, sy = span[gid, 0], span[gid, 1]
        cell = cmin[gid] + torch.stack([local % sx, (local // sx) % sy, local // (sx * sy)], -1)
        flat = (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]
        order = torch.argsort(flat, stable=True)
        flat, gid = flat[order], gid[order]
        per_cell = torch.bincount(flat, minlength=res**3)
        k = max(int(per_cell.max()), 1)
        slot = torch.arange(len(flat)) - torch.repeat_interleave(per_cell.cumsum(0) - per_cell, per_cell)
        table = torch.full((res**3, k), -1, dtype=torch.long)
        table[flat, slot] = gid
        result = (None, table.reshape(res, res, res, k), lo, size)
        self._index_cache = (key, result)
        return result

    def density(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 1"]:
        """Opacity-weighted Gaussian density Σ_i o_i exp(-½ dᵀΣ_i⁻¹d) (DreamGaussian's mesh extraction)."""
        out = [self._field(points[i : i + 4096])[0] for i in range(0, len(points), 4096)]
        return torch.cat(out)[:, None]

    def albedo(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        """Density-weighted mean of the Gaussians' (view-independent) colours, in [0,1]; grey where empty."""
        out = []
        for i in range(0, len(points), 4096):
            w, c = self._field(points[i : i + 4096])
            out.append(
                torch.where(w[:, None] > 1e-8, c / w.clamp_min(1e-8)[:, None], torch.full_like(c, 0.5))
            )
        return torch.cat(out).clamp(0, 1)
