"""Volume-rendering math of the torch twin: stratified bins and compositing weights (Beer–Lambert, nerfacc)."""

from __future__ import annotations

import nerfacc
import pytest
import torch

from geometry.nerf.sampling import composite_weights, stratified_bins


def test_stratified_bins_tile_the_interval_and_jitter_stays_in_its_bin():
    near, far = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 2.0])
    t_starts, t_ends, mid = stratified_bins(near, far, 4, jitter=False)
    torch.testing.assert_close(t_starts[1], torch.tensor([1.0, 1.5, 2.0, 2.5]))
    torch.testing.assert_close(t_ends[:, -1], far)
    torch.testing.assert_close(t_starts[:, 1:], t_ends[:, :-1])  # contiguous bins
    torch.testing.assert_close(mid, (t_starts + t_ends) / 2)
    torch.manual_seed(0)
    _, _, jittered = stratified_bins(near, far, 4, jitter=True)
    assert ((jittered >= t_starts) & (jittered <= t_ends)).all() and not torch.equal(jittered, mid)


def test_slab_transmittance_exact():
    # bins aligned with the slab [0.25, 0.75] on [0, 1]: T after the slab = exp(-σ·0.5) (Beer–Lambert)
    t_starts, t_ends, t_mid = stratified_bins(torch.zeros(3), torch.ones(3), 40, jitter=False)
    sigma = torch.tensor([0.5, 2.0, 7.0])[:, None]
    sigmas = sigma * ((t_mid > 0.25) & (t_mid < 0.75)).float()
    w, trans, _ = composite_weights(sigmas, t_starts, t_ends)
    expect = torch.exp(-sigma[:, 0] * 0.5)
    torch.testing.assert_close(1.0 - w.sum(-1), expect, atol=1e-4, rtol=0)
    torch.testing.assert_close(trans[:, -1], expect, atol=1e-4, rtol=0)  # last bin is empty space


def test_compositing_matches_nerfacc_batched():
    g = torch.Generator().manual_seed(0)
    deltas = torch.rand(50, 32, generator=g) * 0.1
    t_ends = torch.cumsum(deltas, dim=-1)
    t_starts = t_ends - deltas
    sigmas = torch.rand(50, 32, generator=g) * 20
    ours = composite_weights(sigmas, t_starts, t_ends)
    ref = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
def test_nerfacc_packed_weights_equal_dense_compositing_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    deltas = torch.rand(64, 16, device="cuda", generator=g) * 0.1
    t_ends = torch.cumsum(deltas, -1)
    t_starts = t_ends - deltas
    sigmas = (torch.rand(64, 16, device="cuda", generator=g) * 20).requires_grad_()
    keep = torch.rand(64, 16, device="cuda", generator=g) > 0.3
    ray_idx, sample_idx = keep.nonzero(as_tuple=True)
    w_packed, _, _ = nerfacc.render_weight_from_density(
        t_starts[keep], t_ends[keep], sigmas[keep], ray_indices=ray_idx, n_rays=64
    )
    w_dense, _, _ = composite_weights(sigmas * keep, t_starts, t_ends)
    torch.testing.assert_close(
        w_packed, w_dense[ray_idx, sample_idx], atol=1e-6, rtol=1e-5
    )  # fp32 scan order
    (ga,) = torch.autograd.grad((w_packed**2).sum(), sigmas)
    (gb,) = torch.autograd.grad((w_dense[ray_idx, sample_idx] ** 2).sum(), sigmas)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
