"""Gaussian rasterization (3DGS, Kerbl et al. 2023): gsplat's CUDA `rasterization`, or an exact torch twin.

Hand-written torch twin of gsplat's `rasterization` (classic mode, pinhole), because gsplat's kernels only run
on CUDA tensors. It follows gsplat's arithmetic step by step: EWA projection with the 1.3×-FOV clamp of the
Jacobian, a 0.3 px² low-pass, opacity-aware 3.33σ boxes, α = min(0.999, o·exp(-σ)) skipped below 1/255,
front-to-back compositing that stops before T would drop to 1e-4.

CPU algorithm (sparse pairs, no dense pixel × Gaussian matrix): every visible Gaussian lists the pixels of its
box (only those can get α ≥ 1/255, so nothing is lost); the (pixel, Gaussian) pairs are sorted by pixel then
depth, and transmittance is a segmented exclusive cumulative sum of log(1-α) in float64. Memory is linear in
the number of pairs; cameras are composited one at a time (projection is batched).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from geometry.functional.footprint import box_cells

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat / 3DGS: weaker Gaussians are skipped
T_THRESHOLD = 1e-4  # compositing stops before transmittance falls to this
LOG_T_THRESHOLD = float(torch.log(torch.tensor(T_THRESHOLD, dtype=torch.float64)))
ALPHA_MAX = 0.999
BOX_SIGMAS = 3.33  # gsplat's bounding-box extent in standard deviations


def project_gaussians(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
) -> tuple[Float[Tensor, "C N 2"], Float[Tensor, "C N 2 2"], Float[Tensor, "C N"]]:
    """EWA splatting (Zwicker et al. 2001; 3DGS eq. 5): Σ' = J W Σ Wᵀ Jᵀ + eps2d·I, for C cameras at once.

    viewmats: world → OpenCV camera (x right, y down, z forward). Returns pixel means (x right, y down, pixel
    centres at +0.5), 2D covariances (px²) and camera depths z. J is evaluated at x/z, y/z clamped to 1.3× the
    field of view (as gsplat), so Gaussians far off-screen do not get huge footprints.
    """
    fx, fy, cx, cy = (Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None])
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    p = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    x, y, z = p.unbind(-1)
    cov_c = R[:, None] @ covars[None] @ R.transpose(1, 2)[:, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / z
    tx = z * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = z * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1).unflatten(
        -1, (2, 3)
    )
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    return mean2d, cov2d, z


def conic_of(cov2d: Float[Tensor, "*S 2 2"]) -> tuple[Float[Tensor, "*S 3"], Float[Tensor, "*S"]]:
    """Inverse 2D covariance as (a, b, c) for a·dx² + 2b·dx·dy + c·dy², and the determinant."""
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    inv = 1.0 / torch.where(det > 0, det, torch.ones_like(det))
    return torch.stack([c * inv, -b * inv, a * inv], dim=-1), det


def screen_radii(cov2d: Float[Tensor, "*S 2 2"], opacities: Float[Tensor, "*S"]) -> Int[Tensor, "*S 2"]:
    """gsplat's opacity-aware box half-sizes in px: ceil(min(3.33, √(2 ln(255·o)))·√Σ'_xx), same for y."""
    extend = torch.sqrt(2.0 * torch.log((opacities / ALPHA_THRESHOLD).clamp_min(1.0))).clamp(max=BOX_SIGMAS)
    rx = torch.ceil(extend * cov2d[..., 0, 0].clamp_min(0).sqrt())
    ry = torch.ceil(extend * cov2d[..., 1, 1].clamp_min(0).sqrt())
    return torch.stack([rx, ry], dim=-1).long()


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
    first = starts.clamp(max=len(alpha) - 1)
    before = inclusive[first] - log_t.double()[first]
    log_t_after = (inclusive - torch.repeat_interleave(before, counts, output_size=len(alpha))).float()
    alive = log_t_after.detach() > LOG_T_THRESHOLD  # gsplat: stop before T reaches 1e-4 (exclusive)
    weight = alpha * torch.exp(log_t_after - log_t) * alive
    out = features.new_zeros(num_pixels, features.shape[1]).index_add(
        0, pixel, weight[:, None] * features[gaussian]
    )
    acc = alpha.new_zeros(num_pixels).index_add(0, pixel, weight)
    return out, acc


def visible_gaussians(
    mean2d: Float[Tensor, "N 2"],
    det: Float[Tensor, "N"],
    depth: Float[Tensor, "N"],
    radii: Int[Tensor, "N 2"],
    opacities: Float[Tensor, "N"],
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
) -> Tensor:
    """gsplat's culling: in the depth range, a valid conic, opaque enough, and a box that touches the image."""
    m = mean2d.detach()
    return (
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


def rasterize_view(
    mean2d: Float[Tensor, "N 2"],
    cov2d: Float[Tensor, "N 2 2"],
    depth: Float[Tensor, "N"],
    opacities: Float[Tensor, "N"],
    features: Float[Tensor, "N D"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Float[Tensor, "H W D"], Float[Tensor, "H W 1"], Int[Tensor, "N 2"], int]:
    """One projected camera: composited features (not over a background), alpha, radii (0 = culled), pairs."""
    conic, det = conic_of(cov2d)
    radii = screen_radii(cov2d.detach(), opacities.detach())
    visible = visible_gaussians(mean2d, det, depth, radii, opacities, width, height, near_plane, far_plane)
    radii = radii * visible[:, None]
    ids = visible.nonzero()[:, 0]
    ids = ids[torch.argsort(depth.detach()[ids], stable=True)]  # front to back
    # Pixels whose centre j + 0.5 lies in [m - r, m + r]; outside that box α < 1/255 (r ≥ the opacity-aware
    # extent in σ along each axis), so these pairs are all gsplat could composite.
    m, r = mean2d.detach()[ids], radii[ids].to(mean2d.dtype)
    lo = torch.ceil(m - r - 0.5).long()
    hi = torch.floor(m + r - 0.5).long()
    size = torch.tensor([width, height], device=lo.device)
    lo_c = torch.minimum(lo.clamp_min(0), size)
    span = torch.minimum(hi, size - 1) - lo_c + 1
    owner, cell = box_cells(lo_c, span)
    pixel = cell[:, 1] * width + cell[:, 0]
    pixel, order = torch.sort(pixel, stable=True)  # stable: depth order kept within a pixel
    px, py, g = cell[order, 0], cell[order, 1], ids[owner[order]]
    # One gather of everything a pair needs (one backward scatter instead of six).
    packed = torch.cat([mean2d, conic, opacities[:, None]], dim=-1)[g]
    dx = packed[:, 0] - (px.to(packed.dtype) + 0.5)
    dy = packed[:, 1] - (py.to(packed.dtype) + 0.5)
    sigma = 0.5 * (packed[:, 2] * dx * dx + packed[:, 4] * dy * dy) + packed[:, 3] * dx * dy
    alpha = (packed[:, 5] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    feat, acc = composite_pairs(pixel, g, alpha, features, width * height)
    return feat.reshape(height, width, -1), acc.reshape(height, width, 1), radii, int(len(pixel))


def rasterize_torch(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    opacities: Float[Tensor, "N"],
    features: Float[Tensor, "C N D"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], dict]:
    """The torch twin of gsplat's `rasterization(..., packed=False)` for D feature channels and C cameras.

    Returns (features composited, not over a background; alpha; info with "means2d" (C,N,2) — a non-leaf whose
    grad the caller may retain for densification — "radii" (C,N,2) long (0 = culled), "depths" (C,N)).
    """
    mean2d, cov2d, depth = project_gaussians(means, covars, viewmats, Ks, width, height, eps2d)
    outs, alphas, radii, pairs = [], [], [], 0
    for c in range(viewmats.shape[0]):
        o, a, r, n = rasterize_view(
            mean2d[c], cov2d[c], depth[c], opacities, features[c], width, height, near_plane, far_plane
        )
        outs.append(o)
        alphas.append(a)
        radii.append(r)
        pairs += n
    info = {"means2d": mean2d, "radii": torch.stack(radii), "depths": depth, "num_pairs": pairs}
    return torch.stack(outs), torch.stack(alphas), info


def rasterize_gsplat(
    means, quats, scales, opacities, features, viewmats, Ks, width, height, eps2d, near, far
):
    """gsplat's CUDA rasterization for C cameras at once; same outputs as the twin."""
    from gsplat import rasterization  # CUDA only: imported lazily (DESIGN.md §4)

    feat, alpha, info = rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, packed=False,
    )  # fmt: skip
    return feat, alpha, {"means2d": info["means2d"], "radii": info["radii"]}
