"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023) on any Denoiser.

SDS pulls every render toward the prior's mode; VSD treats the 3D models as n particles of a distribution and
matches that distribution to the prior. Its gradient replaces SDS's noise by the score of the particles' own
distribution (ProlificDreamer eq. 9), the Jacobians omitted as in SDS:

    grad_x0 = w(t) · (eps_pretrained,CFG(x_t, t, y) − eps_phi(x_t, t, c, y))

eps_phi is a `ParticleScore` (distill/guidance/particle_score.py): a LoRA on the pretrained UNet plus a camera
embedding, a small UNet trained from scratch, or — for the oracle — the exact score of the particles' renders.
The learned ones take one step of the ordinary diffusion loss on the detached renders at a fresh t per 3D step
(eq. 10), returned as the loss "particle" so the system's optimizer steps them with the 3D parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from distill.conditions.base import Condition
from distill.denoisers.base import Denoiser
from distill.functional import injected_loss, sds_gradient, sds_weight
from distill.guidance.base import GuidanceOutput
from distill.guidance.particle_score import (
    PARTICLE_SCORES,
    ExactParticleScore,
    ParticleModelConfig,
    Particles,
    ParticleScore,
)
from distill.guidance.sds import SDSConfig, SDSGuidance
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput


@dataclass
class VSDConfig(SDSConfig):
    """SDSConfig (weighting, input, grad_clip, Perp-Neg) plus the particle score.

    guidance_scale: CFG on the pretrained side (7.5 in ProlificDreamer).
    particle_score: "lora" (peft LoRA + camera embedding on the pretrained UNet: real models), "unet" (a small
        camera-conditioned UNet trained from scratch online), "exact" (the Tweedie score of the particles'
        renders; needs no model, and with one particle makes VSD equal to SDS).
    particle: the learned particle models' settings (ParticleModelConfig).
    """

    guidance_scale: float = 7.5
    particle_score: str = "lora"
    particle: ParticleModelConfig = field(default_factory=ParticleModelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.particle_score not in PARTICLE_SCORES:
            raise ValueError(
                f"particle_score={self.particle_score!r} is unknown; use one of {PARTICLE_SCORES}"
            )


def build_particle_score(cfg: VSDConfig, denoiser: Denoiser) -> ParticleScore:
    """The configured particle score for this denoiser (the learned ones import diffusers / peft lazily)."""
    if cfg.particle_score == "exact":
        return ExactParticleScore(denoiser.schedule)
    from distill.guidance.particle_models import LoRAParticleScore, ScratchUNetParticleScore

    if cfg.particle_score == "unet":
        return ScratchUNetParticleScore(cfg.particle, denoiser)
    if not hasattr(denoiser, "unet"):
        raise ValueError(
            f"particle_score=lora needs a UNet to attach the LoRA to, and {type(denoiser).__name__} has none: "
            "use particle_score=exact or particle_score=unet with the oracle"
        )
    return LoRAParticleScore(cfg.particle, denoiser)


class VSDGuidance(SDSGuidance):
    """VSD: losses {"guidance": injected 3D gradient, "particle": the particle model's diffusion loss}.

    Per call: t, then the noise (as SDS), then whatever the particle score draws for its own update.
    `num_particles` says how the B renders split into particles (particle-major, same cameras per particle).
    """

    Config = VSDConfig
    cfg: VSDConfig
    loss_names: ClassVar[tuple[str, ...]] = ("guidance", "particle")
    # The particle model must train for VSD to mean anything: its loss weight defaults to 1, not 0.
    default_loss_weights: ClassVar[dict[str, float]] = {"particle": 1.0}

    def __init__(self, cfg: VSDConfig, denoiser: Denoiser, max_steps: int = 10000, generator=None) -> None:
        super().__init__(cfg, denoiser, max_steps, generator)
        self.particle_score = build_particle_score(cfg, self.denoiser)

    def param_groups(self) -> list[dict[str, Any]]:
        return self.particle_score.param_groups()

    def save_particle_model(self, path: Path) -> Path | None:
        """The learned particle model in a reusable format (the LoRA: peft's adapter folder); None if exact."""
        save = getattr(self.particle_score, "save_pretrained", None)
        if save is None:
            return None
        save(path)
        return path

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        condition: Condition,
        step: int,
        return_images: bool = False,
        num_particles: int = 1,
    ) -> GuidanceOutput:
        x0, t, _, x_t, batch = self.noised(render, cameras, condition, step)
        schedule = self.denoiser.schedule
        particles = Particles(x0.detach(), num_particles, cameras, batch)
        eps_pretrained = self.guided_eps(x_t, t, batch)
        eps_particles = self.particle_score.predict_eps(x_t, t, particles)
        weight = sds_weight(self.cfg.weighting, schedule.alpha_bar(t, x_t))
        grad = sds_gradient(eps_pretrained, eps_particles.float(), weight, self.cfg.grad_clip)
        losses = {
            "guidance": injected_loss(x0, grad.to(x0.dtype)),
            "particle": self.particle_score.loss(particles, step, self.generator),
        }
        return self.output(losses, grad, t, x_t, eps_pretrained, return_images)
