"""SDS guidance: the injected gradient, CFG / Perp-Neg passes, view-dependent conditions, render-as-latent.

These tests use a small hand-made Denoiser (a fixed nonlinear function of x_t, t and the embeddings) so the
expected gradient can be computed independently, call by call; tests/distill/denoisers/test_diffusers_unet.py
runs the same checks end to end on the tiny diffusers SD / IF models. The CFG / Perp-Neg formulas themselves
are tested in tests/distill/test_functional.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.conditions.base import Conditioning
from distill.conditions.prompt_embeddings import PromptEmbeddings
from distill.functional import classifier_free_guidance, perp_neg_guidance
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.models import frozen_state_dict_keys
from distill.timesteps import TimestepSampler, TimestepScheduleConfig
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput
from tests.distill.guidance.stand_ins import EMBED_DIM, AzimuthCondition, RecordingDenoiser


def _render(batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, size, size, 3, generator=g).requires_grad_(True)
    opacity = torch.rand(batch, size, size, 1, generator=g).requires_grad_(True)
    return RenderOutput(rgb=rgb, opacity=opacity, depth=torch.zeros(batch, size, size, 1))


def _replay_t_and_noise(cfg: SDSConfig, shape, step, seed):
    """The draws SDSGuidance documents: t from the TimestepSampler first, then float32 noise of x0's shape."""
    g = torch.Generator().manual_seed(seed)
    t = TimestepSampler(cfg.timestep, 1000, 10000).sample(shape[0], step, generator=g)
    return t, torch.randn(shape, generator=g)


def _expected_weight(weighting, alpha_bar):
    return {
        "sds": 1 - alpha_bar,
        "uniform": torch.ones_like(alpha_bar),
        "fantasia3d": alpha_bar.sqrt() * (1 - alpha_bar),
    }[weighting]


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_on_render_equals_independent_sds_gradient(weighting):
    """rgb.grad == VJP of (resize → encode) applied to w(t)·(eps_hat − eps) / B; eps_hat by separate calls."""
    cfg = SDSConfig(guidance_scale=7.5, weighting=weighting, timestep=TimestepScheduleConfig(per_sample=True))
    den = RecordingDenoiser(space="pixel", image_size=6)
    guidance = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(3))
    render, cams = _render(batch=3), make_cameras(10.0, [0.0, 90.0, -150.0], 1.5, 50.0, 8)
    out = guidance(render, cams, AzimuthCondition(), step=100)
    assert set(out.losses) == {"guidance"} == set(SDSGuidance.loss_names)
    out.losses["guidance"].backward()

    rgb = render.rgb.detach().requires_grad_(True)
    x0 = F.interpolate(rgb.permute(0, 3, 1, 2), size=(6, 6), mode="bilinear", align_corners=False) * 2 - 1
    t, noise = _replay_t_and_noise(cfg, x0.shape, 100, 3)
    torch.testing.assert_close(out.t, t)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    torch.testing.assert_close(den.calls[0]["x_t"][:3], x_t)
    cond, uncond = AzimuthCondition().text_embeddings(cams.elevation, cams.azimuth)
    eps_hat = den.eps(x_t, t, uncond) + 7.5 * (den.eps(x_t, t, cond) - den.eps(x_t, t, uncond))
    grad = _expected_weight(weighting, ab) * (eps_hat - noise)
    (x0 * grad).sum().div(3).backward()
    torch.testing.assert_close(render.rgb.grad, rgb.grad, atol=1e-5, rtol=1e-4)
    expected_norm = grad.flatten(1).norm(dim=-1).mean()
    torch.testing.assert_close(out.grad_norm, expected_norm)


def test_guidance_scale_one_uses_only_the_conditional_pass():
    """s = 1: eps_hat = eps_c exactly, computed from ONE conditional call (no wasted unconditional pass)."""
    cfg = SDSConfig(guidance_scale=1.0, weighting="sds")
    den = RecordingDenoiser()
    guidance = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(5))
    render, cams = _render(batch=2), make_cameras(10.0, [0.0, 120.0], 1.5, 50.0, 8)
    out = guidance(render, cams, AzimuthCondition(), step=0)
    out.losses["guidance"].backward()
    assert len(den.calls) == 1 and den.calls[0]["x_t"].shape[0] == 2
    x0 = render.rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    t, noise = _replay_t_and_noise(cfg, x0.shape, 0, 5)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    cond, _ = AzimuthCondition().text_embeddings(cams.elevation, cams.azimuth)
    grad = (1 - ab) * (den.eps(x_t, t, cond) - noise)
    # d loss / d rgb = 2 · grad / B (x0 = 2·rgb − 1, loss injects grad / B).
    expected = (2 * grad / 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(render.rgb.grad, expected, atol=1e-5, rtol=1e-4)


def test_grad_clip_clamps_each_element():
    cfg = SDSConfig(guidance_scale=100.0, grad_clip=0.05, weighting="uniform")
    den = RecordingDenoiser()  # image_size None: x0 = 2·rgb − 1, so rgb.grad = 2·grad / B
    render, cams = _render(batch=2), make_cameras(0.0, [0.0, 180.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(5))(
        render, cams, AzimuthCondition(), 0
    )
    out.losses["guidance"].backward()
    t, noise = _replay_t_and_noise(cfg, (2, 3, 8, 8), 0, 5)
    x_t = den.calls[0]["x_t"][:2]
    cond, uncond = AzimuthCondition().text_embeddings(cams.elevation, cams.azimuth)
    eps_hat = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 100.0)
    raw = eps_hat - noise
    assert raw.abs().max() > 0.05  # the clip is active in this test
    torch.testing.assert_close(render.rgb.grad.permute(0, 3, 1, 2), 2 * raw.clamp(-0.05, 0.05) / 2)


def test_each_camera_gets_its_own_view_dependent_embedding_in_one_batched_call():
    den = RecordingDenoiser()
    render, cams = _render(batch=3), make_cameras(0.0, [0.0, 90.0, 170.0], 1.5, 50.0, 8)
    background = torch.rand(3, 8, 8, 3)
    render.extras["background"] = background
    SDSGuidance(SDSConfig(), den)(render, cams, AzimuthCondition(), 0)
    assert len(den.calls) == 1  # CFG = one batched call of [cond; uncond]
    call = den.calls[0]
    cond: Conditioning = call["cond"]
    assert cond.embeddings.shape[0] == 6
    for b, az in enumerate([0.0, 90.0, 170.0]):
        assert torch.all(cond.embeddings[b] == az / 100.0)  # cond of camera b
        assert torch.all(cond.embeddings[3 + b] == 0.0)  # uncond
    torch.testing.assert_close(cond.cameras.azimuth, cams.azimuth.repeat(2))
    torch.testing.assert_close(cond.background, background.repeat(2, 1, 1, 1))
    torch.testing.assert_close(call["x_t"][:3], call["x_t"][3:])
    torch.testing.assert_close(call["t"][:3], call["t"][3:])


def test_view_dependent_prompt_embeddings_reach_the_denoiser():
    """With a real PromptEmbeddings condition, camera b's pass holds the view embedding of its direction."""
    views = torch.arange(4.0).view(4, 1, 1).expand(4, 2, EMBED_DIM).clone()  # view k filled with k
    condition = PromptEmbeddings.from_tensors(
        torch.full((1, 2, EMBED_DIM), 9.0), torch.full((1, 2, EMBED_DIM), -1.0), views
    )
    den = RecordingDenoiser()
    cams = make_cameras([0.0, 0.0, 0.0, 75.0], [10.0, -90.0, 175.0, 0.0], 1.5, 50.0, 8)
    SDSGuidance(SDSConfig(), den)(_render(batch=4), cams, condition, 0)
    emb = den.calls[0]["cond"].embeddings
    assert emb[:4, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # front, side, back, overhead
    assert (emb[4:] == -1.0).all()  # the negative prompt as the unconditional


def test_perp_neg_uses_four_passes_in_one_call_and_matches_math():
    cfg = SDSConfig(guidance_scale=10.0, use_perp_neg=True, weighting="uniform")
    den, condition = RecordingDenoiser(), AzimuthCondition()
    render, cams = _render(batch=2), make_cameras(0.0, [30.0, 120.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(2))(render, cams, condition, 0)
    out.losses["guidance"].backward()
    assert len(den.calls) == 1 and den.calls[0]["cond"].embeddings.shape[0] == 8
    embeds, weights = condition.perp_neg_embeddings(cams.elevation, cams.azimuth)
    x_t, t = den.calls[0]["x_t"][:2], den.calls[0]["t"][:2]
    eps = [den.eps(x_t, t, embeds[:, k]) for k in range(4)]
    expected = perp_neg_guidance(eps[0], eps[1], torch.stack(eps[2:], 1), weights, 10.0)
    _, noise = _replay_t_and_noise(cfg, (2, 3, 8, 8), 0, 2)
    torch.testing.assert_close(
        render.rgb.grad.permute(0, 3, 1, 2), 2 * (expected - noise) / 2, atol=1e-5, rtol=1e-4
    )


def test_a_condition_configured_for_perp_neg_gets_four_passes_without_the_guidance_flag():
    condition = PromptEmbeddings.from_tensors(torch.randn(1, 2, EMBED_DIM), use_perp_neg=True)
    den = RecordingDenoiser()
    SDSGuidance(SDSConfig(guidance_scale=5.0), den)(
        _render(batch=2), make_cameras(0.0, [0.0, 150.0], 1.5, 50.0, 8), condition, 0
    )
    assert len(den.calls) == 1 and den.calls[0]["cond"].embeddings.shape[0] == 8


@pytest.mark.parametrize("latent_size, expected_size", [(None, 8), (4, 4)])
def test_render_as_latent_feeds_rgb_and_opacity_at_the_latent_size(latent_size, expected_size):
    """x0 = [rgb ‖ opacity] in [-1, 1], resized to the denoiser's latent_size (None: the render's size)."""
    cfg = SDSConfig(input="latent", weighting="uniform", guidance_scale=5.0)
    den = RecordingDenoiser(space="latent", image_size=64, channels=4, latent_size=latent_size)
    render, condition = _render(batch=1, size=8), AzimuthCondition()
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(4))(
        render, make_cameras(0.0, 0.0, 1.5, 50.0, 8), condition, 0
    )
    out.losses["guidance"].backward()
    rgb, opacity = render.rgb.detach().requires_grad_(True), render.opacity.detach().requires_grad_(True)
    x0 = torch.cat([rgb, opacity], -1).permute(0, 3, 1, 2) * 2 - 1
    if latent_size is not None:
        x0 = F.interpolate(x0, size=(latent_size, latent_size), mode="bilinear", align_corners=False)
    assert den.calls[0]["x_t"].shape == (2, 4, expected_size, expected_size)
    t, noise = _replay_t_and_noise(cfg, x0.shape, 0, 4)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    torch.testing.assert_close(den.calls[0]["x_t"][:1], x_t)
    cond, uncond = condition.text_embeddings(torch.zeros(1), torch.zeros(1))
    grad = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 5.0) - noise
    (x0 * grad).sum().backward()
    torch.testing.assert_close(render.rgb.grad, rgb.grad)
    torch.testing.assert_close(render.opacity.grad, opacity.grad)
    with pytest.raises(ValueError, match="latent-space denoiser"):
        SDSGuidance(cfg, RecordingDenoiser(space="pixel"))(
            render, make_cameras(0.0, 0.0, 1.5, 50.0, 8), condition, 0
        )


def test_x0_images_are_the_one_step_prediction():
    cfg = SDSConfig(guidance_scale=3.0, return_images=True)
    den = RecordingDenoiser()
    render, cams = _render(batch=2), make_cameras(0.0, [0.0, 60.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(7))(
        render, cams, AzimuthCondition(), 0
    )
    x_t, t = den.calls[0]["x_t"][:2], den.calls[0]["t"][:2]
    cond, uncond = AzimuthCondition().text_embeddings(cams.elevation, cams.azimuth)
    eps_hat = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 3.0)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    expected = ((x0 + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(out.images["x0"], expected, atol=1e-5, rtol=1e-4)
    # Asked per call instead of in the config: the same images; not asked: none.
    plain = SDSGuidance(SDSConfig(guidance_scale=3.0), den, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(
        plain(render, cams, AzimuthCondition(), 0, return_images=True).images["x0"], expected
    )
    assert plain(render, cams, AzimuthCondition(), 0).images == {}


def test_frozen_denoiser_is_a_submodule_left_out_of_checkpoints_and_optimizers():
    """The denoiser is registered (it moves with the system) but frozen: its keys are all frozen keys, and
    no parameter of the guidance is trainable."""

    class Denoiser3(RecordingDenoiser):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(100))

    class System(nn.Module):
        def __init__(self):
            super().__init__()
            self.field = nn.Linear(2, 2)
            self.guidance = SDSGuidance(SDSConfig(), Denoiser3())

    system = System()
    assert isinstance(system.guidance.denoiser, Denoiser3)
    assert "guidance.denoiser.weight" in system.state_dict()
    assert frozen_state_dict_keys(system) == {"guidance.denoiser.weight"}
    assert set(system.state_dict()) - frozen_state_dict_keys(system) == {"field.weight", "field.bias"}
    assert frozen_state_dict_keys(system.guidance) == set(system.guidance.state_dict())
    assert [p for p in system.guidance.parameters() if p.requires_grad] == []
    assert sum(p.numel() for p in system.parameters() if p.requires_grad) == 6
    assert system.guidance.param_groups() == []
    system.train()
    assert system.field.training and not system.guidance.denoiser.training
    system.to(torch.float64)
    assert system.guidance.denoiser.weight.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weighting="sjc"), "weighting"),
        (dict(input="normal"), "input"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
    ],
)
def test_bad_config_is_rejected_with_a_named_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SDSConfig(**kwargs)


def test_mismatched_camera_count_is_a_clear_error():
    with pytest.raises(ValueError, match="one camera per render"):
        SDSGuidance(SDSConfig(), RecordingDenoiser())(
            _render(batch=2), make_cameras(0.0, 0.0, 1.5, 50.0, 8), AzimuthCondition(), 0
        )
