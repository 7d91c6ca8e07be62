"""The guidance contract (DESIGN.md §3): `guidance(render, cameras, condition, step) -> GuidanceOutput`.

A guidance is a module registered in the system. Its denoiser is frozen (`distill.models.freeze`), so systems
leave it out of checkpoints and optimizers by key (`frozen_state_dict_keys`); parts it trains (a LoRA, a camera
embedding) are ordinary parameters, handed to the optimizer through `param_groups()` with their own learning
rates, checkpointed and resumed like the 3D parameters. It returns named losses: each name is a weight
`lambda_<name>` in `system.loss`, checked against `loss_names` before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from distill.conditions.base import Condition, ConditionBatch, Conditioning
from distill.denoisers.base import Denoiser
from distill.models import freeze
from distill.timesteps import TimestepSampler, TimestepScheduleConfig
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput


@dataclass
class GuidanceConfig:
    """What every guidance shares.

    denoiser: the denoiser section, `_target_` plus its typed config (for diffusers models a ModelLoadConfig:
        pretrained_model_name_or_path, torch_dtype, revision, local_files_only, cpu_offload, ...).
    pretrained_model_name_or_path: shorthand for denoiser.pretrained_model_name_or_path (threestudio's key).
    guidance_scale: s in the diffusers CFG convention eps_u + s·(eps_c − eps_u). threestudio's SD/IF
        guidances use eps_c + s_ts·(eps_c − eps_u), so their s_ts equals s = s_ts + 1 here (their 100 → 101).
    timestep: the annealed range t is drawn from (distill/timesteps.py).
    return_images: also return the one-step x0 prediction for logging (images["x0"]).
    """

    denoiser: dict = field(default_factory=dict)
    pretrained_model_name_or_path: str | None = None
    guidance_scale: float = 100.0
    timestep: TimestepScheduleConfig = field(default_factory=TimestepScheduleConfig)
    return_images: bool = False

    def __post_init__(self) -> None:
        if not torch.isfinite(torch.tensor(float(self.guidance_scale))):
            raise ValueError(f"guidance_scale={self.guidance_scale} must be a finite number")

    def denoiser_section(self) -> dict:
        """The denoiser section with the shorthand applied."""
        section = dict(self.denoiser)
        if self.pretrained_model_name_or_path is not None:
            section["pretrained_model_name_or_path"] = self.pretrained_model_name_or_path
        return section


@dataclass
class GuidanceOutput:
    """losses: {name: scalar} to weight by `lambda_<name>` and backpropagate (gradient-injection losses carry no
    meaning in their value: log grad_norm). grad_norm: mean per-sample L2 norm of the injected gradient. t: (B,)
    timesteps used. images: logging images, each (B, H, W, 3) in [0, 1]."""

    losses: dict[str, Float[Tensor, ""]]
    grad_norm: Float[Tensor, ""]
    t: Int[Tensor, "B"]
    images: dict[str, Tensor] = field(default_factory=dict)


class Guidance(nn.Module):
    """Base class: holds the frozen denoiser and the timestep schedule; subclasses implement `forward`.

    Args:
        cfg: the guidance's config (a GuidanceConfig subclass).
        denoiser: a built Denoiser (frozen here).
        max_steps: the run's training steps (annealed timestep schedules).
        generator: optional torch.Generator for t and noise (reproducible tests).
    """

    loss_names: ClassVar[tuple[str, ...]] = ("guidance",)

    def __init__(
        self, cfg: GuidanceConfig, denoiser: Denoiser, max_steps: int = 10000, generator=None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.denoiser = freeze(denoiser)
        self.timesteps = TimestepSampler(cfg.timestep, denoiser.schedule.num_train_timesteps, max_steps)
        self.generator = generator

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups for trainable parts ({"params", "lr", "name", optional "weight_decay"}); none here."""
        return []

    def forward(
        self, render: RenderOutput, cameras: Cameras, condition: Condition, step: int
    ) -> GuidanceOutput:
        raise NotImplementedError

    # ---- shared pieces -----------------------------------------------------------------------------
    def sample_t_and_noise(self, x0: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """t (B,) then noise like x0 (float32), both from the guidance's generator (or the global RNG)."""
        t = self.timesteps.sample(x0.shape[0], step, device=x0.device, generator=self.generator)
        gen_device = self.generator.device if self.generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=self.generator, device=gen_device).to(x0.device)
        return t, noise

    def background_for(self, render: RenderOutput, x0: Tensor) -> Tensor | None:
        """The renderer's background, resized like the render when the denoiser works on pixels."""
        background = render.extras.get("background")
        if background is None or self.denoiser.space != "pixel" or background.shape[1:3] == x0.shape[-2:]:
            return background
        resized = F.interpolate(background.permute(0, 3, 1, 2), size=x0.shape[-2:], mode="bilinear")
        return resized.permute(0, 2, 3, 1)

    @torch.no_grad()
    def predict_passes(
        self, x_t: Tensor, t: Tensor, batch: ConditionBatch, which: int | None = None
    ) -> Tensor:
        """eps for every pass of the batch ([cond, uncond, *negatives]) in ONE denoiser call → (P, B, C, h, w).

        which: only the first `which` passes (e.g. 1 = the conditional pass alone)."""
        passes = batch.passes()[:which]
        cond = Conditioning.cat(passes) if len(passes) > 1 else passes[0]
        n = len(passes)
        eps = self.denoiser.predict_eps(x_t.repeat(n, *[1] * (x_t.dim() - 1)), t.repeat(n), cond)
        return eps.float().unflatten(0, (n, x_t.shape[0]))
