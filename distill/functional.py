"""Stateless guidance math: SDS weighting, classifier-free guidance, Perp-Neg, the SDS gradient and its injection.

Every guidance method (SDS, VSD, multi-view SDS, ...) composes these; none holds state.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

SDS_WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def sds_weight(weighting: str, alpha_bar_t: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """The SDS weighting w(t) (DreamFusion eq. 3 and its variants), same shape as alpha_bar_t.

    "sds": 1 - ab (DreamFusion); "uniform": 1; "fantasia3d": sqrt(ab)·(1 - ab) (Fantasia3D).
    """
    if weighting == "sds":
        return 1 - alpha_bar_t
    if weighting == "uniform":
        return torch.ones_like(alpha_bar_t)
    if weighting == "fantasia3d":
        return alpha_bar_t.sqrt() * (1 - alpha_bar_t)
    raise ValueError(f"unknown SDS weighting {weighting!r}: use one of {', '.join(SDS_WEIGHTINGS)}")


def classifier_free_guidance(
    eps_cond: Float[Tensor, "B C H W"], eps_uncond: Float[Tensor, "B C H W"], scale: float
) -> Float[Tensor, "B C H W"]:
    """CFG (Ho & Salimans 2022), diffusers convention: eps_u + s·(eps_c − eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def perpendicular_component(
    x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]
) -> Float[Tensor, "B C H W"]:
    """Per-sample component of x orthogonal to y: x − (<x, y> / ||y||²)·y (Perp-Neg, Armandpour et al. 2023)."""
    dot = (x * y).flatten(1).sum(-1)
    norm_sq = y.pow(2).flatten(1).sum(-1).clamp_min(1e-12)  # y = 0: nothing to project out
    return x - (dot / norm_sq).view(-1, *([1] * (x.dim() - 1))) * y


def perp_neg_guidance(
    eps_pos: Float[Tensor, "B C H W"],
    eps_uncond: Float[Tensor, "B C H W"],
    eps_neg: Float[Tensor, "B K C H W"],
    neg_weights: Float[Tensor, "B K"],
    scale: float,
) -> Float[Tensor, "B C H W"]:
    """Perp-Neg CFG: eps_u + s·(Δ_pos + Σ_k w_k·perp(Δ_neg_k, Δ_pos)), Δ = eps − eps_u.

    The weights follow REFERENCE.md / threestudio and are already negative (−(a·exp(−b·r) + c) ≤ 0), so this is
    the paper's eq. Δ_pos − Σ_k |w_k|·perp(Δ_neg_k, Δ_pos): each negative view is pushed away from, only along
    the direction orthogonal to the positive one.
    """
    delta_pos = eps_pos - eps_uncond
    combined = delta_pos
    for k in range(eps_neg.shape[1]):
        perp = perpendicular_component(eps_neg[:, k] - eps_uncond, delta_pos)
        combined = combined + neg_weights[:, k].view(-1, 1, 1, 1).to(perp) * perp
    return eps_uncond + scale * combined


def sds_gradient(
    eps_hat: Float[Tensor, "B C H W"],
    eps: Float[Tensor, "B C H W"],
    weight: Float[Tensor, "B 1 1 1"],
    clip: float | None = None,
) -> Float[Tensor, "B C H W"]:
    """DreamFusion eq. 3 without the U-Net Jacobian: w(t)·(eps_hat − eps), elementwise-clamped, NaN → 0."""
    grad = weight * (eps_hat - eps)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def injected_loss(x: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"]) -> Float[Tensor, ""]:
    """loss = 0.5·||x − sg(x − grad)||² / B, so that d loss / d x = grad / B (REFERENCE.md, "injection")."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def rescale_x0_std(
    x0_cfg: Float[Tensor, "B C H W"], x0_cond: Float[Tensor, "B C H W"], num_views: int, amount: float
) -> Float[Tensor, "B C H W"]:
    """MVDream's CFG rescale of the x0 reconstruction (Shi et al. 2023, §3.3 and appendix): each object's guided
    x0 (its num_views views together) is scaled toward the standard deviation of its non-guided x0,

        x0 ← amount · (std(x0_cond) / std(x0_cfg)) · x0_cfg + (1 − amount) · x0_cfg,

    which keeps a large CFG scale (50) from over-saturating the target. amount 0 returns x0_cfg unchanged."""
    if amount == 0:
        return x0_cfg
    per_object = lambda x: x.reshape(-1, num_views * x[0].numel())  # noqa: E731
    factor = (per_object(x0_cond).std(dim=1) + 1e-8) / (per_object(x0_cfg).std(dim=1) + 1e-8)
    factor = factor.repeat_interleave(num_views).view(-1, *([1] * (x0_cfg.dim() - 1)))
    return amount * factor * x0_cfg + (1.0 - amount) * x0_cfg
