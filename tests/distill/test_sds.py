"""SDS guidance: CFG / Perp-Neg math, the injected gradient, view-dependent embeddings, module hygiene.

These tests use a small hand-made Denoiser (a fixed nonlinear function of x_t, t and the embeddings) so the
expected gradient can be computed independently, call by call; tests/distill/test_unet_denoiser.py runs the
same checks end to end on the tiny diffusers SD / IF models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.denoiser import Denoiser, DenoiserContext
from distill.schedule import NoiseSchedule, TimestepSampler, TimestepScheduleConfig
from distill.sds import (
    SDSConfig,
    SDSGuidance,
    classifier_free_guidance,
    perp_neg_guidance,
    perpendicular_component,
)
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput

EMBED_DIM = 6


class RecordingDenoiser(Denoiser):
    """eps = tanh(x_t)·(1 + t/T) + mean_L(embedding)[:C] — depends on every input, records every call."""

    def __init__(self, space="pixel", image_size=None, channels=3):
        super().__init__()
        self.schedule = NoiseSchedule.stable_diffusion()
        self.space, self.image_size, self.channels = space, image_size, channels
        self.calls: list[dict] = []

    def encode(self, images):
        return images * 2.0 - 1.0

    def decode(self, x0):
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    def eps(self, x_t, t, hidden):
        bias = hidden.mean(1)[:, : self.channels, None, None]
        return torch.tanh(x_t) * (1.0 + t.float() / 1000.0).view(-1, 1, 1, 1) + bias

    def predict_eps(self, x_t, t, encoder_hidden_states, context=None):
        self.calls.append(
            dict(x_t=x_t.clone(), t=t.clone(), hidden=encoder_hidden_states.clone(), context=context)
        )
        return self.eps(x_t, t, encoder_hidden_states)


class AzimuthEmbeddings:
    """Stand-in PromptEmbeddings: the conditional embedding of a camera is filled with its azimuth."""

    def __init__(self, neg_weights=(-1.5, -0.5)):
        self.neg_weights = torch.tensor(neg_weights)

    def text_embeddings(self, elevation, azimuth, view_dependent=None):
        cond = azimuth.float().view(-1, 1, 1).expand(-1, 4, EMBED_DIM) / 100.0
        return cond.clone(), torch.zeros_like(cond)

    def perp_neg_embeddings(self, elevation, azimuth):
        cond, uncond = self.text_embeddings(elevation, azimuth)
        embeds = torch.stack([cond, uncond, cond + 0.7, cond - 0.3], dim=1)  # [pos, uncond, neg_a, neg_b]
        return embeds, self.neg_weights.expand(len(azimuth), 2).clone()


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


# ---- math ----------------------------------------------------------------------------------------------


def test_cfg_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    eps_c, eps_u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for s in (0.0, 1.0, 7.5, 100.0):
        # The two algebraically equal forms round differently; at s = 100 values reach ~1e2 (fp32 eps ~1e-5).
        expected = (1 - s) * eps_u + s * eps_c
        torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, s), expected, atol=1e-4, rtol=1e-5)


def test_perpendicular_component_is_orthogonal_and_complementary():
    x, y = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    perp = perpendicular_component(x, y)
    dots = (perp * y).flatten(1).sum(-1)
    torch.testing.assert_close(dots, torch.zeros(3), atol=1e-4, rtol=0)
    parallel = (x - perp).flatten(1)  # must be a multiple of y, per sample
    for b in range(3):
        coef = torch.dot(parallel[b], y[b].flatten()) / y[b].flatten().pow(2).sum()
        torch.testing.assert_close(parallel[b], coef * y[b].flatten(), atol=1e-5, rtol=1e-4)


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


# ---- the guidance, on the hand-made denoiser -----------------------------------------------------------


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_on_render_equals_independent_sds_gradient(weighting):
    """rgb.grad == VJP of (resize → encode) applied to w(t)·(eps_hat − eps) / B, eps_hat from separate calls."""
    cfg = SDSConfig(guidance_scale=7.5, weighting=weighting, timestep=TimestepScheduleConfig(per_sample=True))
    den = RecordingDenoiser(space="pixel", image_size=6)
    guidance = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(3))
    render, cams = _render(batch=3), make_cameras(10.0, [0.0, 90.0, -150.0], 1.5, 50.0, 8)
    out = guidance(render, cams, AzimuthEmbeddings(), step=100)
    out.loss.backward()

    rgb = render.rgb.detach().requires_grad_(True)
    x0 = F.interpolate(rgb.permute(0, 3, 1, 2), size=(6, 6), mode="bilinear", align_corners=False) * 2 - 1
    t, noise = _replay_t_and_noise(cfg, x0.shape, 100, 3)
    torch.testing.assert_close(out.t, t)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    torch.testing.assert_close(den.calls[0]["x_t"][:3], x_t)
    cond, uncond = AzimuthEmbeddings().text_embeddings(cams.elevation, cams.azimuth)
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
    out = guidance(render, cams, AzimuthEmbeddings(), step=0)
    out.loss.backward()
    assert len(den.calls) == 1 and den.calls[0]["x_t"].shape[0] == 2
    x0 = render.rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    t, noise = _replay_t_and_noise(cfg, x0.shape, 0, 5)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    cond, _ = AzimuthEmbeddings().text_embeddings(cams.elevation, cams.azimuth)
    grad = (1 - ab) * (den.eps(x_t, t, cond) - noise)
    # d loss / d rgb = 2 · grad / B (x0 = 2·rgb − 1, loss injects grad / B).
    expected = (2 * grad / 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(render.rgb.grad, expected, atol=1e-5, rtol=1e-4)


def test_grad_clip_clamps_each_element():
    cfg = SDSConfig(guidance_scale=100.0, grad_clip=0.05, weighting="uniform")
    den = RecordingDenoiser()  # image_size None: x0 = 2·rgb − 1, so rgb.grad = 2·grad / B
    render, cams = _render(batch=2), make_cameras(0.0, [0.0, 180.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(5))(
        render, cams, AzimuthEmbeddings(), 0
    )
    out.loss.backward()
    t, noise = _replay_t_and_noise(cfg, (2, 3, 8, 8), 0, 5)
    x_t = den.calls[0]["x_t"][:2]
    cond, uncond = AzimuthEmbeddings().text_embeddings(cams.elevation, cams.azimuth)
    eps_hat = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 100.0)
    raw = eps_hat - noise
    assert raw.abs().max() > 0.05  # the clip is active in this test
    torch.testing.assert_close(render.rgb.grad.permute(0, 3, 1, 2), 2 * raw.clamp(-0.05, 0.05) / 2)


def test_each_camera_gets_its_own_view_dependent_embedding_in_one_batched_call():
    den = RecordingDenoiser()
    render, cams = _render(batch=3), make_cameras(0.0, [0.0, 90.0, 170.0], 1.5, 50.0, 8)
    background = torch.rand(3, 8, 8, 3)
    render.extras["background"] = background
    SDSGuidance(SDSConfig(), den)(render, cams, AzimuthEmbeddings(), 0)
    assert len(den.calls) == 1  # CFG = one batched call of [cond; uncond]
    call = den.calls[0]
    assert call["hidden"].shape[0] == 6
    for b, az in enumerate([0.0, 90.0, 170.0]):
        assert torch.all(call["hidden"][b] == az / 100.0)  # cond of camera b
        assert torch.all(call["hidden"][3 + b] == 0.0)  # uncond
    ctx: DenoiserContext = call["context"]
    torch.testing.assert_close(ctx.cameras.azimuth, cams.azimuth.repeat(2))
    torch.testing.assert_close(ctx.background, background.repeat(2, 1, 1, 1))
    torch.testing.assert_close(call["x_t"][:3], call["x_t"][3:])
    torch.testing.assert_close(call["t"][:3], call["t"][3:])


def test_perp_neg_uses_four_passes_in_one_call_and_matches_math():
    cfg = SDSConfig(guidance_scale=10.0, use_perp_neg=True, weighting="uniform")
    den, prompts = RecordingDenoiser(), AzimuthEmbeddings()
    render, cams = _render(batch=2), make_cameras(0.0, [30.0, 120.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(2))(render, cams, prompts, 0)
    out.loss.backward()
    assert len(den.calls) == 1 and den.calls[0]["hidden"].shape[0] == 8
    embeds, weights = prompts.perp_neg_embeddings(cams.elevation, cams.azimuth)
    x_t, t = den.calls[0]["x_t"][:2], den.calls[0]["t"][:2]
    eps = [den.eps(x_t, t, embeds[:, k]) for k in range(4)]
    expected = perp_neg_guidance(eps[0], eps[1], torch.stack(eps[2:], 1), weights, 10.0)
    _, noise = _replay_t_and_noise(cfg, (2, 3, 8, 8), 0, 2)
    torch.testing.assert_close(
        render.rgb.grad.permute(0, 3, 1, 2), 2 * (expected - noise) / 2, atol=1e-5, rtol=1e-4
    )


def test_render_as_latent_feeds_rgb_and_opacity_at_render_resolution():
    cfg = SDSConfig(input="latent", weighting="uniform", guidance_scale=5.0)
    den = RecordingDenoiser(space="latent", image_size=64, channels=4)
    render = _render(batch=1, size=8)
    hidden_4 = AzimuthEmbeddings()
    out = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(4))(
        render, make_cameras(0.0, 0.0, 1.5, 50.0, 8), hidden_4, 0
    )
    out.loss.backward()
    x0 = torch.cat([render.rgb, render.opacity], -1).permute(0, 3, 1, 2).detach() * 2 - 1
    t, noise = _replay_t_and_noise(cfg, x0.shape, 0, 4)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(den.calls[0]["x_t"][:1], x_t)
    cond, uncond = hidden_4.text_embeddings(torch.zeros(1), torch.zeros(1))
    grad = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 5.0) - noise
    torch.testing.assert_close(render.rgb.grad.permute(0, 3, 1, 2), 2 * grad[:, :3])
    torch.testing.assert_close(render.opacity.grad.permute(0, 3, 1, 2), 2 * grad[:, 3:])
    with pytest.raises(ValueError, match="latent-space denoiser"):
        SDSGuidance(cfg, RecordingDenoiser(space="pixel"))(
            render, make_cameras(0.0, 0.0, 1.5, 50.0, 8), hidden_4, 0
        )


def test_x0_images_are_the_one_step_prediction():
    cfg = SDSConfig(guidance_scale=3.0, return_images=True)
    den = RecordingDenoiser()
    render, cams = _render(batch=2), make_cameras(0.0, [0.0, 60.0], 1.5, 50.0, 8)
    out = SDSGuidance(cfg, den)(render, cams, AzimuthEmbeddings(), 0)
    x_t, t = den.calls[0]["x_t"][:2], den.calls[0]["t"][:2]
    cond, uncond = AzimuthEmbeddings().text_embeddings(cams.elevation, cams.azimuth)
    eps_hat = classifier_free_guidance(den.eps(x_t, t, cond), den.eps(x_t, t, uncond), 3.0)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    torch.testing.assert_close(
        out.images["x0"], ((x0 + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4
    )


def test_denoiser_stays_out_of_parent_state_dict_and_parameters():
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
    assert set(system.state_dict()) == {"field.weight", "field.bias"}
    assert sum(p.numel() for p in system.parameters()) == 6
    assert isinstance(system.guidance.denoiser, Denoiser3)
    assert not system.guidance.denoiser.weight.requires_grad


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


def test_mismatched_camera_count_and_missing_model_are_clear_errors():
    with pytest.raises(ValueError, match="one camera per render"):
        SDSGuidance(SDSConfig(), RecordingDenoiser())(
            _render(batch=2), make_cameras(0.0, 0.0, 1.5, 50.0, 8), AzimuthEmbeddings(), 0
        )
    with pytest.raises(ValueError, match="pretrained_model_name_or_path"):
        SDSGuidance(SDSConfig())
