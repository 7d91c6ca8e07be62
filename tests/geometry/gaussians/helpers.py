"""Small Gaussian models shared by the Gaussian tests."""

from __future__ import annotations

import torch

from geometry.functional.sh import SH_C0
from geometry.gaussians.model import PARAM_NAMES, GaussianConfig, GaussianModel


def trained_model(n: int = 40, sh_degree: int = 0) -> tuple[GaussianModel, torch.optim.Adam]:
    """A model after three Adam steps (so every parameter has optimizer moments)."""
    g = GaussianModel(GaussianConfig(num_points=n, init_radius=0.5, sh_degree=sh_degree, init_opacity=0.5))
    opt = torch.optim.Adam([getattr(g, k) for k in PARAM_NAMES], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss = sum((getattr(g, k) ** 2).sum() * (i + 1) for i, k in enumerate(PARAM_NAMES))
        loss.backward()
        opt.step()
    return g, opt


def model_from(means, log_scales, quats, opacity, rgb, sh_rest=None) -> GaussianModel:
    """Gaussians with exactly these tensors (opacity (N,) in (0, 1), rgb (N, 3) the degree-0 colour)."""
    n = means.shape[0]
    rest = torch.zeros(n, 0, 3) if sh_rest is None else sh_rest
    degree = round((rest.shape[1] + 1) ** 0.5) - 1
    g = GaussianModel(GaussianConfig(num_points=1, init="points", sh_degree=degree))
    g.set_tensors(
        {
            "means": means,
            "log_scales": log_scales,
            "quats": quats,
            "opacity_logits": torch.logit(opacity)[:, None],
            "sh_dc": (rgb - 0.5) / SH_C0,
            "sh_rest": rest,
        }
    )
    return g
