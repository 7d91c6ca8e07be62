"""SplatRenderer: rgb clamped to [0, 1], depth and normals, extras for densification, regularizers, and
(CUDA only) the torch twin against gsplat."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.cameras import make_cameras
from geometry.gaussians.densify import DensifyConfig, DensifyStrategy
from geometry.gaussians.model import GaussianConfig, GaussianModel
from geometry.gaussians.renderer import SplatRenderer, SplatRendererConfig
from tests.geometry.gaussians.helpers import model_from


def _renderer(g, **kw) -> SplatRenderer:
    return SplatRenderer(SplatRendererConfig(**{"backend": "torch", **kw}), g)


def _disc(n_extra: int = 0, rgb=(1.0, 1.0, 1.0)) -> GaussianModel:
    """One large, nearly opaque flat Gaussian at the origin facing +x (its thin axis is x), plus extras."""
    means = torch.tensor([[0.0, 0.0, 0.0]] + [[0.1 * i, 0.3, -0.2] for i in range(n_extra)])
    scales = torch.tensor([[0.005, 0.3, 0.3]] + [[0.03, 0.03, 0.03]] * n_extra)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * (1 + n_extra))
    opacity = torch.tensor([0.99] + [0.5] * n_extra)
    colours = torch.tensor([rgb] * (1 + n_extra))
    return model_from(means, scales.log(), quats, opacity, colours)


def test_rgb_is_clamped_to_unit_range_even_when_sh_colours_exceed_it():
    g = _disc(rgb=(4.0, 4.0, 4.0))  # sh_dc ≈ 12.4: the Gaussian's own colour is 4
    assert g.colors()[0, 0].min() > 3.9  # SH colours are only clamped at 0 (3DGS)
    out = _renderer(g)(make_cameras(0.0, 0.0, 2.0, 40.0, 16), background_color=torch.zeros(3))
    assert out.rgb.max() == 1.0 and out.rgb.min() >= 0.0
    assert (out.rgb[out.opacity[..., 0] > 0.3] == 1.0).all()  # unclamped these would be ≥ 4 · 0.3
    dark = _renderer(_disc(rgb=(-3.0, -3.0, -3.0)))(
        make_cameras(0.0, 0.0, 2.0, 40.0, 16), background_color=torch.zeros(3)
    )
    assert torch.all(dark.rgb == 0.0)  # negative SH colours clamp at 0 per Gaussian


def test_depth_and_normals_of_a_flat_disc():
    with torch.no_grad():
        out = _renderer(_disc())(make_cameras(0.0, 0.0, 2.0, 40.0, 15))
    centre = 7
    assert out.opacity[0, centre, centre, 0] > 0.98
    # Depth: opacity-weighted distance along the ray; at the centre pixel the disc is 2 units away.
    assert out.depth[0, centre, centre, 0] / out.opacity[0, centre, centre, 0] == pytest.approx(2.0, abs=1e-3)
    # Normal: the shortest axis (world x), flipped to face the camera on +x.
    n = out.normal[0, centre, centre] / out.opacity[0, centre, centre, 0]
    torch.testing.assert_close(n, torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    with torch.no_grad():
        back = _renderer(_disc())(make_cameras(0.0, 180.0, 2.0, 40.0, 15))
    assert back.normal[0, centre, centre, 0] < -0.98  # seen from −x, the same disc faces −x
    assert _renderer(_disc(), normal="none")(make_cameras(0.0, 0.0, 2.0, 40.0, 15)).normal is None


def test_means2d_gradient_reaches_densification_in_training():
    g = _disc(n_extra=3)
    with torch.no_grad():  # move one extra Gaussian far out of view
        g.means[3] = torch.tensor([0.0, 5.0, 0.0])
    r = _renderer(g).train()
    cams = make_cameras(0.0, torch.tensor([0.0, 90.0]), 2.0, 40.0, 16)
    out = r(cams)
    means2d, radii = out.extras["means2d"], out.extras["radii"]
    assert means2d.shape == (2, 4, 2) and radii.shape == (2, 4, 2) and means2d.retains_grad
    (out.rgb.sum() + out.opacity.sum()).backward()
    assert means2d.grad is not None and means2d.grad.abs().sum() > 0
    strategy = DensifyStrategy(DensifyConfig(), g)
    strategy.accumulate(means2d, radii, cams.width, cams.height)
    visible = (radii > 0).any(-1)
    assert not visible[:, 3].any() and visible[:, 0].all()
    torch.testing.assert_close(strategy.visible_count, visible.sum(0).float())
    scale = torch.tensor([8.0, 8.0]) * 2  # (W/2, H/2) · number of cameras
    expected = ((means2d.grad * scale).norm(dim=-1) * visible).sum(0)
    torch.testing.assert_close(strategy.grad_accum, expected)
    assert strategy.grad_accum[3] == 0 and strategy.grad_accum[:3].sum() > 0
    evaluated = r.eval()(cams)
    assert not evaluated.extras["means2d"].retains_grad  # only training renders keep it for the strategy


def test_regularizers_are_computed_from_opacity():
    r = _renderer(_disc())
    out = r(make_cameras(0.0, 0.0, 2.0, 40.0, 12))
    assert set(r.loss_names) == {"sparsity", "opaque"}
    reg = r.regularizers(out, {"sparsity", "opaque"})
    a = out.opacity
    torch.testing.assert_close(reg["sparsity"], (a * a + 0.01).sqrt().mean())
    c = a.clamp(1e-5, 1 - 1e-5)
    torch.testing.assert_close(reg["opaque"], -(c * c.log() + (1 - c) * (1 - c).log()).mean())
    assert r.regularizers(out, {"sparsity"}).keys() == {"sparsity"}
    with pytest.raises(ValueError, match="normal"):
        SplatRendererConfig(normal="smooth").validate()


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
        r = SplatRenderer(SplatRendererConfig(backend=backend), g).train()
        g.zero_grad()
        out = r(cams, background_color=torch.tensor([0.2, 0.4, 0.6], device=dev))
        w = torch.rand(out.rgb.shape, device=dev, generator=torch.Generator(dev).manual_seed(0))
        ((out.rgb * w).sum() + out.opacity.sum() + out.depth.sum()).backward()
        grads = {k: p.grad.clone() for k, p in g.named_parameters() if p.grad is not None}
        renders[backend] = (out, grads, out.extras["means2d"].grad.clone(), out.extras["radii"])
    (a, ga, ma, ra), (b, gb, mb, rb) = renders["torch"], renders["cuda"]
    # Values: both are float32 with the same arithmetic order up to fused-multiply-adds: ~1e-5 per pixel; 1e-4
    # leaves room for the rare pixel whose 1/255 or T = 1e-4 cutoff falls the other way by rounding.
    assert torch.allclose(a.rgb, b.rgb, atol=1e-4) and torch.allclose(a.opacity, b.opacity, atol=1e-4)
    assert torch.allclose(a.depth, b.depth, atol=1e-3)  # depth ~2.4 units: 1e-3 is ~4e-4 relative
    for name in ga:
        # Gradients: gsplat's backward recomputes T by division (float32); 1e-3 relative to the largest entry.
        scale = gb[name].abs().max().clamp_min(1e-8)
        assert ((ga[name] - gb[name]).abs().max() / scale) < 1e-3, name
    # The densification inputs agree too: the same view-space gradients and the same visible set.
    assert ((ma - mb).abs().max() / mb.abs().max().clamp_min(1e-8)) < 1e-3
    assert torch.equal((ra > 0).any(-1), (rb > 0).any(-1))
    assert ra.shape == rb.shape == (2, n, 2)
    assert math.isfinite(float(a.rgb.sum()))
