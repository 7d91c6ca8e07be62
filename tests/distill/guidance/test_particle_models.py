"""VSD's learned particle scores: the LoRA + camera embedding on the tiny random SD UNet, and the from-scratch UNet
on the analytic oracle.

Expected values come from calling the diffusers UNet directly (at init the particle model is the pretrained one),
from replaying the documented random draws, and from the base UNet's output before the adapter was added.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from distill.conditions.base import ConditionBatch, Conditioning
from distill.conditions.prompt_embeddings import PromptEmbeddings
from distill.denoisers.base import Denoiser
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.denoisers.oracle import OracleDenoiser
from distill.functional import classifier_free_guidance
from distill.guidance import particle_adapters
from distill.guidance.base import Guidance, GuidanceConfig
from distill.guidance.particle_adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CAMERA_WEIGHTS,
    adapter_parameters,
)
from distill.guidance.particle_models import (
    LoRAParticleScore,
    ScratchUNetParticleScore,
)
from distill.guidance.particle_score import ParticleModelConfig, Particles
from distill.models import ModelLoadConfig, frozen_state_dict_keys
from distill.schedule import NoiseSchedule
from distill3d.errors import InputFileError
from geometry.analytic import builtin_scene
from geometry.cameras import make_cameras
from systems.optim import OptimizerConfig, build_optimizer
from tests.fixtures.tiny_models import TEXT_DIM

TARGETS = {"to_q", "to_k", "to_v", "to_out.0"}


def _load(path, dtype="fp32"):
    return DiffusersDenoiser.from_pretrained(ModelLoadConfig(str(path), torch_dtype=dtype, device="cpu"))


@pytest.fixture
def denoiser(tiny_sd_path):
    """A fresh tiny SD denoiser per test: the particle score adds its adapter to this very UNet."""
    return _load(tiny_sd_path)


def _particles(azimuths=(0.0, 120.0), seed=0, size=8):
    """Latent particles (N, 4, size, size) at these azimuths, with a fixed random prompt / uncond pair."""
    g = torch.Generator().manual_seed(seed)
    cams = make_cameras(15.0, list(azimuths), 1.5, 50.0, 64)
    prompt = PromptEmbeddings.from_tensors(
        torch.randn(1, 77, TEXT_DIM, generator=g), torch.randn(1, 77, TEXT_DIM, generator=g)
    )
    x0 = torch.randn(len(azimuths), 4, size, size, generator=g)
    return Particles(x0, 1, cams, prompt(cams))


def _noisy(particles, t=(30, 800), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(particles.x0.shape, generator=g), torch.tensor(t[: particles.x0.shape[0]])


def _lora_score(denoiser, **overrides):
    """The particle score as VSD builds it: inside a guidance, which froze the denoiser first."""
    guidance = Guidance(GuidanceConfig(), denoiser)
    guidance.particle_score = LoRAParticleScore(ParticleModelConfig(**overrides), guidance.denoiser)
    return guidance, guidance.particle_score


def _train(score, particles, steps, optimizer=None, seed=0):
    """AdamW steps on a fixed batch (the same t, noise and dropout each step); returns the losses."""
    optimizer = optimizer or torch.optim.Adam(score.param_groups())
    losses = []
    for _ in range(steps):
        loss = score.loss(particles, 0, torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _lora_b(score):
    return [p for layer in score.layers for p in layer.lora_B["particle"].parameters()]


def test_base_unet_is_bit_identical_outside_the_particle_pass_also_after_training(denoiser):
    particles = _particles()
    x_t, t = _noisy(particles)
    before = denoiser.predict_eps(x_t, t, particles.batch.cond)
    _, score = _lora_score(denoiser, lr=1e-2)
    _train(score, particles, 3)
    assert all(p.abs().max() > 0 for p in _lora_b(score))  # the LoRA is no longer the identity
    assert torch.equal(denoiser.predict_eps(x_t, t, particles.batch.cond), before)
    particle_eps = score.predict_eps(x_t, t, particles)
    assert (particle_eps - before).abs().max() > 1e-3
    assert torch.equal(
        denoiser.predict_eps(x_t, t, particles.batch.cond), before
    )  # and after a particle pass


def test_at_init_the_particle_model_is_the_pretrained_model(denoiser):
    """LoRA B = 0 and a zero camera output layer: eps_phi = eps_pretrained, conditional and with CFG."""
    particles = _particles()
    x_t, t = _noisy(particles)
    _, score = _lora_score(denoiser)
    cond = denoiser.predict_eps(x_t, t, particles.batch.cond)
    torch.testing.assert_close(score.predict_eps(x_t, t, particles), cond)
    score.cfg.guidance_scale = 7.5
    uncond = denoiser.predict_eps(x_t, t, particles.batch.uncond)
    torch.testing.assert_close(
        score.predict_eps(x_t, t, particles), classifier_free_guidance(cond, uncond, 7.5)
    )


def test_backward_reaches_only_the_lora_and_camera_weights_and_those_are_checkpointed(denoiser):
    guidance, score = _lora_score(denoiser)
    score.loss(_particles(), 0, torch.Generator().manual_seed(0)).backward()
    trainable = {n for n, p in guidance.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_A.particle." in n or ".lora_B.particle." in n}
    camera = {n for n in trainable if n.startswith("particle_score.camera_embedding.")}
    assert lora and camera and trainable == lora | camera
    assert (
        "denoiser.unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.particle.weight"
        in lora
    )
    for name, p in guidance.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    # At init B = 0 and the camera's output layer is 0, so exactly those get a nonzero gradient first.
    assert all(p.grad.abs().max() > 0 for p in _lora_b(score))
    assert score.camera_embedding.net[2].weight.grad.abs().max() > 0
    (group,) = score.param_groups()
    params = dict(guidance.named_parameters())
    assert [id(p) for p in group["params"]] == list(dict.fromkeys(id(p) for p in group["params"]))
    assert {id(p) for p in group["params"]} == {id(params[n]) for n in trainable}
    assert group["lr"] == 1e-4 and group["weight_decay"] == 0.01 and group["decoupled_weight_decay"]
    assert group["name"] == "guidance.particle"
    assert all(p.dtype == torch.float32 for p in group["params"])
    # Trainable weights inside the frozen UNet stay out of the frozen keys, so checkpoints keep them.
    frozen = frozen_state_dict_keys(guidance)
    assert set(guidance.state_dict()) - frozen == trainable
    assert {"denoiser.unet.conv_in.weight", "denoiser.vae.encoder.conv_in.weight"} <= frozen
    # The denoiser is not a submodule of the particle score: no key appears twice.
    assert set(score.state_dict()) == {n.removeprefix("particle_score.") for n in camera}


def test_adamw_steps_lower_the_particle_loss_with_the_fused_system_optimizer(denoiser):
    _, score = _lora_score(denoiser, lr=3e-2)
    optimizer = build_optimizer(OptimizerConfig(fused=True), [], score.param_groups())
    group = optimizer.param_groups[0]
    assert group["decoupled_weight_decay"] and group["weight_decay"] == 0.01 and group["lr"] == 3e-2
    losses = _train(score, _particles(), 5, optimizer)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < 0.95 * losses[0], (
        losses
    )


def test_the_camera_embedding_acts_only_inside_the_particle_pass(denoiser):
    _, score = _lora_score(denoiser, lr=2e-2, uncond_dropout=0.0)
    unet, embedding = denoiser.unet, score.camera_embedding
    assert embedding.net[0].in_features == 16 and embedding.net[2].out_features == 4 * 8  # the tiny UNet's D
    _train(score, _particles(azimuths=(0.0, 90.0, 180.0, -90.0)), 4)
    assert embedding.net[2].weight.abs().max() > 0
    t_features = torch.randn(2, unet.time_embedding.linear_1.in_features)
    plain = unet.time_embedding.linear_2(F.silu(unet.time_embedding.linear_1(t_features)))
    assert torch.equal(unet.time_embedding(t_features), plain)  # outside: the hook adds nothing
    c2w = torch.randn(2, 16)
    with embedding.cameras(c2w):
        torch.testing.assert_close(unet.time_embedding(t_features), plain + embedding(c2w))
    # Same x0, x_t, t and text; only the cameras differ.
    front, side = _particles(azimuths=(0.0, 0.0)), _particles(azimuths=(90.0, 90.0))
    torch.testing.assert_close(front.batch.cond.embeddings, side.batch.cond.embeddings)
    x_t, t = _noisy(front)
    assert (score.predict_eps(x_t, t, front) - score.predict_eps(x_t, t, side)).abs().max() > 1e-4


def test_gradient_checkpointing_recomputes_with_the_adapter_on(denoiser, monkeypatch):
    """The recomputation runs in backward, after the adapter was switched off: it must see it on again."""
    _, score = _lora_score(denoiser, lr=1e-2)
    particles = _particles()
    _train(score, particles, 1)  # B != 0, so the adapter changes what the blocks compute

    def grads():
        for p in score.trainable_parameters():
            p.grad = None
        score.loss(particles, 0, torch.Generator().manual_seed(3)).backward()
        return [p.grad.clone() for p in score.trainable_parameters()]

    calls = []
    real = particle_adapters.checkpoint
    monkeypatch.setattr(particle_adapters, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    checkpointed = grads()
    assert calls  # the transformer blocks were checkpointed
    denoiser.unet.disable_gradient_checkpointing()
    for a, b in zip(checkpointed, grads(), strict=True):
        torch.testing.assert_close(a, b)


def test_save_and_load_pretrained_round_trip_in_peft_format(denoiser, tiny_sd_path, tmp_path):
    particles = _particles()
    x_t, t = _noisy(particles)
    _, score = _lora_score(denoiser, lr=1e-2)
    _train(score, particles, 2)
    folder = score.save_pretrained(tmp_path / "particle")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS, CAMERA_WEIGHTS]
    )
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4 and set(config["target_modules"]) == TARGETS
    assert config["peft_type"] == "LORA"
    with safe_open(folder / ADAPTER_WEIGHTS, "pt") as f:
        keys = list(f.keys())
    assert len(keys) == len(adapter_parameters(score.layers))
    assert all(
        k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    )

    _, loaded = _lora_score(_load(tiny_sd_path))
    assert not torch.equal(loaded.predict_eps(x_t, t, particles), score.predict_eps(x_t, t, particles))
    loaded.load_pretrained(folder)
    assert torch.equal(loaded.predict_eps(x_t, t, particles), score.predict_eps(x_t, t, particles))


def test_load_pretrained_names_a_missing_broken_or_mismatched_folder(denoiser, tiny_sd_path, tmp_path):
    _, score = _lora_score(denoiser)
    with pytest.raises(InputFileError, match="no adapter_config.json") as missing:
        score.load_pretrained(tmp_path / "nowhere")
    assert "\n" not in str(missing.value) and "save_pretrained" in str(missing.value)
    folder = score.save_pretrained(tmp_path / "particle")
    _, rank8 = _lora_score(_load(tiny_sd_path), lora_rank=8)
    with pytest.raises(InputFileError, match="rank 4") as mismatched:
        rank8.load_pretrained(folder)
    assert "\n" not in str(mismatched.value)
    (folder / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(InputFileError, match="unreadable") as broken:
        score.load_pretrained(folder)
    assert "\n" not in str(broken.value)


def test_the_lora_adds_its_weights_to_the_same_unet_and_copies_none(denoiser):
    before = {p.data_ptr() for p in denoiser.unet.parameters()}
    _, score = _lora_score(denoiser)
    lora = {p.data_ptr() for p in adapter_parameters(score.layers)}
    assert lora and not lora & before
    assert {p.data_ptr() for p in denoiser.unet.parameters()} == before | lora
    assert not any(isinstance(m, Denoiser) or m is denoiser.unet for m in score.modules())
    assert score.unet is denoiser.unet


def test_a_bf16_unet_gets_fp32_trainable_lora_weights(tiny_sd_path):
    denoiser = _load(tiny_sd_path, dtype="bf16")
    _, score = _lora_score(denoiser)
    assert denoiser.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.requires_grad for p in score.trainable_parameters())
    particles = _particles()
    loss = score.loss(particles, 0, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().max() > 0 for p in _lora_b(score))
    x_t, t = _noisy(particles)
    eps = score.predict_eps(x_t, t, particles)
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, denoiser.predict_eps(x_t, t, particles.batch.cond))


def test_loss_targets_the_velocity_for_a_v_prediction_model_and_drops_the_condition(denoiser):
    """Replays the documented draws (t, noise, dropout mask) and computes eq. 10 with the base UNet directly."""
    v_model = DiffusersDenoiser(
        denoiser.unet, NoiseSchedule.stable_diffusion("v_prediction"), vae=denoiser.vae
    )
    _, score = _lora_score(v_model, uncond_dropout=0.5, t_min=0.2, t_max=0.6)
    particles = _particles(azimuths=(0.0, 90.0, 180.0, -90.0))
    loss = score.loss(particles, 0, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    t = torch.randint(200, 601, (4,), generator=g)
    noise = torch.randn(particles.x0.shape, generator=g)
    drop = torch.rand(4, generator=g) < 0.5
    assert drop.any() and not drop.all()  # the seed exercises both sides
    hidden = torch.where(
        drop[:, None, None], particles.batch.uncond.embeddings, particles.batch.cond.embeddings
    )
    x_t = v_model.schedule.add_noise(particles.x0, noise, t)
    with torch.no_grad():
        out = denoiser.unet(x_t, t, encoder_hidden_states=hidden).sample
    velocity = v_model.schedule.velocity(particles.x0, noise, t)
    torch.testing.assert_close(loss, F.mse_loss(out, velocity))
    assert not torch.allclose(loss, F.mse_loss(out, noise), rtol=1e-2)


def _oracle_particles(size=16):
    cams = make_cameras(15.0, [0.0, 90.0, 180.0, -90.0], 2.4, 45.0, size)
    background = torch.ones(4, size, size, 3)
    render = builtin_scene("a snowman").render(cams, background=background).rgb
    oracle = OracleDenoiser([builtin_scene("a snowman")])
    x0 = oracle.encode(render.permute(0, 3, 1, 2))
    weights = torch.ones(4, 1, 1)
    batch = ConditionBatch(Conditioning(weights, cams, background), Conditioning(weights, cams, background))
    return oracle, Particles(x0, 1, cams, batch)


def test_scratch_unet_on_the_oracle_trains_and_predicts_in_its_x0_space():
    oracle, particles = _oracle_particles()
    score = ScratchUNetParticleScore(ParticleModelConfig(unet_channels=[16, 32], lr=2e-3), oracle)
    (group,) = score.param_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in score.parameters()}
    assert any(n.startswith("camera_embedding.") for n, _ in score.named_parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in group["params"])
    x_t, t = _noisy(particles, t=(30, 300, 600, 900))
    eps = score.predict_eps(x_t, t, particles)
    assert eps.shape == particles.x0.shape == (4, 3, 16, 16) and torch.isfinite(eps).all()
    losses = _train(score, particles, 6)
    assert losses[-1] < 0.8 * losses[0], losses
    odd = Particles(particles.x0[..., :15, :15], 1, particles.cameras, particles.batch)
    with pytest.raises(ValueError, match="divisible by 2"):
        score.loss(odd, 0)
