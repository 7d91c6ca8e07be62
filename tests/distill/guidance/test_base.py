"""distill.guidance.base: the config shorthand, the frozen registered denoiser, the shared guidance pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.conditions.base import ConditionBatch, Conditioning
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.guidance.base import Guidance, GuidanceConfig, GuidanceOutput
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.models import ModelLoadConfig, frozen_module_names, frozen_state_dict_keys
from distill.timesteps import TimestepSampler, TimestepScheduleConfig
from geometry.render_output import RenderOutput
from tests.distill.guidance.stand_ins import RecordingDenoiser


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return DiffusersDenoiser.from_pretrained(ModelLoadConfig(str(tiny_sd_path), device="cpu"))


def test_shorthand_names_the_denoiser_model():
    section = {"_target_": "distill.denoisers.diffusers_unet.DiffusersDenoiser", "device": "cpu"}
    cfg = GuidanceConfig(denoiser=section, pretrained_model_name_or_path="org/model")
    assert cfg.denoiser_section() == {**section, "pretrained_model_name_or_path": "org/model"}
    assert "pretrained_model_name_or_path" not in cfg.denoiser  # the section itself is left as given
    plain = GuidanceConfig(denoiser={**section, "pretrained_model_name_or_path": "org/other"})
    assert plain.denoiser_section()["pretrained_model_name_or_path"] == "org/other"
    with pytest.raises(ValueError, match="guidance_scale"):
        GuidanceConfig(guidance_scale=float("inf"))


def test_frozen_unet_and_vae_are_submodules_covered_by_frozen_keys(sd):
    """The real SD denoiser is registered in the guidance, yet every state-dict key is a frozen key and no
    parameter is trainable: checkpoints and optimizers leave it out."""
    guidance = SDSGuidance(SDSConfig(), sd)
    keys = set(guidance.state_dict())
    assert any(k.startswith("denoiser.unet.") for k in keys) and any(
        k.startswith("denoiser.vae.") for k in keys
    )
    assert frozen_state_dict_keys(guidance) == keys
    assert [p for p in guidance.parameters() if p.requires_grad] == []
    assert frozen_module_names(guidance) == ["denoiser"]
    system = nn.Module()
    system.guidance, system.field = guidance, nn.Linear(3, 3)
    assert set(system.state_dict()) - frozen_state_dict_keys(system) == {"field.weight", "field.bias"}


class EmbeddingGuidance(Guidance):
    """A guidance that trains a part of its own (a camera embedding), next to the frozen denoiser."""

    def __init__(self, cfg, denoiser):
        super().__init__(cfg, denoiser)
        self.camera_embedding = nn.Linear(16, 4)

    def param_groups(self):
        return [{"params": list(self.camera_embedding.parameters()), "lr": 1e-4, "name": "guidance.camera"}]


@pytest.mark.usefixtures("unchecked_types")  # calls the abstract forward with None on purpose
def test_trainable_parts_stay_in_checkpoints_and_reach_the_optimizer(sd):
    guidance = EmbeddingGuidance(GuidanceConfig(), sd)
    frozen = frozen_state_dict_keys(guidance)
    assert {"camera_embedding.weight", "camera_embedding.bias"} == set(guidance.state_dict()) - frozen
    trainable = [p for p in guidance.parameters() if p.requires_grad]
    grouped = guidance.param_groups()[0]["params"]
    assert len(trainable) == len(grouped) == 2 and all(
        a is b for a, b in zip(trainable, grouped, strict=True)
    )
    with pytest.raises(NotImplementedError):
        guidance(None, None, None, 0)


def test_predict_passes_is_one_denoiser_call_shaped_passes_first():
    den = RecordingDenoiser()
    guidance = Guidance(GuidanceConfig(), den)
    x_t, t = torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    parts = [Conditioning(torch.full((2, 1, 6), float(k))) for k in range(4)]
    batch = ConditionBatch(parts[0], parts[1], parts[2:], torch.zeros(2, 2))
    eps = guidance.predict_passes(x_t, t, batch)
    assert len(den.calls) == 1 and eps.shape == (4, 2, 3, 4, 4)
    for k in range(4):
        torch.testing.assert_close(eps[k], den.eps(x_t, t, parts[k].embeddings))
    cond_only = guidance.predict_passes(x_t, t, batch, which=1)
    assert cond_only.shape == (1, 2, 3, 4, 4) and den.calls[-1]["x_t"].shape[0] == 2
    torch.testing.assert_close(cond_only[0], eps[0])


def test_sample_t_and_noise_draws_t_first_then_noise():
    cfg = GuidanceConfig(timestep=TimestepScheduleConfig(per_sample=True))
    guidance = Guidance(cfg, RecordingDenoiser(), max_steps=100, generator=torch.Generator().manual_seed(8))
    t, noise = guidance.sample_t_and_noise(torch.zeros(3, 4, 5, 5), step=0)
    g = torch.Generator().manual_seed(8)
    expected_t = TimestepSampler(cfg.timestep, 1000, 100).sample(3, 0, generator=g)
    assert torch.equal(t, expected_t)
    assert noise.dtype == torch.float32 and torch.equal(noise, torch.randn(3, 4, 5, 5, generator=g))


def test_background_is_resized_for_pixel_denoisers_only():
    background = torch.rand(2, 8, 8, 3)
    render = RenderOutput(torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8, 1), torch.zeros(2, 8, 8, 1))
    pixel = Guidance(GuidanceConfig(), RecordingDenoiser(space="pixel"))
    assert pixel.background_for(render, torch.zeros(2, 3, 4, 4)) is None
    render.extras["background"] = background
    resized = pixel.background_for(render, torch.zeros(2, 3, 4, 4))
    expected = F.interpolate(background.permute(0, 3, 1, 2), size=(4, 4), mode="bilinear").permute(0, 2, 3, 1)
    torch.testing.assert_close(resized, expected)
    assert pixel.background_for(render, torch.zeros(2, 3, 8, 8)) is background
    latent = Guidance(GuidanceConfig(), RecordingDenoiser(space="latent", channels=4))
    assert latent.background_for(render, torch.zeros(2, 4, 4, 4)) is background


def test_guidance_output_holds_named_losses():
    out = GuidanceOutput(
        losses={"guidance": torch.tensor(1.0)}, grad_norm=torch.tensor(0.5), t=torch.tensor([3])
    )
    assert out.images == {} and Guidance.loss_names == ("guidance",)
