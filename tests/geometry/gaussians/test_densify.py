"""Adaptive density control: densify/prune keep counts and Adam state consistent; view-space gradients
accumulate from a render's extras."""

from __future__ import annotations

import torch

from geometry.gaussians.densify import DensifyConfig, DensifyStrategy
from geometry.gaussians.model import PARAM_NAMES
from tests.geometry.gaussians.helpers import trained_model


def test_densify_and_prune_keep_counts_and_adam_state_consistent():
    torch.manual_seed(0)
    g, opt = trained_model()
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
    g, opt = trained_model(n=30)
    cfg = DensifyConfig(grad_threshold=0.1, max_gaussians=33, min_opacity=0.0, max_world_size=10.0)
    strategy = DensifyStrategy(cfg, g)
    strategy.grad_accum.copy_(torch.linspace(1, 2, 30))
    strategy.visible_count.fill_(1)
    stats = strategy.densify_and_prune(g, opt)
    assert g.num_gaussians <= 33 + stats["split"] and stats["cloned"] + stats["split"] == 3
    strategy.reset_opacity(g, opt)
    assert (g.opacities <= 0.01 + 1e-6).all()
    assert torch.all(opt.state[g.opacity_logits]["exp_avg"] == 0)


def test_accumulate_scales_view_space_gradients_and_counts_visible_cameras():
    g, _ = trained_model(n=4)
    strategy = DensifyStrategy(DensifyConfig(), g)
    means2d = torch.zeros(2, 4, 2, requires_grad=True)  # (C, N, 2) as in a render's extras
    (
        means2d * torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    ).sum().backward()  # grad (1, 0) in cam 0, (0, 2) in cam 1
    radii = torch.tensor([[[3, 3], [0, 0], [5, 1], [0, 0]], [[2, 2], [4, 7], [0, 0], [0, 0]]])
    strategy.accumulate(means2d, radii, width=64, height=32)
    # ‖grad · (W/2, H/2) · C‖ per visible camera: cam 0 → 1·32·2 = 64, cam 1 → 2·16·2 = 64.
    torch.testing.assert_close(strategy.grad_accum, torch.tensor([128.0, 64.0, 64.0, 0.0]))
    torch.testing.assert_close(strategy.visible_count, torch.tensor([2.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(strategy.max_radii, torch.tensor([3.0, 7.0, 5.0, 0.0]))
    no_grad = torch.zeros(2, 4, 2)
    strategy.accumulate(no_grad, radii, 64, 32)  # nothing was backpropagated: nothing changes
    torch.testing.assert_close(strategy.visible_count, torch.tensor([2.0, 1.0, 1.0, 0.0]))


def test_statistics_travel_with_checkpoints_of_other_sizes():
    g, _ = trained_model(n=6)
    strategy = DensifyStrategy(DensifyConfig(), g)
    strategy.grad_accum.copy_(torch.arange(6.0))
    other = DensifyStrategy(DensifyConfig(), trained_model(n=3)[0])
    other.load_state_dict(strategy.state_dict())
    assert torch.equal(other.grad_accum, torch.arange(6.0))
