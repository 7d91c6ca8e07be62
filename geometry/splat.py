"""Gaussian splatting renderer (3DGS, Kerbl et al. 2023): gsplat's CUDA rasterization, or an exact torch twin.

Hand-written torch twin of gsplat's `rasterization` (classic mode, pinhole), because gsplat's kernels only run
on CUDA tensors. It follows gsplat's arithmetic step by step: EWA projection with the 1.3×-FOV clamp of the
Jacobian, a 0.3 px² low-pass, opacity-aware 3.33σ boxes, α = min(0.999, o·exp(-σ)) skipped below 1/255,
front-to-back compositing that stops before T would drop to 1e-4.

CPU algorithm (sparse pairs, no dense pixel × Gaussian matrix): every visible Gaussian lists the pixels of its
box (only those can get α ≥ 1/255, so nothing is lost); the (pixel, Gaussian) pairs are sorted by pixel then
depth, and transmittance is a segmented exclusive cumulative sum of log(1-α) in float64. Memory is linear in
the number of pairs; cameras are rendered one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from geometry.cameras import Cameras, get_rays, intrinsics, ray_directions_camera
from geometry.gaussians import GaussianModel, covariance_3d
from geometry.render_output import RenderOutput

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat / 3DGS: weaker Gaussians are skipped
T_THRESHOLD = 1e-4  # compositing stops before transmittance falls to this
LOG_T_THRESHOLD = float(torch.log(torch.tensor(T_THRESHOLD, dtype=torch.float64)))
ALPHA_MAX = 0.999
BOX_SIGMAS = 3.33  # gsplat's bounding-box extent in standard deviations
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
        if self.backend not in ("auto", "cuda", "torch"):
            raise ValueError(f"renderer.backend must be auto|cuda|torch, got '{self.backend}'")
        if self.normal not in ("gaussian", "none"):
            raise ValueError(f"renderer.normal must be gaussian|none, got '{self.normal}'")


# ------------------------------------------------------------------------------------------ projection


def project_gaussians(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    viewmat: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
) -> tuple[Float[Tensor, "N 2"], Float[Tensor, "N 2 2"], Float[Tensor, "N"]]:
    """EWA splatting (Zwicker et al. 2001; 3DGS eq. 5): Σ' = J W Σ Wᵀ Jᵀ + eps2d·I.

    viewmat: world → OpenCV camera (x right, y down, z forward). Returns pixel means (x right, y down, pixel
    centres at +0.5), 2D covariances (px²) and camera depths z. J is evaluated at x/z, y/z clamped to 1.3× the
    field of view (as gsplat), so Gaussians far off-screen do not get huge footprints.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    cov_c = R @ covars @ R.T
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / z
    tx = z * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = z * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(
        -1, 2, 3
    )
    cov2d = J @ cov_c @ J.transpose(1, 2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    return mean2d, cov2d, z


def conic_of(cov2d: Float[Tensor, "N 2 2"]) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N"]]:
    """Inverse 2D covariance as (a, b, c) for a·dx² + 2b·dx·dy + c·dy², and the determinant."""
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    inv = 1.0 / torch.where(det > 0, det, torch.ones_like(det))
    return torch.stack([c * inv, -b * inv, a * inv], dim=-1), det


def screen_radii(cov2d: Float[Tensor, "N 2 2"], opacities: Float[Tensor, "N"]) -> Int[Tensor, "N 2"]:
    """gsplat's opacity-aware box half-sizes in px: ceil(min(3.33, √(2 ln(255·o)))·√Σ'_xx), same for y."""
    extend = torch.sqrt(2.0 * torch.log((opacities / ALPHA_THRESHOLD).clamp_min(1.0))).clamp(max=BOX_SIGMAS)
    rx = torch.ceil(extend * cov2d[:, 0, 0].clamp_min(0).sqrt())
    ry = torch.ceil(extend * cov2d[:, 1, 1].clamp_min(0).sqrt())
    return torch.stack([rx, ry], dim=-1).long()


# ------------------------------------------------------------------------------------------ compositing


def composite_pairs(
    pixel: Int[Tensor, "P"],
    gaussian: Int[Tensor, "P"],
    alpha: Float[Tensor, "P"],
    features: Float[Tensor, "N D"],
    num_pixels: int,
) -> tuple[Float[Tensor, "HW D"], Float[Tensor, "HW"]]:
    """Front-to-back α compositing (3DGS eq. 3) of pairs sorted by pixel, then by depth.

    T_i = Π_{j<i} (1-α_j) via a segmented exclusive cumulative sum of log(1-α) (float64, so one global
    cumulative sum over all pixels stays exact); a pair counts only while T_i·(1-α_i) > 1e-4 (gsplat).
    Returns Σ T_i α_i f_i and Σ T_i α_i per pixel.
    """
    if len(alpha) == 0:
        zero = features.sum() * 0 + alpha.sum() * 0  # keeps the graph connected when nothing is visible
        return zero + features.new_zeros(num_pixels, features.shape[1]), zero + alpha.new_zeros(num_pixels)
    log_t = torch.log1p(-alpha)
    inclusive = torch.cumsum(log_t.double(), 0)  # float64: exact across the whole pair list
    counts = torch.bincount(pixel, minlength=num_pixels)
    starts = counts.cumsum(0) - counts
    # The running sum just before each pixel's first pair: subtracting it restarts the product per pixel.
    before = inclusive[starts.clamp(max=len(alpha) - 1)] - log_t.double()[starts.clamp(max=len(alpha) - 1)]
    log_t_after = (inclusive - torch.repeat_interleave(before, counts, output_size=len(alpha))).float()
    alive = log_t_after.detach() > LOG_T_THRESHOLD  # gsplat: stop before T reaches 1e-4 (exclusive)
    weight = alpha * torch.exp(log_t_after - log_t) * alive
    out = features.new_zeros(num_pixels, features.shape[1]).index_add(
        0, pixel, weight[:, None] * features[gaussian]
    )
    acc = alpha.new_zeros(num_pixels).index_add(0, pixel, weight)
    return out, acc


def rasterize_torch(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    opacities: Float[Tensor, "N"],
    features: Float[Tensor, "N D"],
    viewmat: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Float[Tensor, "H W D"], Float[Tensor, "H W 1"], dict]:
    """One camera: the torch twin of gsplat's `rasterization(..., packed=False)` for D feature channels.

    Returns (features composited, not over a background; alpha; info with "means2d" (N,2) — retain its grad
    for densification — "radii" (N,2) long, 0 = culled, and "depths" (N,)).
    """
    mean2d, cov2d, depth = project_gaussians(means, covars, viewmat, K, width, height, eps2d)
    conic, det = conic_of(cov2d)
    radii = screen_radii(cov2d.detach(), opacities.detach())
    m = mean2d.detach()
    visible = (
        (depth.detach() >= near_plane)
        & (depth.detach() <= far_plane)
        & (det.detach() > 0)
        & (opacities.detach() >= ALPHA_THRESHOLD)
        & (radii > 0).any(-1)
        & (m[:, 0] + radii[:, 0] > 0)
        & (m[:, 0] - radii[:, 0] < width)
        & (m[:, 1] + radii[:, 1] > 0)
        & (m[:, 1] - radii[:, 1] < height)
    )
    radii = radii * visible[:, None]
    ids = visible.nonzero()[:, 0]
    ids = ids[torch.argsort(depth.detach()[ids], stable=True)]  # front to back
    # Pixels whose centre j + 0.5 lies in [m - r, m + r]; outside that box α < 1/255 (r ≥ the opacity-aware
    # extent in σ along each axis), so these pairs are all gsplat could composite.
    r = radii[ids].to(m.dtype)
    lo = torch.ceil(m[ids] - r - 0.5).long()
    hi = torch.floor(m[ids] + r - 0.5).long()
    x0, y0 = lo[:, 0].clamp(0, width), lo[:, 1].clamp(0, height)
    w = (hi[:, 0].clamp(max=width - 1) - x0 + 1).clamp_min(0)
    h = (hi[:, 1].clamp(max=height - 1) - y0 + 1).clamp_min(0)
    count = w * h
    total = int(count.sum())
    owner = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), count, output_size=total)
    local = torch.arange(total, device=ids.device) - torch.repeat_interleave(
        count.cumsum(0) - count, count, output_size=total
    )
    wo = w[owner]
    px = x0[owner] + local % wo
    py = y0[owner] + local // wo
    pixel = py * width + px
    pixel, order = torch.sort(pixel, stable=True)  # stable: depth order kept within a pixel
    px, py, g = px[order], py[order], ids[owner[order]]
    # One gather of everything a pair needs (one backward scatter instead of six).
    packed = torch.cat([mean2d, conic, opacities[:, None]], dim=-1)[g]
    dx = packed[:, 0] - (px.to(packed.dtype) + 0.5)
    dy = packed[:, 1] - (py.to(packed.dtype) + 0.5)
    sigma = 0.5 * (packed[:, 2] * dx * dx + packed[:, 4] * dy * dy) + packed[:, 3] * dx * dy
    alpha = (packed[:, 5] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    feat, acc = composite_pairs(pixel, g, alpha, features, width * height)
    info = {"means2d": mean2d, "radii": radii, "depths": depth, "num_pairs": int(len(pixel))}
    return feat.reshape(height, width, -1), acc.reshape(height, width, 1), info


def rasterize_gsplat(means, quats, scales, opacities, features, viewmats, Ks, width, height, cfg):
    """gsplat's CUDA rasterization for C cameras at once; same outputs as the twin (batched)."""
    from gsplat import rasterization  # CUDA only: imported lazily (DESIGN.md §4)

    feat, alpha, info = rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=cfg.near_plane, far_plane=cfg.far_plane, eps2d=cfg.eps2d, packed=False,
    )  # fmt: skip
    return feat, alpha, info


# ------------------------------------------------------------------------------------------ renderer


class SplatRenderer(nn.Module):
    """Renders a GaussianModel into a RenderOutput (rgb over the background, opacity, depth, normal).

    Depth is Σ w·(distance along the ray) (0 where empty), like the volume renderer. After each forward,
    `last_info` holds per camera "means2d" (with retained grad in training), "radii" for densification.
    """

    Config = SplatRendererConfig

    def __init__(self, cfg: SplatRendererConfig, geometry: GaussianModel, material=None, background=None):
        super().__init__()
        cfg.validate()
        self.cfg, self.geometry, self.material, self.background = cfg, geometry, material, background
        self.last_info: list[dict] = []
        self.last_size = (0, 0)  # (height, width) of the last render

    def use_cuda(self, device: torch.device) -> bool:
        if self.cfg.backend == "torch" or device.type != "cuda":
            if self.cfg.backend == "cuda":
                raise RuntimeError(
                    "renderer.backend=cuda needs CUDA tensors: use backend=auto or torch on a CPU"
                )
            return False
        return True

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
        w2c = OPENGL_TO_OPENCV.to(cameras.c2w) @ torch.linalg.inv(cameras.c2w)
        z = (g.means @ w2c[:, 2, :3].transpose(0, 1) + w2c[:, 2, 3]).transpose(0, 1)[..., None]
        return torch.cat([rgb, normal, z], dim=-1)

    def forward(self, cameras: Cameras, shading: str | None = None, background_color=None) -> RenderOutput:
        g, H, W = self.geometry, cameras.height, cameras.width
        feats = self.features(cameras, shading)
        viewmats = OPENGL_TO_OPENCV.to(cameras.c2w) @ torch.linalg.inv(cameras.c2w)
        Ks = intrinsics(cameras).to(cameras.c2w)
        opac = g.opacities
        if self.use_cuda(g.means.device):
            out, alpha, info = rasterize_gsplat(
                g.means, g.unit_quats, g.scales, opac, feats, viewmats, Ks, W, H, self.cfg
            )
            infos = [{"means2d": info["means2d"], "radii": info["radii"], "batched": True}]
        else:
            covars = covariance_3d(g.quats, g.scales)
            outs, alphas, infos = [], [], []
            for i in range(len(cameras)):
                o, a, info = rasterize_torch(
                    g.means, covars, opac, feats[i], viewmats[i], Ks[i], W, H,
                    self.cfg.eps2d, self.cfg.near_plane, self.cfg.far_plane,
                )  # fmt: skip
                outs.append(o)
                alphas.append(a)
                infos.append(info)
            out, alpha = torch.stack(outs), torch.stack(alphas)
        if self.training and torch.is_grad_enabled():
            for info in infos:
                if info["means2d"].requires_grad:
                    info["means2d"].retain_grad()
        self.last_info, self.last_size = infos, (H, W)
        dirs_cam = ray_directions_camera(cameras)  # z = -1: |d| converts camera z into distance along the ray
        _, dirs = get_rays(cameras)
        if background_color is not None:
            bg = torch.as_tensor(background_color, dtype=out.dtype, device=out.device).expand(
                len(cameras), H, W, 3
            )
        elif self.background is not None:
            bg = self.background(dirs)
        else:
            bg = torch.ones(len(cameras), H, W, 3, dtype=out.dtype, device=out.device)
        rgb = out[..., :3] + (1.0 - alpha) * bg
        normal = out[..., 3:6] if self.cfg.normal == "gaussian" else None
        depth = out[..., 6:7] * dirs_cam.norm(dim=-1, keepdim=True)
        return RenderOutput(rgb=rgb, opacity=alpha, depth=depth, normal=normal, extras={"background": bg})
