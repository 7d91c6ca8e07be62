"""The variational score of VSD (ProlificDreamer, Wang et al. 2023): eps_phi(x_t, t, c) of the distribution of the
current particles' renders, and how it keeps up with them.

A `ParticleScore` answers two questions each step:
- `predict_eps(x_t, t, particles)`: the noise prediction of the particles' distribution (no grad), the second
  term of VSD's gradient w(t)·(eps_pretrained − eps_phi) (ProlificDreamer eq. 9);
- `loss(particles)`: the ordinary diffusion loss that fits it to the (detached) current renders at a fresh t
  (eq. 10), 0 for the exact score, which has nothing to fit.

Implementations: `ExactParticleScore` here (the Tweedie denoiser of the particles' own renders: exact, for the
oracle), the LoRA particle model on the pretrained UNet and a small camera-conditioned UNet trained from scratch
(distill/guidance/particle_models.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from distill.conditions.base import ConditionBatch
from distill.denoisers.oracle import posterior_mean_x0
from distill.schedule import NoiseSchedule
from geometry.cameras import Cameras


@dataclass
class Particles:
    """What a particle score sees of one step: the N = n·B detached renders in the denoiser's x0 space, particle-
    major (sample p·B + b is particle p at camera b), their cameras and their conditioning.

    x0: (N, C, h, w) detached model inputs; num_particles: n (1 for a single 3D model); cameras: the N cameras;
    batch: the guidance's ConditionBatch for the N samples (cond / uncond text, background, extras).
    """

    x0: Float[Tensor, "N C h w"]
    num_particles: int
    cameras: Cameras
    batch: ConditionBatch

    def __post_init__(self) -> None:
        if self.num_particles < 1 or self.x0.shape[0] % self.num_particles:
            raise ValueError(
                f"{self.x0.shape[0]} renders cannot be split into {self.num_particles} particles: render every "
                "particle at the same cameras (particle-major order)"
            )

    @property
    def views(self) -> int:
        """B: cameras per particle."""
        return self.x0.shape[0] // self.num_particles


class ParticleScore(nn.Module):
    """Base class. `schedule` is the pretrained denoiser's (the particle score predicts in the same process)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule = schedule

    def predict_eps(
        self, x_t: Float[Tensor, "N C h w"], t: Int[Tensor, "N"], particles: Particles
    ) -> Float[Tensor, "N C h w"]:
        raise NotImplementedError

    def loss(self, particles: Particles, step: int, generator: torch.Generator | None = None) -> Tensor:
        """The particle model's training loss on the detached renders (a scalar with a graph to its weights)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        return []


class ExactParticleScore(ParticleScore):
    """eps_phi from E[x0 | x_t] under the uniform mixture of the n particles' current renders at the same camera:
    for sample p·B + b the candidates are the n renders x0[q·B + b], q = 1..n (the oracle's math,
    distill/denoisers/oracle.py). With n = 1 it returns exactly the noise that made x_t, so VSD is SDS."""

    @torch.no_grad()
    def predict_eps(
        self, x_t: Float[Tensor, "N C h w"], t: Int[Tensor, "N"], particles: Particles
    ) -> Float[Tensor, "N C h w"]:
        n, views = particles.num_particles, particles.views
        x0 = particles.x0.float()
        if n == 1:
            # A point mass: E[x0 | x_t] = x0 exactly (the softmax below would give the same, up to rounding).
            return self.schedule.x0_to_eps(x_t.float(), x0, t)
        per_camera = x0.unflatten(0, (n, views))  # (n, B, C, h, w)
        camera_of = torch.arange(x_t.shape[0], device=x_t.device) % views
        candidates = per_camera[:, camera_of]  # (n, N, C, h, w)
        log_weights = torch.full(
            (x_t.shape[0], n), -float(torch.log(torch.tensor(float(n)))), device=x_t.device
        )
        alpha_bar = self.schedule.alpha_bar(t, x_t).reshape(-1).float()
        x0_hat = posterior_mean_x0(x_t.float(), candidates, log_weights, alpha_bar)
        return self.schedule.x0_to_eps(x_t.float(), x0_hat, t)

    def loss(self, particles: Particles, step: int, generator: torch.Generator | None = None) -> Tensor:
        return particles.x0.new_zeros(())


PARTICLE_SCORES = ("exact", "lora", "unet")


@dataclass
class ParticleModelConfig:
    """The learned particle models (`particle_score: lora | unet`; the exact score ignores these).

    lora_rank / lora_alpha: LoRA rank r and alpha on `lora_target_modules` of the pretrained UNet (alpha None = r,
        so the adapter's scale alpha/r is 1); rank 4 on to_q/to_k/to_v/to_out.0 as ProlificDreamer.
    camera_embedding: add MLP(flattened 4×4 c2w) (16 → D → D, D the time-embedding width: 1280 for SD) to the time
        embedding while the particle model runs (the UNet's own pass is left untouched).
    lr / weight_decay: AdamW for the particle model's parameters (ProlificDreamer: lr 1e-4; AdamW's default decay).
    uncond_dropout: fraction of training samples whose condition (text and camera) is replaced by the
        unconditional one, so the particle model can do CFG at `guidance_scale`.
    guidance_scale: CFG scale of the particle model's prediction (1 = its conditional pass alone).
    t_min / t_max: the fresh timestep of its diffusion loss, uniform on [t_min, t_max]·T.
    unet_channels / unet_layers: the from-scratch UNet (`particle_score: unet`): block widths and layers per block.
    gradient_checkpointing: recompute the UNet's activations in the particle model's backward (memory ~ one
        forward instead of a training step's activations; ~30 % slower).
    """

    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    camera_embedding: bool = True
    lr: float = 1e-4
    weight_decay: float = 0.01
    uncond_dropout: float = 0.1
    guidance_scale: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_layers: int = 1
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ValueError(f"particle.lora_rank={self.lora_rank} must be >= 1")
        if not self.lora_target_modules:
            raise ValueError("particle.lora_target_modules is empty: name the attention projections to adapt")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"particle.lr={self.lr} must be > 0 and particle.weight_decay >= 0")
        if not 0.0 <= self.uncond_dropout < 1.0:
            raise ValueError(f"particle.uncond_dropout={self.uncond_dropout} must be in [0, 1)")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(
                f"particle t range [{self.t_min}, {self.t_max}] must satisfy 0 <= t_min < t_max <= 1"
            )
        if not self.unet_channels or any(c < 4 or c % 4 for c in self.unet_channels) or self.unet_layers < 1:
            raise ValueError("particle.unet_channels must be multiples of 4 (>= 4) and unet_layers >= 1")
