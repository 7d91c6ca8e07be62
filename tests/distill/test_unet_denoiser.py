"""DiffusersDenoiser on the tiny random SD (latent) and IF (pixel) folders, and SDS end to end on both.

Expected values are computed by calling the loaded diffusers UNet / VAE directly in the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.models import ModelLoadConfig
from distill.schedule import NoiseSchedule, TimestepSampler
from distill.sds import SDSConfig, SDSGuidance, classifier_free_guidance
from distill.unet_denoiser import DiffusersDenoiser, latent_image_size
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput
from tests.fixtures.tiny_models import TEXT_DIM


class RandomViewEmbeddings:
    """Stand-in PromptEmbeddings (77 tokens × TEXT_DIM): a fixed random embedding per azimuth value."""

    def text_embeddings(self, elevation, azimuth, view_dependent=None):
        cond = torch.stack(
            [torch.randn(77, TEXT_DIM, generator=torch.Generator().manual_seed(int(a))) for a in azimuth]
        )
        return cond, torch.zeros_like(cond)


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return DiffusersDenoiser.from_pretrained(
        ModelLoadConfig(pretrained_model_name_or_path=str(tiny_sd_path), device="cpu")
    )


@pytest.fixture(scope="module")
def deepfloyd(tiny_if_path):
    return DiffusersDenoiser.from_pretrained(
        ModelLoadConfig(pretrained_model_name_or_path=str(tiny_if_path), device="cpu")
    )


def test_image_size_rule_gives_512_for_stable_diffusion():
    assert latent_image_size(64, (128, 256, 512, 512)) == 512  # SD 1.x / 2.x-base
    assert latent_image_size(96, (128, 256, 512, 512)) == 768  # SD 2.x (768-v)


def test_latent_mode_encodes_with_the_vae_mean_and_decodes_back(sd):
    assert sd.space == "latent" and sd.image_size == 8 * 2**3 and not sd.learned_variance
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
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(deepfloyd.encode(images), images * 2 - 1)
    x_t, t, hidden = torch.randn(2, 3, 16, 16), torch.tensor([10, 700]), torch.randn(2, 5, TEXT_DIM)
    raw = deepfloyd.unet(x_t, t, encoder_hidden_states=hidden).sample
    assert raw.shape[1] == 6
    torch.testing.assert_close(deepfloyd.predict_eps(x_t, t, hidden), raw[:, :3])


def test_v_prediction_output_is_converted_to_eps(sd):
    den = DiffusersDenoiser(sd.unet, NoiseSchedule.stable_diffusion("v_prediction"), vae=sd.vae)
    x_t, t, hidden = torch.randn(2, 4, 8, 8), torch.tensor([50, 900]), torch.randn(2, 5, TEXT_DIM)
    v = sd.unet(x_t, t, encoder_hidden_states=hidden).sample
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(den.predict_eps(x_t, t, hidden), ab.sqrt() * v + (1 - ab).sqrt() * x_t)


def test_unet_runs_in_its_own_dtype_and_returns_the_input_dtype(deepfloyd):
    low = DiffusersDenoiser(
        type(deepfloyd.unet).from_config(deepfloyd.unet.config).to(torch.bfloat16), deepfloyd.schedule
    )
    low.unet.load_state_dict({k: v.to(torch.bfloat16) for k, v in deepfloyd.unet.state_dict().items()})
    x_t, t, hidden = torch.randn(1, 3, 16, 16), torch.tensor([300]), torch.randn(1, 5, TEXT_DIM)
    out = low.predict_eps(x_t, t, hidden)
    assert out.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the tiny UNet's outputs are O(1).
    torch.testing.assert_close(out, deepfloyd.predict_eps(x_t, t, hidden), atol=0.1, rtol=0.05)


def _sds_reference(den, rgb, cams, step, seed, scale, to_x0):
    """Independent SDS: preprocessing with autograd, separate cond/uncond UNet calls, hand-made CFG."""
    rgb = rgb.detach().requires_grad_(True)
    x0 = to_x0(rgb)
    g = torch.Generator().manual_seed(seed)
    t = TimestepSampler(SDSConfig().timestep, 1000, 10000).sample(rgb.shape[0], step, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = den.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
    cond, uncond = RandomViewEmbeddings().text_embeddings(cams.elevation, cams.azimuth)
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
    cfg = SDSConfig(
        pretrained_model_name_or_path=str(path), device="cpu", guidance_scale=7.5, return_images=True
    )
    guidance = SDSGuidance(cfg, generator=torch.Generator().manual_seed(11))
    den = guidance.denoiser
    rgb = torch.rand(2, 32, 32, 3)
    render = RenderOutput(
        rgb=rgb.clone().requires_grad_(True),
        opacity=torch.ones(2, 32, 32, 1),
        depth=torch.zeros(2, 32, 32, 1),
    )
    cams = make_cameras(15.0, [0.0, 120.0], 1.5, 50.0, 32)
    out = guidance(render, cams, RandomViewEmbeddings(), step=0)
    out.loss.backward()

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
