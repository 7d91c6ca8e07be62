"""Gaussian model: densify/prune keep counts and Adam state consistent; .ply round trip; export density."""

from __future__ import annotations

import torch

from geometry.densify import DensifyConfig, DensifyStrategy
from geometry.gaussians import PARAM_NAMES, GaussianConfig, GaussianModel, covariance_3d
from geometry.gaussians_io import ply_property_names, read_gaussians_ply, write_gaussians_ply


def _trained_model(n=40, sh_degree=0):
    g = GaussianModel(GaussianConfig(num_points=n, init_radius=0.5, sh_degree=sh_degree, init_opacity=0.5))
    opt = torch.optim.Adam([getattr(g, k) for k in PARAM_NAMES], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss = sum((getattr(g, k) ** 2).sum() * (i + 1) for i, k in enumerate(PARAM_NAMES))
        loss.backward()
        opt.step()
    return g, opt


def test_densify_and_prune_keep_counts_and_adam_state_consistent():
    torch.manual_seed(0)
    g, opt = _trained_model()
    n = g.num_gaussians
    cfg = DensifyConfig(
        grad_threshold=0.5, percent_dense=0.05, extent=1.0, min_opacity=0.3, max_world_size=10.0
    )
    strategy = DensifyStrategy(cfg, g)
    grads = torch.zeros(n)
    grads[:10] = 1.0  # candidates
    strategy.grad_accum.copy_(grads)
    strategy.visible_count.fill_(1.0)
    with torch.no_grad():
        g.log_scales[:5] = torch.log(torch.tensor(0.2))  # large → split
        g.log_scales[5:10] = torch.log(torch.tensor(0.01))  # small → clone
        g.opacity_logits[-4:] = -5.0  # transparent → pruned
    before = {k: getattr(g, k).detach().clone() for k in PARAM_NAMES}
    moments = {k: opt.state[getattr(g, k)]["exp_avg"].clone() for k in PARAM_NAMES}
    stats = strategy.densify_and_prune(g, opt)
    assert stats == {"cloned": 5, "split": 5, "pruned": 4, "num_gaussians": n + 5 + 5 - 4}
    assert g.num_gaussians == n + 5 + 5 - 4 and strategy.grad_accum.shape == (g.num_gaussians,)
    # Layout: survivors in order (rows 5..n-5 of the original), then clones of rows 5..9, then 10 split children.
    survivors = torch.arange(5, n - 4)
    k = len(survivors)
    for name in PARAM_NAMES:
        p = getattr(g, name)
        state = opt.state[p]
        assert any(p is q for group in opt.param_groups for q in group["params"])
        assert torch.equal(p[:k], before[name][survivors])
        assert torch.equal(state["exp_avg"][:k], moments[name][survivors])
        assert torch.all(state["exp_avg"][k:] == 0) and torch.all(state["exp_avg_sq"][k:] == 0)
        assert state["exp_avg"].shape == p.shape
    assert torch.equal(g.means[k : k + 5], before["means"][5:10])  # clones are exact copies
    children = g.log_scales[k + 5 :]
    assert torch.allclose(children.exp(), torch.full_like(children, 0.2 / 1.6))
    # Children are sampled around their parents (within a few parent scales).
    parents = before["means"][:5].repeat(2, 1)
    assert ((g.means[k + 5 :] - parents).norm(dim=-1) < 5 * 0.2 * 3**0.5).all()
    # Training continues with the edited optimizer.
    opt.zero_grad()
    (g.means**2).sum().backward()
    opt.step()


def test_max_gaussians_cap_and_opacity_reset():
    g, opt = _trained_model(n=30)
    cfg = DensifyConfig(grad_threshold=0.1, max_gaussians=33, min_opacity=0.0, max_world_size=10.0)
    strategy = DensifyStrategy(cfg, g)
    strategy.grad_accum.copy_(torch.linspace(1, 2, 30))
    strategy.visible_count.fill_(1)
    stats = strategy.densify_and_prune(g, opt)
    assert g.num_gaussians <= 33 + stats["split"] and stats["cloned"] + stats["split"] == 3
    strategy.reset_opacity(g, opt)
    assert (g.opacities <= 0.01 + 1e-6).all()
    assert torch.all(opt.state[g.opacity_logits]["exp_avg"] == 0)


def test_state_dict_with_other_counts_loads():
    a, _ = _trained_model(n=25, sh_degree=1)
    b = GaussianModel(GaussianConfig(num_points=7, sh_degree=1))
    b.load_state_dict(a.state_dict())
    for name in PARAM_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_ply_round_trip_and_standard_layout(tmp_path):
    a, _ = _trained_model(n=20, sh_degree=2)
    with torch.no_grad():
        a.sh_rest.normal_()
    tensors = {k: getattr(a, k) for k in PARAM_NAMES}
    path = write_gaussians_ply(tmp_path / "g.ply", tensors)
    header = path.read_bytes().split(b"end_header")[0].decode()
    names = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert names == ply_property_names(8) and names[:9] == [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
    ]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    back = read_gaussians_ply(path)
    for k in PARAM_NAMES:
        expected = tensors[k].detach()
        if k == "quats":
            expected = torch.nn.functional.normalize(expected, dim=-1)
        assert torch.allclose(back[k], expected, atol=1e-6), k
    # f_rest is channel-major: f_rest_0..7 are red's 8 coefficients.
    raw = torch.from_numpy(
        __import__("numpy").frombuffer(path.read_bytes()[len(header) + 11 :], "<f4").copy()
    )
    raw = raw.reshape(20, -1)
    assert torch.allclose(raw[:, 9:17], tensors["sh_rest"].detach()[:, :, 0])
    c = GaussianModel(GaussianConfig(init="ply", init_path=str(path), sh_degree=1))  # drops band 2
    assert c.sh_rest.shape == (20, 3, 3) and torch.allclose(c.sh_rest, back["sh_rest"][:, :3])


def test_density_and_albedo_match_brute_force():
    torch.manual_seed(3)
    g, _ = _trained_model(n=60)
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
    rgb = (0.5 + 0.28209479177387814 * g.sh_dc.detach()).clamp_min(0)
    expected = (w @ rgb) / w.sum(-1, keepdim=True)
    dense = w.sum(-1) > 1e-3
    assert torch.allclose(g.albedo(points)[dense], expected[dense].clamp(0, 1), atol=1e-4)
