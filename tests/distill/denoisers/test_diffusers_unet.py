"""DiffusersDenoiser on the tiny random SD (latent) and IF (pixel) folders, and SDS end to end on both.

Expected values are computed by calling the loaded diffusers UNet / VAE directly in the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.conditions.base import Condition, ConditionBatch, Conditioning
from distill.denoisers.diffusers_unet import DiffusersDenoiser, latent_image_size
from distill.functional import classifier_free_guidance
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.models import ModelLoadConfig
from distill.schedule import NoiseSchedule
from distill.timesteps import TimestepSampler
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput
from tests.distill.custom_unet import TaggedUNet
from tests.fixtures.tiny_models import TEXT_DIM


class RandomViewCondition(Condition):
    """A Condition that is not PromptEmbeddings (77 × TEXT_DIM): a fixed random embedding per azimuth."""

    def embeddings(self, azimuth):
        cond = torch.stack(
            [torch.randn(77, TEXT_DIM, generator=torch.Generator().manual_seed(int(a))) for a in azimuth]
        )
        return cond, torch.zeros_like(cond)

    def forward(self, cameras, negatives=False):
        cond, uncond = self.embeddings(cameras.azimuth)
        return ConditionBatch(Conditioning(cond, cameras), Conditioning(uncond, cameras))


def _load(path, **kwargs):
    return DiffusersDenoiser.from_pretrained(
        ModelLoadConfig(pretrained_model_name_or_path=str(path), device="cpu", **kwargs)
    )


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return _load(tiny_sd_path)


@pytest.fixture(scope="module")
def deepfloyd(tiny_if_path):
    return _load(tiny_if_path)


def test_image_size_rule_gives_512_for_stable_diffusion():
    assert latent_image_size(64, (128, 256, 512, 512)) == 512  # SD 1.x / 2.x-base
    assert latent_image_size(96, (128, 256, 512, 512)) == 768  # SD 2.x (768-v)


def test_latent_mode_encodes_with_the_vae_mean_and_decodes_back(sd):
    assert sd.space == "latent" and sd.image_size == 8 * 2**3 and not sd.learned_variance
    assert sd.latent_size == sd.unet.config.sample_size == 8
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    latents = sd.encode(images)
    expected = sd.vae.encode(images.detach() * 2 - 1).latent_dist.mean * sd.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    latents.sum().backward()  # the VAE encoder is frozen but passes gradients to the images
    assert images.grad is not None and images.grad.abs().sum() > 0
    decoded = sd.decode(expected.detach())
    reference = ((sd.vae.decode(expected.detach() / sd.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded, reference)


def test_pixel_mode_uses_the_first_three_of_six_output_channels(deepfloyd):
    assert deepfloyd.space == "pixel" and deepfloyd.image_size == 16 and deepfloyd.learned_variance
    assert deepfloyd.latent_size is None
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(deepfloyd.encode(images), images * 2 - 1)
    x_t, t, hidden = torch.randn(2, 3, 16, 16), torch.tensor([10, 700]), torch.randn(2, 5, TEXT_DIM)
    raw = deepfloyd.unet(x_t, t, encoder_hidden_states=hidden).sample
    assert raw.shape[1] == 6
    torch.testing.assert_close(deepfloyd.predict_eps(x_t, t, Conditioning(hidden)), raw[:, :3])


def test_v_prediction_output_is_converted_to_eps(sd):
    den = DiffusersDenoiser(sd.unet, NoiseSchedule.stable_diffusion("v_prediction"), vae=sd.vae)
    x_t, t, hidden = torch.randn(2, 4, 8, 8), torch.tensor([50, 900]), torch.randn(2, 5, TEXT_DIM)
    v = sd.unet(x_t, t, encoder_hidden_states=hidden).sample
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(
        den.predict_eps(x_t, t, Conditioning(hidden)), ab.sqrt() * v + (1 - ab).sqrt() * x_t
    )


def test_unet_runs_in_its_own_dtype_and_returns_the_input_dtype(deepfloyd):
    low = DiffusersDenoiser(
        type(deepfloyd.unet).from_config(deepfloyd.unet.config).to(torch.bfloat16), deepfloyd.schedule
    )
    low.unet.load_state_dict({k: v.to(torch.bfloat16) for k, v in deepfloyd.unet.state_dict().items()})
    x_t, t, hidden = torch.randn(1, 3, 16, 16), torch.tensor([300]), torch.randn(1, 5, TEXT_DIM)
    out = low.predict_eps(x_t, t, Conditioning(hidden))
    assert out.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the tiny UNet's outputs are O(1).
    torch.testing.assert_close(out, deepfloyd.predict_eps(x_t, t, Conditioning(hidden)), atol=0.1, rtol=0.05)


def test_from_config_keeps_the_load_config_and_stays_in_eval(tiny_sd_path, sd):
    cfg = ModelLoadConfig(str(tiny_sd_path), device="cpu")
    den = DiffusersDenoiser.from_config(cfg, run=None)
    assert den.load_config is cfg and DiffusersDenoiser.Config is ModelLoadConfig
    assert DiffusersDenoiser.ground_truth(cfg, None) is None  # a real model knows no ground truth
    den.train()
    assert not den.training and not den.unet.training and not den.vae.training
    assert all(not p.requires_grad for p in den.parameters())
    x_t, t, hidden = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 5, TEXT_DIM)
    torch.testing.assert_close(
        den.predict_eps(x_t, t, Conditioning(hidden)), sd.predict_eps(x_t, t, Conditioning(hidden))
    )


def test_custom_unet_class_through_the_denoiser(tiny_sd_path, sd):
    den = _load(tiny_sd_path, component_classes={"unet": "tests.distill.custom_unet.TaggedUNet"})
    assert type(den.unet) is TaggedUNet and den.space == "latent"
    x_t, t, hidden = torch.randn(1, 4, 8, 8), torch.tensor([200]), torch.randn(1, 5, TEXT_DIM)
    torch.testing.assert_close(
        den.predict_eps(x_t, t, Conditioning(hidden)), sd.predict_eps(x_t, t, Conditioning(hidden))
    )


def test_bad_unet_class_through_the_denoiser_is_the_loader_error(tiny_sd_path):
    with pytest.raises(ValueError, match="component_classes.unet") as err:
        _load(tiny_sd_path, component_classes={"unet": "tests.distill.custom_unet.NoSuchUNet"})
    assert "\n" not in str(err.value)


def test_bad_vae_class_through_the_denoiser_is_the_loader_error(tiny_sd_path):
    with pytest.raises(ValueError, match="component_classes.vae"):
        _load(tiny_sd_path, component_classes={"vae": "no_such_package.module.VAE"})


def test_explicit_image_size_keeps_the_latent_size(sd):
    den = DiffusersDenoiser(sd.unet, sd.schedule, vae=sd.vae, image_size=128)
    assert den.image_size == 128 and den.latent_size == 8


def _sds_reference(den, rgb, cams, step, seed, scale, to_x0):
    """Independent SDS: preprocessing with autograd, separate cond/uncond UNet calls, hand-made CFG."""
    rgb = rgb.detach().requires_grad_(True)
    x0 = to_x0(rgb)
    g = torch.Generator().manual_seed(seed)
    t = TimestepSampler(SDSConfig().timestep, 1000, 10000).sample(rgb.shape[0], step, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    cond, uncond = RandomViewCondition().embeddings(cams.azimuth)
    channels = x_t.shape[1]
    with torch.no_grad():
        eps_c = den.unet(x_t, t, encoder_hidden_states=cond).sample[:, :channels]
        eps_u = den.unet(x_t, t, encoder_hidden_states=uncond).sample[:, :channels]
    grad = (1 - ab) * (classifier_free_guidance(eps_c, eps_u, scale) - noise)
    (x0 * grad).sum().div(rgb.shape[0]).backward()
    return rgb.grad, t


@pytest.mark.parametrize("model", ["sd", "deepfloyd"])
def test_sds_end_to_end_gradient_on_the_render(model, tiny_sd_path, tiny_if_path):
    path = {"sd": tiny_sd_path, "deepfloyd": tiny_if_path}[model]
    # The guidance config's shorthand names the model; the denoiser section holds the other load options.
    cfg = SDSConfig(
        pretrained_model_name_or_path=str(path),
        denoiser={"device": "cpu"},
        guidance_scale=7.5,
        return_images=True,
    )
    den = DiffusersDenoiser.from_config(ModelLoadConfig(**cfg.denoiser_section()))
    guidance = SDSGuidance(cfg, den, generator=torch.Generator().manual_seed(11))
    rgb = torch.rand(2, 32, 32, 3)
    render = RenderOutput(
        rgb=rgb.clone().requires_grad_(True),
        opacity=torch.ones(2, 32, 32, 1),
        depth=torch.zeros(2, 32, 32, 1),
    )
    cams = make_cameras(15.0, [0.0, 120.0], 1.5, 50.0, 32)
    out = guidance(render, cams, RandomViewCondition(), step=0)
    out.losses["guidance"].backward()

    size = den.image_size

    def to_x0(x):
        return den.encode(
            F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
        )

    expected, t = _sds_reference(den, rgb, cams, 0, 11, 7.5, to_x0)
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(render.rgb.grad, expected, atol=1e-5, rtol=1e-4)
    assert render.rgb.grad.abs().sum() > 0
    assert out.images["x0"].shape == (2, size, size, 3)
    assert 0 <= out.images["x0"].min() and out.images["x0"].max() <= 1


def test_render_as_latent_is_resized_to_the_latent_size(sd):
    """input="latent" on the tiny SD (latent 8², image 64²): a 32² render becomes an 8² x0, not a 32² one."""
    seen = []
    hook = sd.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        cfg = SDSConfig(input="latent", weighting="uniform", guidance_scale=5.0)
        guidance = SDSGuidance(cfg, sd, generator=torch.Generator().manual_seed(4))
        g = torch.Generator().manual_seed(5)
        rgb = torch.rand(1, 32, 32, 3, generator=g).requires_grad_(True)
        opacity = torch.rand(1, 32, 32, 1, generator=g).requires_grad_(True)
        render = RenderOutput(rgb=rgb, opacity=opacity, depth=torch.zeros(1, 32, 32, 1))
        cams = make_cameras(0.0, 30.0, 1.5, 50.0, 32)
        guidance(render, cams, RandomViewCondition(), 0).losses["guidance"].backward()
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 4, 8, 8)  # [cond; uncond] at the latent size

    # Reference: [rgb ‖ opacity] in [-1, 1], bilinearly resized to 8², noised with the replayed draws.
    rgb_ref, opacity_ref = rgb.detach().requires_grad_(True), opacity.detach().requires_grad_(True)
    x = torch.cat([rgb_ref, opacity_ref], -1).permute(0, 3, 1, 2) * 2 - 1
    x0 = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(4)
    t = TimestepSampler(cfg.timestep, 1000, 10000).sample(1, 0, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = sd.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    torch.testing.assert_close(seen[0][:1], x_t)
    cond, uncond = RandomViewCondition().embeddings(cams.azimuth)
    with torch.no_grad():
        eps_c = sd.unet(x_t, t, encoder_hidden_states=cond).sample
        eps_u = sd.unet(x_t, t, encoder_hidden_states=uncond).sample
    grad = classifier_free_guidance(eps_c, eps_u, 5.0) - noise
    (x0 * grad).sum().backward()
    torch.testing.assert_close(rgb.grad, rgb_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(opacity.grad, opacity_ref.grad, atol=1e-5, rtol=1e-4)
    assert opacity.grad.abs().sum() > 0
