"""Multi-view SDS (MVDream's x0-reconstruction form) and its CFG rescale, against the formulas written out."""

from __future__ import annotations

import pytest
import torch

from distill.conditions.base import Condition, ConditionBatch, Conditioning
from distill.denoisers.base import Denoiser
from distill.functional import rescale_x0_std
from distill.guidance.multiview import MultiViewSDSConfig, MultiViewSDSGuidance
from distill.schedule import NoiseSchedule
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput


class LinearDenoiser(Denoiser):
    """eps_hat = a·x_t + b·(text weight): cond and uncond differ, so CFG and the rescale do something."""

    space, image_size = "pixel", None

    def __init__(self, num_views: int = 4) -> None:
        super().__init__()
        self.schedule = NoiseSchedule.stable_diffusion()
        self.num_views = num_views

    def encode(self, images):
        return images * 2 - 1

    def decode(self, x0):
        return (x0 + 1) / 2

    def predict_eps(self, x_t, t, cond):
        return 0.3 * x_t + cond.embeddings.reshape(-1, 1, 1, 1)


class Weights(Condition):
    def forward(self, cameras, negatives=False):
        b = len(cameras)
        return ConditionBatch(
            Conditioning(torch.full((b, 1, 1), 0.5), cameras), Conditioning(torch.zeros(b, 1, 1), cameras)
        )


def setup(scale=1.0, rescale=0.5, views=4, objects=2, recon=True):
    cfg = MultiViewSDSConfig(guidance_scale=scale, recon_std_rescale=rescale, recon_loss=recon)
    guidance = MultiViewSDSGuidance(cfg, LinearDenoiser(views), generator=torch.Generator().manual_seed(0))
    b = views * objects
    rgb = torch.rand(b, 8, 8, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    render = RenderOutput(rgb=rgb, opacity=torch.ones(b, 8, 8, 1), depth=torch.ones(b, 8, 8, 1))
    cams = make_cameras(10.0, torch.arange(b) * 90.0, 2.0, 45.0, 8)
    return guidance, render, cams


def expected_terms(guidance, render, scale):
    """t, noise drawn as the guidance draws them (one t per object), eps_cond, eps_uncond."""
    gen = torch.Generator().manual_seed(0)
    objects = render.batch_size // guidance.num_views
    t = guidance.timesteps.sample(objects, 0, generator=gen).repeat_interleave(guidance.num_views)
    x0 = render.rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    sched = guidance.denoiser.schedule
    x_t = sched.add_noise(x0, noise, t)
    eps_c, eps_u = 0.3 * x_t + 0.5, 0.3 * x_t
    return x0, t, noise, x_t, eps_c, eps_u


def test_recon_gradient_is_x0_minus_the_reconstruction():
    guidance, render, cams = setup(scale=7.0, rescale=0.5)
    out = guidance(render, cams, Weights(), step=0)
    out.losses["guidance"].backward()
    x0, t, noise, x_t, eps_c, eps_u = expected_terms(guidance, render, 7.0)
    sched = guidance.denoiser.schedule
    eps_hat = eps_u + 7.0 * (eps_c - eps_u)
    x0_cfg, x0_cond = sched.eps_to_x0(x_t, eps_hat, t), sched.eps_to_x0(x_t, eps_c, t)
    # MVDream's rescale, per object over its 4 views: std ratio of non-guided to guided x0
    factor = torch.stack(
        [x0_cond[i : i + 4].std() / x0_cfg[i : i + 4].std() for i in (0, 4)]
    ).repeat_interleave(4)[:, None, None, None]
    x0_hat = 0.5 * factor * x0_cfg + 0.5 * x0_cfg
    expected = (x0 - x0_hat) / render.batch_size  # ∂(½||x0 − sg(x0_hat)||² / B)/∂x0
    got = render.rgb.grad.permute(0, 3, 1, 2) / 2.0  # d x0 / d rgb = 2
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.t[:4], out.t[:1].expand(4)) and torch.equal(out.t[4:], out.t[4:5].expand(4))


def test_recon_gradient_is_sds_with_weight_sqrt_one_minus_ab_over_ab():
    guidance, render, cams = setup(scale=1.0)
    guidance(render, cams, Weights(), step=0).losses["guidance"].backward()
    x0, t, noise, x_t, eps_c, _ = expected_terms(guidance, render, 1.0)
    ab = guidance.denoiser.schedule.alpha_bar(t, x_t)
    expected = ((1 - ab) / ab).sqrt() * (eps_c - noise) / render.batch_size
    assert torch.allclose(render.rgb.grad.permute(0, 3, 1, 2) / 2.0, expected, atol=1e-4, rtol=1e-3)


def test_plain_sds_form_on_the_joint_batch():
    guidance, render, cams = setup(scale=1.0, recon=False)
    guidance(render, cams, Weights(), step=0).losses["guidance"].backward()
    x0, t, noise, x_t, eps_c, _ = expected_terms(guidance, render, 1.0)
    ab = guidance.denoiser.schedule.alpha_bar(t, x_t)
    expected = (1 - ab) * (eps_c - noise) / render.batch_size
    assert torch.allclose(render.rgb.grad.permute(0, 3, 1, 2) / 2.0, expected, atol=1e-5, rtol=1e-4)


def test_rescale_is_per_object_and_zero_is_identity():
    x_cfg = torch.randn(8, 4, 3, 3)
    x_cond = torch.cat([0.5 * x_cfg[:4], 2.0 * x_cfg[4:]])
    assert torch.equal(rescale_x0_std(x_cfg, x_cond, 4, 0.0), x_cfg)
    full = rescale_x0_std(x_cfg, x_cond, 4, 1.0)
    assert torch.allclose(full, x_cond, atol=1e-5)  # amount 1: the std of the non-guided x0 exactly
    half = rescale_x0_std(x_cfg, x_cond, 4, 0.5)
    assert torch.allclose(half[:4], 0.75 * x_cfg[:4], atol=1e-5)
    assert torch.allclose(half[4:], 1.5 * x_cfg[4:], atol=1e-5)


def test_batch_must_be_whole_objects_and_perp_neg_is_refused():
    guidance, render, cams = setup(objects=1)
    short = RenderOutput(rgb=render.rgb[:3], opacity=render.opacity[:3], depth=render.depth[:3])
    with pytest.raises(ValueError, match="data.n_view=4"):
        guidance(short, cams[:3], Weights(), step=0)
    with pytest.raises(ValueError, match="use_perp_neg"):
        MultiViewSDSConfig(use_perp_neg=True)
    with pytest.raises(ValueError, match="recon_std_rescale"):
        MultiViewSDSConfig(recon_std_rescale=1.5)
