"""Splatting renderer: the analytic footprint of one Gaussian, compositing against a per-pixel reference loop
(values and gradients), and (CUDA only) the torch twin against gsplat."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from geometry.cameras import intrinsics, make_cameras, project_points
from geometry.gaussians import GaussianConfig, GaussianModel, covariance_3d
from geometry.splat import (
    OPENGL_TO_OPENCV,
    SplatRenderer,
    SplatRendererConfig,
    rasterize_gsplat,
    rasterize_torch,
)


def _model(means, log_scales, quats, opacity, rgb) -> GaussianModel:
    g = GaussianModel(GaussianConfig(num_points=1, init="points"))
    n = means.shape[0]
    g.set_tensors(
        {
            "means": means,
            "log_scales": log_scales,
            "quats": quats,
            "opacity_logits": torch.logit(opacity)[:, None],
            "sh_dc": (rgb - 0.5) / 0.28209479177387814,
            "sh_rest": torch.zeros(n, 0, 3),
        }
    )
    return g


def _view(cams):
    viewmat = OPENGL_TO_OPENCV @ torch.linalg.inv(cams.c2w[0])
    return viewmat, intrinsics(cams)[0]


def test_single_gaussian_footprint_matches_analytic_projection():
    torch.manual_seed(0)
    mean = torch.tensor([[0.05, -0.03, 0.08]])
    log_scales = torch.tensor([[math.log(0.08), math.log(0.03), math.log(0.05)]])
    quat = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, -0.3, 0.1]]), dim=-1)
    opacity = torch.tensor([0.8])
    cams = make_cameras(torch.tensor([20.0]), torch.tensor([35.0]), 2.0, 45.0, 64)
    g = _model(mean, log_scales, quat, opacity, torch.tensor([[1.0, 1.0, 1.0]]))
    out = SplatRenderer(SplatRendererConfig(backend="torch"), g)(cams)
    # Independent reference: the Jacobian of cameras.project_points (autograd) at the mean, EWA + 0.3 px².
    center = project_points(cams, mean[None])[0, 0]
    J = jacobian(lambda p: project_points(cams, p[None, None])[0, 0], mean[0])
    sigma = J @ covariance_3d(quat, log_scales.exp())[0] @ J.T + 0.3 * torch.eye(2)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    d = torch.stack([xs - center[0], ys - center[1]], -1)
    expected = opacity * torch.exp(-0.5 * (d @ torch.linalg.inv(sigma) * d).sum(-1))
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    alpha = out.opacity[0, ..., 0]
    # J of the twin is the exact pinhole Jacobian, so only float32 rounding separates the two.
    assert torch.allclose(alpha, expected, atol=2e-5)
    mass = alpha.sum()
    centroid = torch.stack([(alpha * xs).sum(), (alpha * ys).sum()]) / mass
    assert torch.allclose(centroid, center, atol=0.05)  # truncation at 1/255 is symmetric: centroid = mean
    assert alpha.max() <= opacity + 1e-6 and alpha.max() > 0.6 * opacity
    # rgb over white of a white Gaussian stays white; depth is the distance to the mean where alpha dominates.
    assert torch.allclose(out.rgb, torch.ones_like(out.rgb), atol=1e-5)


def _reference_composite(mean2d, conic, depth, opac, feats, H, W):
    """Per-pixel Python loop with gsplat's rules (threshold 1/255, α ≤ 0.999, stop before T ≤ 1e-4)."""
    order = torch.argsort(depth)
    rows, alphas = [], []
    for y in range(H):
        for x in range(W):
            T, acc = torch.ones(()), torch.zeros(feats.shape[1])
            for i in order.tolist():
                dx, dy = mean2d[i, 0] - (x + 0.5), mean2d[i, 1] - (y + 0.5)
                s = 0.5 * (conic[i, 0] * dx * dx + conic[i, 2] * dy * dy) + conic[i, 1] * dx * dy
                a = torch.clamp(opac[i] * torch.exp(-s), max=0.999)
                if s < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                acc = acc + T * a * feats[i]
                T = T * (1 - a)
            rows.append(acc)
            alphas.append(1 - T)
    return torch.stack(rows).reshape(H, W, -1), torch.stack(alphas).reshape(H, W, 1)


def test_compositing_matches_per_pixel_loop_values_and_gradients():
    torch.manual_seed(1)
    n, H, W = 12, 12, 10
    means = (torch.rand(n, 3) - 0.5) * 0.5
    log_scales = torch.log(torch.rand(n, 3) * 0.08 + 0.02)
    quats = torch.randn(n, 4)
    opac = torch.rand(n) * 0.9 + 0.1
    opac[0] = 0.9995  # exercises the 0.999 clamp and early termination
    feats = torch.rand(n, 4)
    cams = make_cameras(torch.tensor([10.0]), torch.tensor([-60.0]), 1.5, 50.0, H, W)
    viewmat, K = _view(cams)
    leaves = [t.clone().requires_grad_() for t in (means, log_scales, opac, feats)]
    m, ls, o, f = leaves
    covars = covariance_3d(quats, ls.exp())
    out, alpha, info = rasterize_torch(m, covars, o, f, viewmat, K, W, H)
    from geometry.splat import conic_of, project_gaussians

    mean2d, cov2d, depth = project_gaussians(m, covars, viewmat, K, W, H)
    ref_out, ref_alpha = _reference_composite(mean2d, conic_of(cov2d)[0], depth, o, f, H, W)
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(alpha, ref_alpha, atol=1e-5)
    w = torch.rand(H, W, 5)
    grads = torch.autograd.grad((torch.cat([out, alpha], -1) * w).sum(), leaves, retain_graph=True)
    ref_grads = torch.autograd.grad((torch.cat([ref_out, ref_alpha], -1) * w).sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_torch_twin_matches_gsplat_values_and_gradients():
    torch.manual_seed(2)
    dev = "cuda"
    n, H = 2000, 64
    g = GaussianModel(GaussianConfig(num_points=n, init_radius=0.6, init_opacity=0.5)).to(dev)
    with torch.no_grad():
        g.sh_dc.copy_(torch.randn(n, 3, device=dev))
        g.quats.copy_(torch.randn(n, 4, device=dev))
    cams = make_cameras(torch.tensor([15.0, -5.0]), torch.tensor([30.0, 150.0]), 2.4, 45.0, H).to(dev)
    renders = {}
    for backend in ("torch", "cuda"):
        r = SplatRenderer(SplatRendererConfig(backend=backend), g)
        g.zero_grad()
        out = r(cams, background_color=[0.2, 0.4, 0.6])
        w = torch.rand_like(out.rgb, generator=torch.Generator(dev).manual_seed(0))
        ((out.rgb * w).sum() + out.opacity.sum() + out.depth.sum()).backward()
        renders[backend] = (out, {k: p.grad.clone() for k, p in g.named_parameters() if p.grad is not None})
    (a, ga), (b, gb) = renders["torch"], renders["cuda"]
    # Values: both are float32 with the same arithmetic order up to fused-multiply-adds: ~1e-5 per pixel; 1e-4
    # leaves room for the rare pixel whose 1/255 or T = 1e-4 cutoff falls the other way by rounding.
    assert torch.allclose(a.rgb, b.rgb, atol=1e-4) and torch.allclose(a.opacity, b.opacity, atol=1e-4)
    assert torch.allclose(a.depth, b.depth, atol=1e-3)  # depth ~2.4 units: 1e-3 is ~4e-4 relative
    for name in ga:
        # Gradients: gsplat's backward recomputes T by division (float32); 1e-3 relative to the largest entry.
        scale = gb[name].abs().max().clamp_min(1e-8)
        assert ((ga[name] - gb[name]).abs().max() / scale) < 1e-3, name
    assert rasterize_gsplat is not None
