"""VSD guidance with the exact particle score: equal to SDS for one particle, the mixture score for several.

The learned particle scores (LoRA on a diffusers UNet, a UNet from scratch) are tested in test_particle_models.py.
"""

from __future__ import annotations

import pytest
import torch

from distill.denoisers.oracle import posterior_mean_x0
from distill.guidance.particle_score import ExactParticleScore, ParticleModelConfig, Particles
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.guidance.vsd import VSDConfig, VSDGuidance
from distill.timesteps import TimestepScheduleConfig
from geometry.cameras import Cameras, make_cameras
from geometry.render_output import RenderOutput
from tests.distill.guidance.stand_ins import AzimuthCondition, RecordingDenoiser


def _render(batch, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(batch, size, size, 3, generator=g).requires_grad_(True)
    return RenderOutput(
        rgb=rgb, opacity=torch.ones(batch, size, size, 1), depth=torch.zeros(batch, size, size, 1)
    )


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_one_particle_with_the_exact_score_is_sds(scale):
    """Same t and noise (same seed): the VSD gradient on the render equals the SDS gradient to float tolerance."""
    timestep = TimestepScheduleConfig(per_sample=True)
    cams = make_cameras(10.0, [0.0, 120.0, -60.0], 1.5, 50.0, 8)
    grads = []
    for guidance in (
        SDSGuidance(SDSConfig(guidance_scale=scale, timestep=timestep), RecordingDenoiser(), generator=None),
        VSDGuidance(
            VSDConfig(guidance_scale=scale, timestep=timestep, particle_score="exact"), RecordingDenoiser()
        ),
    ):
        guidance.generator = torch.Generator().manual_seed(5)
        render = _render(3)
        out = guidance(render, cams, AzimuthCondition(), step=10)
        out.losses["guidance"].backward()
        grads.append(render.rgb.grad)
        if isinstance(guidance, VSDGuidance):
            assert set(out.losses) == {"guidance", "particle"} and float(out.losses["particle"]) == 0.0
    assert grads[0].abs().max() > 1e-3  # a real gradient, not two zeros
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_exact_score_of_two_particles_is_the_tweedie_score_of_their_renders_at_each_camera():
    n, views = 2, 3
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n * views, 3, 4, 4, generator=g) * 2 - 1
    cams = Cameras.cat([make_cameras(0.0, [0.0, 90.0, 180.0], 2.0, 45.0, 4)] * n)
    score = ExactParticleScore(RecordingDenoiser().schedule)
    particles = Particles(x0, n, cams, AzimuthCondition()(cams))
    t = torch.tensor([300, 300, 300, 700, 700, 700])
    noise = torch.randn(x0.shape, generator=g)
    x_t = score.schedule.add_noise(x0, noise, t)
    eps = score.predict_eps(x_t, t, particles)
    ab = score.schedule.alphas_cumprod[t].float()
    for i in range(n * views):
        b = i % views
        candidates = torch.stack([x0[b], x0[views + b]])[
            :, None
        ]  # (2, 1, C, h, w): both particles at camera b
        x0_hat = posterior_mean_x0(
            x_t[i : i + 1], candidates, torch.log(torch.full((1, 2), 0.5)), ab[i : i + 1]
        )
        expected = (x_t[i] - ab[i].sqrt() * x0_hat[0]) / (1 - ab[i]).sqrt()
        torch.testing.assert_close(eps[i], expected, atol=1e-5, rtol=1e-4)
    # Particles far apart at low noise: each sample's score is its own noise (the other particle is implausible).
    far = torch.cat([torch.full((views, 3, 4, 4), -1.0), torch.full((views, 3, 4, 4), 1.0)])
    t_low = torch.full((n * views,), 20)
    x_t = score.schedule.add_noise(far, noise, t_low)
    eps = score.predict_eps(x_t, t_low, Particles(far, n, cams, AzimuthCondition()(cams)))
    torch.testing.assert_close(eps, noise, atol=1e-3, rtol=1e-3)


def test_particles_must_split_evenly():
    cams = make_cameras(0.0, [0.0, 90.0, 180.0], 2.0, 45.0, 4)
    with pytest.raises(ValueError, match="cannot be split into 2 particles"):
        Particles(torch.zeros(3, 3, 4, 4), 2, cams, AzimuthCondition()(cams))


def test_lora_needs_a_unet_and_names_the_alternatives():
    with pytest.raises(ValueError, match="particle_score=exact or particle_score=unet"):
        VSDGuidance(VSDConfig(particle_score="lora"), RecordingDenoiser())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"particle_score": "gaussian"}, "particle_score='gaussian' is unknown"),
        ({"lora_rank": 0}, "lora_rank=0"),
        ({"uncond_dropout": 1.0}, "uncond_dropout=1.0"),
        ({"t_min": 0.5, "t_max": 0.5}, "t_min < t_max"),
        ({"lr": 0.0}, "particle.lr=0.0"),
    ],
)
def test_bad_vsd_config_is_rejected_with_a_named_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VSDConfig(**kwargs) if "particle_score" in kwargs else ParticleModelConfig(**kwargs)


def test_vsd_defaults_are_prolificdreamers():
    cfg, particle = VSDConfig(), ParticleModelConfig()
    assert cfg.guidance_scale == 7.5 and cfg.particle_score == "lora" and particle.guidance_scale == 1.0
    assert particle.lora_rank == 4 and particle.lora_target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert particle.lr == 1e-4 and particle.uncond_dropout == 0.1
    assert VSDGuidance.default_loss_weights == {"particle": 1.0}
