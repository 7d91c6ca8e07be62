"""BaseSystem: the LightningModule that drives one score-distillation run.

It only orchestrates: the renderer (geometry/), the guidance and condition (distill/) are plain modules built
from typed configs (systems/components.py) and handed in through the constructor, so a system can be built
and stepped in a test without the runner. Optimization is manual so that a step whose loss or gradients are
not finite is skipped (counted, warned about) instead of corrupting Adam's moments. Frozen weights (the
denoiser) are registered modules kept out of checkpoints and optimizers by key.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from distill.models import frozen_state_dict_keys
from distill3d.errors import ConfigError, UserError
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput
from systems import evaluation
from systems.components import Components, build_components
from systems.config import RunInfo, SystemConfig
from systems.losses import LossWeights
from systems.optim import build_lr_scheduler, build_optimizer
from systems.rng import RngState

log = logging.getLogger("distill3d")
# Particles beyond the first are `extra_particles.<i>.`: configs name their parameters like the first's.
EXTRA_PARTICLE = re.compile(r"^extra_particles\.\d+\.")
# Parameter names as configs spell them: the renderer owns geometry/material/background, users name them bare.
ALIASES = {
    "renderer.geometry.": "geometry.",
    "renderer.material.": "material.",
    "renderer.background.": "background.",
}


def normal_as_image(render: RenderOutput) -> RenderOutput:
    """The render with rgb replaced by its world normals mapped to [0, 1] over the render's background, so the
    guidance scores the shape alone (ProlificDreamer's geometry stage)."""
    if render.normal is None:
        raise ConfigError(
            "system.guidance_input=normal needs a renderer that returns normals: set system.renderer.return_normal=true"
        )
    background = render.extras.get("background", torch.ones_like(render.rgb))
    # Normals are composited (premultiplied: Σ w·n), so Σ w·(n + 1)/2 = (Σ w·n + α)/2.
    shaded = (render.normal + render.opacity) * 0.5 + background * (1.0 - render.opacity)
    return RenderOutput(shaded, render.opacity, render.depth, render.normal, dict(render.extras))


class NonFiniteAbort(UserError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def config_name(name: str) -> str:
    name = EXTRA_PARTICLE.sub("renderer.", name)
    for prefix, alias in ALIASES.items():
        if name.startswith(prefix):
            return alias + name[len(prefix) :]
    return name


class BaseSystem(pl.LightningModule):
    """renderer (holding geometry, material, background) — the first of `particles` when there are several
    (the others are `extra_particles`) —, guidance (None outside training), condition, camera_sampler (training
    cameras as a function of the step), ground_truths (the target's scenes, for the oracles)."""

    def __init__(
        self,
        cfg: SystemConfig,
        run: RunInfo,
        components: Components,
        camera_sampler: Any,
        run_dir: Path | None = None,
        file_prefix: str = "",
    ) -> None:
        super().__init__()
        self.cfg, self.run = cfg, run
        self.automatic_optimization = False
        self.renderer = components.renderers[0]
        self.extra_particles = nn.ModuleList(components.renderers[1:])
        self.guidance = components.guidance
        self.condition = components.condition
        self.ground_truths = list(components.ground_truths)
        self.ground_truth = self.ground_truths[0] if self.ground_truths else None
        self.loss_weights: LossWeights = components.losses
        self.camera_sampler = camera_sampler
        self.run_dir = run_dir
        self.file_prefix = file_prefix  # "<stage>-" in multi-stage runs: validation images of stages apart
        self.artifacts: dict[str, Any] = {}
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0
        self._rng = RngState()

    @classmethod
    def from_config(
        cls, cfg: SystemConfig, run: RunInfo, camera_sampler: Any, training: bool = True, **kwargs
    ) -> BaseSystem:
        """Build every component from the config (loading the denoiser only when training)."""
        return cls(cfg, run, build_components(cfg, run, with_guidance=training), camera_sampler, **kwargs)

    @property
    def geometry(self):
        return self.renderer.geometry

    @property
    def particles(self) -> list[nn.Module]:
        """Every particle's renderer (one unless system.num_particles > 1)."""
        return [self.renderer, *self.extra_particles]

    # ---- checkpoints: frozen weights stay out -----------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in frozen_state_dict_keys(self):
            state.pop(prefix + key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Strict about everything but the frozen weights (never saved) and a guidance that is not built
        (test/export modes build none)."""
        missing, unexpected = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = frozen_state_dict_keys(self)
        missing = [k for k in missing if k not in frozen]
        if self.guidance is None:
            unexpected = [k for k in unexpected if not k.startswith("guidance.")]
        if strict and (missing or unexpected):
            raise ConfigError(
                f"the checkpoint does not fit this system (missing {len(missing)} keys, e.g. {missing[:2]}; unexpected"
                f" {len(unexpected)}, e.g. {unexpected[:2]}): use the experiment and geometry settings it was trained with"
            )
        return missing, unexpected

    # ---- the one place where step-dependent values move ---------------------------------------------
    def shading_mode(self, step: int) -> str:
        s = self.cfg.shading
        if s.mode == "albedo" or step < s.ambient_only_steps or random.random() > s.diffuse_prob:
            return "albedo"
        return "textureless" if random.random() < s.textureless_prob else "lambertian"

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self._rng.restore_pending()
        step = self.global_step
        for particle in self.particles:
            particle.set_step(step)
        cameras = self.camera_sampler.sample(step).to(self.device)
        chosen = self.particles_this_step()
        renders = self.render_particles(chosen, cameras, self.shading_mode(step))
        losses = self.compute_losses(renders, cameras, step)
        total = self.loss_weights.total(losses, step)
        if self.optimize(total, step):
            for particle, render in zip(chosen, renders, strict=True):
                self.after_optimizer_step(render, step, self.particle_index(particle))
        self.log_dict({f"train/loss_{k}": v.detach().float() for k, v in losses.items()})
        self.log("train/loss", total.detach().float(), prog_bar=True)

    def particles_this_step(self) -> list[nn.Module]:
        """All particles, or a random subset of system.particles_per_step (the global RNG: resumed exactly)."""
        particles, k = self.particles, self.cfg.particles_per_step
        if k is None or k >= len(particles):
            return particles
        return [particles[i] for i in sorted(torch.randperm(len(particles))[:k].tolist())]

    def render_particles(
        self, particles: list[nn.Module], cameras: Cameras, shading: str
    ) -> list[RenderOutput]:
        """Each particle rendered at the same cameras from the same RNG state (the same random backgrounds and
        sample jitter), so the particles differ only by their parameters."""
        renders = []
        for particle in particles[:-1]:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                renders.append(particle(cameras, shading=shading))
        renders.append(particles[-1](cameras, shading=shading))
        return renders

    def compute_losses(
        self, renders: RenderOutput | list[RenderOutput], cameras: Cameras, step: int
    ) -> dict[str, Tensor]:
        """The guidance's losses and the renderer's active regularizers, unweighted, by name.

        Several particles: the guidance sees their renders as one particle-major batch (VSD's particle score
        needs them together); its losses, means over that batch, are multiplied by the number of particles and
        the regularizers summed over them, so each particle gets the gradient it would get alone."""
        renders = [renders] if isinstance(renders, RenderOutput) else renders
        k = len(renders)
        render = renders[0] if k == 1 else RenderOutput.cat(renders, extras=True)
        if self.cfg.guidance_input == "normal":
            render = normal_as_image(render)
        batch_cameras = cameras if k == 1 else Cameras.cat([cameras] * k)
        out = self.guidance(render, batch_cameras, self.condition, step, num_particles=k)
        self.log("train/grad_norm", out.grad_norm.detach().float().mean(), prog_bar=True)
        self.log("train/t", out.t.float().mean())
        losses = {name: value * k for name, value in out.losses.items()} if k > 1 else dict(out.losses)
        active = self.loss_weights.active & set(self.renderer.loss_names)
        for one in renders:
            for name, value in self.renderer.regularizers(one, active).items():
                losses[name] = losses[name] + value if name in losses else value
        return losses

    def particle_index(self, particle: nn.Module) -> int:
        return next(i for i, p in enumerate(self.particles) if p is particle)

    def after_optimizer_step(self, render: RenderOutput, step: int, particle: int = 0) -> None:
        """Hook for recipes that edit parameters after a step (Gaussian densification), once per rendered particle."""

    def optimize(self, loss: Tensor, step: int) -> bool:
        """One manual optimizer step; a non-finite loss or gradient skips the step. Returns whether it stepped."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._skip(step, f"loss is {loss.item()}")
            return False
        self.manual_backward(loss)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all():
            opt.zero_grad(set_to_none=True)
            self._skip(step, "a gradient is not finite")
            return False
        self._nonfinite_in_a_row = 0
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return True

    def _skip(self, step: int, why: str) -> None:
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        log.warning("step %d skipped: %s", step, why)
        if self._nonfinite_in_a_row >= self.cfg.max_nonfinite_in_a_row:
            raise NonFiniteAbort(
                f"{self._nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (last at step {step}):"
                " lower the learning rates or the guidance scale, or raise system.max_nonfinite_in_a_row"
            )
        # Manual optimization counts steps by optimizer.step(); advance it so the run still ends.
        self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_completed()

    def named_trainable_parameters(self):
        """(config name, parameter) for the 3D side: guidance parameters come through its own groups."""
        frozen = frozen_state_dict_keys(self)
        for name, p in self.named_parameters():
            if p.requires_grad and name not in frozen and not name.startswith("guidance."):
                yield config_name(name), p

    def build_optimizer(self) -> torch.optim.Optimizer:
        extra = self.guidance.param_groups() if self.guidance is not None else []
        try:
            return build_optimizer(self.cfg.optimizer, self.named_trainable_parameters(), extra)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        scheduler = build_lr_scheduler(self.cfg.optimizer, optimizer, self.run.max_steps)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- exact resume: RNG states travel with the checkpoint ------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["distill3d"] = {**self._rng.capture(), "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("distill3d")
        if state:
            self._rng.set_pending(state)
            self.skipped_steps = int(state.get("skipped_steps", 0))

    # ---- evaluation (systems/evaluation.py) ----------------------------------------------------------
    def eval_shading(self) -> str:
        return "albedo" if self.cfg.shading.mode == "albedo" else "lambertian"

    def render_views(
        self, cameras: Cameras, shading: str | None = None, renderer: nn.Module | None = None
    ) -> RenderOutput:
        return evaluation.render_views(
            renderer or self.renderer,
            cameras,
            self.device,
            shading or self.eval_shading(),
            self.cfg.eval_chunk_views,
        )

    def on_validation_epoch_start(self) -> None:
        self._val_renders: list[list[RenderOutput]] = [[] for _ in self.particles]

    def validation_step(self, batch: Cameras, batch_idx: int) -> None:
        for renders, particle in zip(self._val_renders, self.particles, strict=True):
            renders.append(self.render_views(batch, renderer=particle))

    def on_validation_epoch_end(self) -> None:
        if not self._val_renders[0] or self.run_dir is None:
            return
        # One grid per particle, side by side.
        grid = np.concatenate(
            [evaluation.validation_grid(RenderOutput.cat(renders)) for renders in self._val_renders], axis=1
        )
        path = evaluation.write_validation(grid, self.run_dir, f"{self.file_prefix}it{self.global_step:06d}")
        self.artifacts.setdefault("validation", []).append(str(path))
        evaluation.log_image(self.loggers, "validation", grid, self.global_step)

    def on_test_epoch_start(self) -> None:
        self._frames: list = []

    def test_step(self, batch: Cameras, batch_idx: int) -> None:
        per_particle = [
            evaluation.turntable_frames(self.render_views(batch, renderer=particle))
            for particle in self.particles
        ]
        self._frames.extend(np.concatenate(frames, axis=1) for frames in zip(*per_particle, strict=True))

    def on_test_epoch_end(self) -> None:
        if not self._frames or self.run_dir is None:
            return
        path = evaluation.write_turntable(self._frames, self.run_dir)
        self.artifacts["video"] = str(path)
        evaluation.log_video(self.loggers, "turntable", str(path))

    def evaluate_against_scene(self, cameras: Cameras) -> dict[str, Any]:
        """PSNR against the ground truth on held-out views (empty when there is none); with several particles
        or a multi-mode target, each particle against its best-matching scene (metrics.particles)."""
        if not self.ground_truths:
            return {}
        chunk = self.cfg.eval_chunk_views
        if len(self.particles) == 1 and len(self.ground_truths) == 1:
            return evaluation.evaluate_against_scene(
                self.renderer, self.ground_truth, cameras, self.device, chunk
            )
        return evaluation.evaluate_particles(self.particles, self.ground_truths, cameras, self.device, chunk)
