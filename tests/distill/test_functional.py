"""distill.functional: SDS weighting, classifier-free guidance, Perp-Neg, the SDS gradient, its injection."""

from __future__ import annotations

import pytest
import torch

from distill.functional import (
    SDS_WEIGHTINGS,
    classifier_free_guidance,
    injected_loss,
    perp_neg_guidance,
    perpendicular_component,
    sds_gradient,
    sds_weight,
)


def test_sds_weight_values():
    ab = torch.tensor([0.0, 0.25, 0.81, 1.0])
    torch.testing.assert_close(sds_weight("sds", ab), torch.tensor([1.0, 0.75, 0.19, 0.0]))
    torch.testing.assert_close(sds_weight("uniform", ab), torch.ones(4))
    torch.testing.assert_close(sds_weight("fantasia3d", ab), torch.tensor([0.0, 0.375, 0.9 * 0.19, 0.0]))
    assert SDS_WEIGHTINGS == ("sds", "uniform", "fantasia3d")
    with pytest.raises(ValueError, match="sds, uniform, fantasia3d"):
        sds_weight("dreamfusion", ab)


def test_cfg_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    eps_c, eps_u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for s in (0.0, 1.0, 7.5, 100.0):
        # The two algebraically equal forms round differently; at s = 100 values reach ~1e2 (fp32 eps ~1e-5).
        expected = (1 - s) * eps_u + s * eps_c
        torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, s), expected, atol=1e-4, rtol=1e-5)


def test_perpendicular_component_is_orthogonal_and_complementary():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    perp = perpendicular_component(x, y)
    dots = (perp * y).flatten(1).sum(-1)
    torch.testing.assert_close(dots, torch.zeros(3), atol=1e-4, rtol=0)
    parallel = (x - perp).flatten(1)  # must be a multiple of y, per sample
    for b in range(3):
        coef = torch.dot(parallel[b], y[b].flatten()) / y[b].flatten().pow(2).sum()
        torch.testing.assert_close(parallel[b], coef * y[b].flatten(), atol=1e-5, rtol=1e-4)
    # y = 0 has nothing to project out: x comes back unchanged (no NaN from 0 / 0).
    torch.testing.assert_close(perpendicular_component(x, torch.zeros_like(y)), x)


def test_perp_neg_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    eps_pos, eps_u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    eps_neg = torch.randn(2, 2, 3, 4, 4, generator=g)
    weights = torch.tensor([[-1.2, -0.3], [0.0, -2.0]])
    out = perp_neg_guidance(eps_pos, eps_u, eps_neg, weights, 7.5)
    for b in range(2):
        d_pos = (eps_pos[b] - eps_u[b]).flatten()
        total = d_pos.clone()
        for k in range(2):
            d_neg = (eps_neg[b, k] - eps_u[b]).flatten()
            perp = d_neg - torch.dot(d_neg, d_pos) / torch.dot(d_pos, d_pos) * d_pos
            total += weights[b, k] * perp
        torch.testing.assert_close(out[b].flatten(), eps_u[b].flatten() + 7.5 * total, atol=1e-5, rtol=1e-5)
    # Zero weights reduce Perp-Neg to plain CFG; a negative weight moves eps_hat AWAY from the negative.
    zero = perp_neg_guidance(eps_pos, eps_u, eps_neg, torch.zeros(2, 2), 7.5)
    torch.testing.assert_close(zero, classifier_free_guidance(eps_pos, eps_u, 7.5))
    single = perp_neg_guidance(eps_pos, eps_u, eps_neg[:, :1], torch.full((2, 1), -1.0), 7.5)
    perp = perpendicular_component(eps_neg[:, 0] - eps_u, eps_pos - eps_u)
    assert ((single - zero) * perp).flatten(1).sum(-1).lt(0).all()


def test_sds_gradient_weights_clips_and_zeroes_non_finite():
    eps_hat = torch.tensor([[0.5, 2.0, float("nan"), float("inf")]]).view(1, 4, 1, 1)
    eps = torch.tensor([[0.25, -1.0, 0.0, 0.0]]).view(1, 4, 1, 1)
    w = torch.full((1, 1, 1, 1), 0.5)
    got = sds_gradient(eps_hat, eps, w)
    assert got.flatten().tolist() == [0.125, 1.5, 0.0, 0.0]
    # The clamp comes first: with a clip an infinite element saturates at +clip; NaN stays 0 either way.
    clipped = sds_gradient(eps_hat, eps, w, clip=1.0)
    assert clipped.flatten().tolist() == [0.125, 1.0, 0.0, 1.0]


def test_injected_loss_puts_grad_over_batch_on_x():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 4, 4, generator=g).requires_grad_(True)
    grad = torch.randn(3, 2, 4, 4, generator=g)
    loss = injected_loss(x, grad)
    torch.testing.assert_close(loss, 0.5 * grad.pow(2).sum() / 3)
    loss.backward()
    torch.testing.assert_close(x.grad, grad / 3)
