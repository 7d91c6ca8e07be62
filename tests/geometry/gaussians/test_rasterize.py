"""Gaussian rasterization twin: the analytic footprint of one Gaussian, batched projection, and compositing
against a per-pixel reference loop (values and gradients)."""

from __future__ import annotations

import math

import torch
from torch.autograd.functional import jacobian

from geometry.cameras import intrinsics, make_cameras, project_points
from geometry.gaussians.functional import covariance_3d
from geometry.gaussians.rasterize import conic_of, project_gaussians, rasterize_torch, rasterize_view
from geometry.gaussians.renderer import SplatRenderer, SplatRendererConfig, world_to_opencv
from tests.geometry.gaussians.helpers import model_from


def _views(cams):
    return world_to_opencv(cams.c2w), intrinsics(cams)


def test_single_gaussian_footprint_matches_analytic_projection():
    mean = torch.tensor([[0.05, -0.03, 0.08]])
    log_scales = torch.tensor([[math.log(0.08), math.log(0.03), math.log(0.05)]])
    quat = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, -0.3, 0.1]]), dim=-1)
    opacity = torch.tensor([0.8])
    cams = make_cameras(torch.tensor([20.0]), torch.tensor([35.0]), 2.0, 45.0, 64)
    g = model_from(mean, log_scales, quat, opacity, torch.tensor([[1.0, 1.0, 1.0]]))
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
    # rgb over white of a white Gaussian stays white.
    assert torch.allclose(out.rgb, torch.ones_like(out.rgb), atol=1e-5)


def test_projection_is_batched_over_cameras():
    gen = torch.Generator().manual_seed(0)
    means = (torch.rand(15, 3, generator=gen) - 0.5) * 0.6
    covars = covariance_3d(torch.randn(15, 4, generator=gen), torch.rand(15, 3, generator=gen) * 0.05 + 0.01)
    cams = make_cameras(
        torch.tensor([10.0, -40.0, 70.0]), torch.tensor([0.0, 120.0, -100.0]), 2.0, 50.0, 20, 30
    )
    viewmats, Ks = _views(cams)
    mean2d, cov2d, depth = project_gaussians(means, covars, viewmats, Ks, 30, 20)
    assert mean2d.shape == (3, 15, 2) and cov2d.shape == (3, 15, 2, 2) and depth.shape == (3, 15)
    torch.testing.assert_close(mean2d, project_points(cams, means.expand(3, -1, -1)), atol=1e-4, rtol=0)
    camera_z = -(means[None] - cams.position[:, None]) @ cams.c2w[:, :3, 2].unsqueeze(
        -1
    )  # along the view axis
    torch.testing.assert_close(depth, camera_z[..., 0])
    for c in range(3):  # each camera alone gives its own slice
        one = project_gaussians(means, covars, viewmats[c : c + 1], Ks[c : c + 1], 30, 20)
        for batched, single in zip((mean2d, cov2d, depth), one, strict=True):
            torch.testing.assert_close(batched[c], single[0])


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
    viewmats, Ks = _views(cams)
    leaves = [t.clone().requires_grad_() for t in (means, log_scales, opac, feats)]
    m, ls, o, f = leaves
    covars = covariance_3d(quats, ls.exp())
    out, alpha, info = rasterize_torch(m, covars, o, f[None], viewmats, Ks, W, H)
    assert out.shape == (1, H, W, 4) and alpha.shape == (1, H, W, 1)
    mean2d, cov2d, depth = project_gaussians(m, covars, viewmats, Ks, W, H)
    assert torch.equal(info["means2d"], mean2d) and info["radii"].shape == (1, n, 2)
    ref_out, ref_alpha = _reference_composite(mean2d[0], conic_of(cov2d[0])[0], depth[0], o, f, H, W)
    assert torch.allclose(out[0], ref_out, atol=1e-5) and torch.allclose(alpha[0], ref_alpha, atol=1e-5)
    w = torch.rand(H, W, 5)
    grads = torch.autograd.grad((torch.cat([out[0], alpha[0]], -1) * w).sum(), leaves, retain_graph=True)
    ref_grads = torch.autograd.grad((torch.cat([ref_out, ref_alpha], -1) * w).sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_several_cameras_composite_independently_with_their_own_features():
    torch.manual_seed(2)
    n, H, W = 20, 16, 16
    means = (torch.rand(n, 3) - 0.5) * 0.6
    covars = covariance_3d(torch.randn(n, 4), torch.rand(n, 3) * 0.06 + 0.02)
    opac = torch.rand(n) * 0.8 + 0.1
    feats = torch.rand(2, n, 3)  # per-camera features (view-dependent colour)
    cams = make_cameras(torch.tensor([0.0, 45.0]), torch.tensor([30.0, 200.0]), 2.0, 45.0, H, W)
    viewmats, Ks = _views(cams)
    out, alpha, info = rasterize_torch(means, covars, opac, feats, viewmats, Ks, W, H)
    mean2d, cov2d, depth = project_gaussians(means, covars, viewmats, Ks, W, H)
    for c in range(2):
        o, a, radii, pairs = rasterize_view(mean2d[c], cov2d[c], depth[c], opac, feats[c], W, H)
        torch.testing.assert_close(out[c], o)
        torch.testing.assert_close(alpha[c], a)
        assert torch.equal(info["radii"][c], radii) and pairs > 0
    assert not torch.allclose(out[0], out[1])
    # A Gaussian behind the camera is culled: radius 0 there.
    behind = cams.position[0] * 1.5
    _, _, info2 = rasterize_torch(
        torch.cat([means, behind[None]]), torch.cat([covars, covars[:1]]), torch.cat([opac, opac[:1]]),
        torch.cat([feats, feats[:, :1]], 1), viewmats, Ks, W, H,
    )  # fmt: skip
    assert torch.all(info2["radii"][0, -1] == 0)
