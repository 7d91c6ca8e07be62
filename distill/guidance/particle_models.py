"""The learned particle scores of VSD (ProlificDreamer, Wang et al. 2023): eps_phi, fitted online to the renders.

VSD's gradient (eq. 9) needs the score of the particles' own render distribution,

    grad_x0 = w(t) · (eps_pretrained(x_t, t, y) − eps_phi(x_t, t, c, y)),

and eps_phi follows the particles by one step of the ordinary diffusion loss per 3D step (eq. 10),

    min_phi  E_{t ~ U[t_min, t_max]·T, eps ~ N(0, I)} || f_phi(sqrt(ab_t)·x0 + sqrt(1 − ab_t)·eps, t, c, y) − target ||²

on the detached renders x0 at camera c. The target matches the parameterisation the model predicts in:
eps, v = sqrt(ab)·eps − sqrt(1 − ab)·x0, or x0. A fraction `uncond_dropout` of samples gets the unconditional
text and a zero camera, so eps_phi can use classifier-free guidance.

- `LoRAParticleScore`: a peft LoRA on the pretrained UNet itself (no second copy of its weights) plus a camera
  embedding (distill/guidance/particle_adapters.py). The adapter is off except inside the particle model's own
  passes, so the guidance's pretrained passes see the base UNet.
- `ScratchUNetParticleScore`: a small camera-conditioned diffusers UNet2DModel trained from scratch (the oracle,
  which has no UNet to adapt).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from jaxtyping import Float, Int
from peft import LoraConfig
from torch import Tensor, nn

from distill.denoisers.base import Denoiser
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.functional import classifier_free_guidance
from distill.guidance.particle_adapters import (
    CameraEmbedding,
    adapter_parameters,
    adapters_as,
    add_lora,
    load_adapter,
    save_adapter,
    time_embedding_width,
)
from distill.guidance.particle_score import ParticleModelConfig, Particles, ParticleScore


class LearnedParticleScore(ParticleScore):
    """What both learned models share: eps_phi with CFG over (text, camera), the loss of eq. 10, one optimizer
    group. Subclasses give `model_output` (the raw prediction, float32) and `trainable_parameters`."""

    camera_embedding: CameraEmbedding | None

    def __init__(self, cfg: ParticleModelConfig, denoiser: Denoiser) -> None:
        super().__init__(denoiser.schedule)
        self.cfg = cfg

    def model_output(
        self,
        x_t: Float[Tensor, "M C h w"],
        t: Int[Tensor, "M"],
        embeddings: Float[Tensor, "M L D"],
        cameras: Float[Tensor, "M 16"],
    ) -> Float[Tensor, "M C h w"]:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def attach_camera_embedding(self, unet: nn.Module, device: torch.device) -> None:
        """The camera embedding (if configured) as a submodule, hooked onto this UNet's time embedding."""
        self.camera_embedding = None
        if self.cfg.camera_embedding:
            self.camera_embedding = CameraEmbedding(time_embedding_width(unet)).to(device)
            self.camera_embedding.attach(unet.time_embedding)

    def camera_context(self, cameras: Float[Tensor, "M 16"]):
        return (
            contextlib.nullcontext()
            if self.camera_embedding is None
            else self.camera_embedding.cameras(cameras)
        )

    def conditions(self, particles: Particles) -> tuple[Tensor, Tensor, Tensor]:
        """(cond text (N, L, D), uncond text, cameras (N, 16)): the particles' condition and its CFG opposite."""
        cond = particles.batch.cond.embeddings
        cameras = particles.cameras.c2w.flatten(1).to(particles.x0.device, torch.float32)
        return cond, particles.batch.uncond.embeddings.expand_as(cond), cameras

    @torch.no_grad()
    def predict_eps(
        self, x_t: Float[Tensor, "N C h w"], t: Int[Tensor, "N"], particles: Particles
    ) -> Float[Tensor, "N C h w"]:
        cond, uncond, cameras = self.conditions(particles)
        if self.cfg.guidance_scale == 1.0:  # eps_u + 1·(eps_c − eps_u) = eps_c: skip the unconditional pass
            return self.schedule.to_eps(self.model_output(x_t, t, cond, cameras), x_t.float(), t)
        x2, t2 = x_t.repeat(2, 1, 1, 1), t.repeat(2)
        out = self.model_output(
            x2, t2, torch.cat([cond, uncond]), torch.cat([cameras, torch.zeros_like(cameras)])
        )
        eps = self.schedule.to_eps(out, x2.float(), t2).unflatten(0, (2, x_t.shape[0]))
        return classifier_free_guidance(eps[0], eps[1], self.cfg.guidance_scale)

    def loss(self, particles: Particles, step: int, generator: torch.Generator | None = None) -> Tensor:
        """Eq. 10 on the detached renders. Draws, in this order: t (N,), noise like x0, the dropout mask (N,)."""
        x0 = particles.x0.detach().float()
        t, noise, drop = self.draw(x0, generator)
        cond, uncond, cameras = self.conditions(particles)
        embeddings = torch.where(drop.to(cond.device)[:, None, None], uncond, cond)
        cameras = torch.where(drop[:, None], torch.zeros_like(cameras), cameras)
        out = self.model_output(self.schedule.add_noise(x0, noise, t), t, embeddings, cameras)
        return F.mse_loss(out, self.target(x0, noise, t))

    def draw(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """t uniform on the integers [t_min·T, t_max·T] ∩ [0, T − 1], noise, and which samples drop their condition;
        drawn on the generator's device (a CPU generator works for CUDA renders), returned on x0's."""
        n, steps = x0.shape[0], self.schedule.num_train_timesteps
        high = min(round(self.cfg.t_max * steps), steps - 1)
        low = min(round(self.cfg.t_min * steps), high)
        device = generator.device if generator is not None else x0.device
        t = torch.randint(low, high + 1, (n,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        drop = torch.rand(n, generator=generator, device=device) < self.cfg.uncond_dropout
        return t.to(x0.device), noise.to(x0.device), drop.to(x0.device)

    def target(
        self, x0: Float[Tensor, "N C h w"], noise: Float[Tensor, "N C h w"], t: Int[Tensor, "N"]
    ) -> Float[Tensor, "N C h w"]:
        """What the model predicts in the schedule's parameterisation (the particle model mirrors the base model)."""
        if self.schedule.prediction_type == "epsilon":
            return noise
        if self.schedule.prediction_type == "v_prediction":
            return self.schedule.velocity(x0, noise, t)
        return x0

    def param_groups(self) -> list[dict[str, Any]]:
        # AdamW semantics inside the system's torch.optim.Adam: decoupled decay for this group only.
        return [
            {
                "params": self.trainable_parameters(),
                "lr": self.cfg.lr,
                "weight_decay": self.cfg.weight_decay,
                "decoupled_weight_decay": True,
                "name": "guidance.particle",
            }
        ]


class LoRAParticleScore(LearnedParticleScore):
    """eps_phi = the pretrained UNet with a LoRA adapter ("particle") and a camera embedding on its time embedding.

    The denoiser is not a submodule (the guidance registers it; registering it twice would duplicate every UNet
    key). The LoRA weights live inside `denoiser.unet`, fp32 and trainable inside the frozen UNet, under the
    guidance as `denoiser.unet.<...>.attn1.to_q.lora_A.particle.weight`; the camera embedding is a submodule.
    """

    def __init__(self, cfg: ParticleModelConfig, denoiser: DiffusersDenoiser) -> None:
        super().__init__(cfg, denoiser)
        # A plain attribute, not a submodule (see the class doc).
        object.__setattr__(self, "denoiser", denoiser)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or cfg.lora_rank,
            target_modules=list(cfg.lora_target_modules),
            init_lora_weights=True,  # A random, B = 0: the adapter starts as the identity
        )
        self.layers = add_lora(denoiser.unet, lora, cfg.gradient_checkpointing)
        self.attach_camera_embedding(denoiser.unet, denoiser.device)

    @property
    def unet(self) -> nn.Module:
        return self.denoiser.unet

    def trainable_parameters(self) -> list[nn.Parameter]:
        camera = [] if self.camera_embedding is None else list(self.camera_embedding.parameters())
        return adapter_parameters(self.layers) + camera

    def model_output(
        self,
        x_t: Float[Tensor, "M C h w"],
        t: Int[Tensor, "M"],
        embeddings: Float[Tensor, "M L D"],
        cameras: Float[Tensor, "M 16"],
    ) -> Float[Tensor, "M C h w"]:
        unet = self.unet
        with adapters_as(self.layers, True), self.camera_context(cameras):
            hidden = embeddings.to(x_t.device, unet.dtype)
            out = unet(x_t.to(unet.dtype), t, encoder_hidden_states=hidden).sample
        if self.denoiser.learned_variance:  # IF: [eps ‖ variance], the particle model predicts the eps half
            out = out[:, : x_t.shape[1]]
        return out.float()

    def save_pretrained(self, path: str | Path) -> Path:
        """peft's adapter folder (adapter_config.json + adapter_model.safetensors) + camera_embedding.safetensors."""
        return save_adapter(self.unet, self.camera_embedding, path)

    def load_pretrained(self, path: str | Path) -> None:
        """Load what save_pretrained wrote; a missing, broken or mismatched folder raises InputFileError."""
        load_adapter(self.unet, self.camera_embedding, path)


def x0_channels(denoiser: Denoiser) -> int:
    """Channels of the denoiser's x0 space: its UNet's input channels, else 3 for a pixel model (the oracle)."""
    unet = getattr(denoiser, "unet", None)
    if unet is not None:
        return int(unet.config.in_channels)
    if denoiser.space == "pixel":
        return 3
    raise ValueError(
        f"{type(denoiser).__name__} is a latent model without a UNet: its channel count is unknown"
    )


class ScratchUNetParticleScore(LearnedParticleScore):
    """eps_phi = a small UNet2DModel (plain ResNet Down/Up blocks, no attention) trained from scratch, conditioned on
    the camera only (the particles belong to one prompt); it predicts in the denoiser's parameterisation."""

    def __init__(self, cfg: ParticleModelConfig, denoiser: Denoiser) -> None:
        super().__init__(cfg, denoiser)
        channels, levels = x0_channels(denoiser), len(cfg.unet_channels)
        self.unet = UNet2DModel(
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(cfg.unet_channels),
            layers_per_block=cfg.unet_layers,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=False,
            norm_num_groups=math.gcd(32, *cfg.unet_channels),  # GroupNorm must divide every width
        ).to(denoiser.device)
        self.downsampling = 2 ** (levels - 1)
        self.attach_camera_embedding(self.unet, denoiser.device)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def model_output(
        self,
        x_t: Float[Tensor, "M C h w"],
        t: Int[Tensor, "M"],
        embeddings: Float[Tensor, "M L D"],
        cameras: Float[Tensor, "M 16"],
    ) -> Float[Tensor, "M C h w"]:
        h, w = x_t.shape[-2:]
        if h % self.downsampling or w % self.downsampling:
            raise ValueError(
                f"the particle UNet halves {h}×{w} renders {self.downsampling.bit_length() - 1} times: use a render "
                f"size divisible by {self.downsampling} or fewer particle.unet_channels"
            )
        with self.camera_context(cameras):
            return self.unet(x_t.float(), t).sample.float()
