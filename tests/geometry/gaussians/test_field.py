"""The Gaussians as a field for mesh export: opacity-weighted density and mean colour against brute force."""

from __future__ import annotations

import torch

from geometry.functional.sh import SH_C0
from geometry.gaussians.model import covariance_3d
from tests.geometry.gaussians.helpers import trained_model


def test_density_and_albedo_match_brute_force():
    torch.manual_seed(3)
    g, _ = trained_model(n=60)
    with torch.no_grad():
        g.log_scales.uniform_(-3.5, -2.0)
        g.quats.normal_()
        g.sh_dc.normal_()
    points = torch.cat([g.means.detach()[:20] + 0.02 * torch.randn(20, 3), torch.rand(200, 3) - 0.5])
    d = points[:, None] - g.means.detach()[None]
    inv = torch.linalg.inv(covariance_3d(g.quats.detach(), g.scales.detach()))
    m = torch.einsum("pni,nij,pnj->pn", d, inv, d)
    w = g.opacities.detach() * torch.exp(-0.5 * m) * (m < 9.0)  # the field's 3σ cutoff
    assert torch.allclose(g.density(points)[:, 0], w.sum(-1), atol=1e-5)
    rgb = (0.5 + SH_C0 * g.sh_dc.detach()).clamp_min(0)
    expected = (w @ rgb) / w.sum(-1, keepdim=True)
    dense = w.sum(-1) > 1e-3
    assert dense.sum() > 20
    assert torch.allclose(g.albedo(points)[dense], expected[dense].clamp(0, 1), atol=1e-4)
    empty = torch.tensor([[5.0, 5.0, 5.0]])
    assert g.density(empty).item() == 0 and torch.equal(g.albedo(empty), torch.full((1, 3), 0.5))
