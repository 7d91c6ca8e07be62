"""BaseSystem: the LightningModule that drives one score-distillation run.

It only orchestrates: geometry/renderer (geometry/), guidance and prompts (distill/) are plain modules built
from typed configs. Optimization is manual so that a step whose loss or gradients are not finite can be
skipped (counted, warned about) instead of corrupting Adam's moments. The frozen diffusion model is kept
outside the module tree, so it never enters checkpoints.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.render_output import RenderOutput
from systems.config_utils import ConfigError, instantiate
from systems.optim import build_lr_scheduler, build_optimizer
from systems.system_config import RunInfo, SystemConfig

log = logging.getLogger("distill3d")


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """numpy's RNG state as tensors and Python numbers: checkpoints stay loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state_from_plain(plain: dict[str, Any]) -> tuple:
    keys = plain["keys"].numpy().astype(np.uint32)
    return plain["kind"], keys, plain["pos"], plain["has_gauss"], plain["cached"]


class NonFiniteAbort(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class BaseSystem(pl.LightningModule):
    def __init__(self, cfg: SystemConfig, run: RunInfo) -> None:
        super().__init__()
        self.cfg, self.run = cfg, run
        self.automatic_optimization = False
        self.geometry = instantiate(cfg.geometry, "system.geometry")
        self.material = instantiate(cfg.material, "system.material")
        self.background = instantiate(cfg.background, "system.background")
        self.renderer = instantiate(
            cfg.renderer, "system.renderer", self.geometry, self.material, self.background
        )
        self.loss_weights = cfg.loss.schedules()
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0
        self.camera_sampler = None  # set by the launcher (systems.data.RandomCameraSampler)
        self._frozen: dict[str, Any] = {}  # guidance + prompt embeddings: frozen, never in state_dict

    # ---- frozen parts (built after validation, before training) -------------------------------------
    @property
    def guidance(self):
        return self._frozen["guidance"]

    @property
    def prompt_embeddings(self):
        return self._frozen["prompt_embeddings"]

    def set_guidance(self, guidance: Any, prompt_embeddings: Any) -> None:
        self._frozen["guidance"] = guidance
        self._frozen["prompt_embeddings"] = prompt_embeddings

    def on_fit_start(self) -> None:
        guidance = self._frozen.get("guidance")
        if guidance is not None and hasattr(guidance, "to"):
            guidance.to(self.device)
        if self._frozen.get("prompt_embeddings") is not None and hasattr(self.prompt_embeddings, "to"):
            self._frozen["prompt_embeddings"] = self.prompt_embeddings.to(self.device)

    # ---- the one place where step-dependent values move ---------------------------------------------
    def update_step(self, step: int) -> dict[str, float]:
        for module in (self.geometry, self.renderer):
            if hasattr(module, "set_step"):
                module.set_step(step)
        if hasattr(self.renderer, "update_occupancy") and self.training:
            self.renderer.update_occupancy(step)
        return {name: sched(step) for name, sched in self.loss_weights.items()}

    def shading_mode(self, step: int) -> str:
        s = self.cfg.shading
        if s.mode == "albedo" or step < s.ambient_only_steps:
            return "albedo"
        return "textureless" if random.random() < s.textureless_prob else "lambertian"

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self._restore_rng()
        step = self.global_step
        weights = self.update_step(step)
        cameras = self.camera_sampler.sample(step).to(self.device)
        render = self.renderer(cameras, shading=self.shading_mode(step))
        losses = self.compute_losses(render, cameras, step)
        total = sum(weights[name] * value for name, value in losses.items() if weights[name] != 0.0)
        self.optimize(total, step)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False)
        self.log("train/loss", total.detach(), prog_bar=True)

    def compute_losses(self, render: RenderOutput, cameras: Cameras, step: int) -> dict[str, Tensor]:
        """Guidance loss and regularizers, each unweighted; keys are the loss-weight names."""
        out = self.guidance(render, cameras, self.prompt_embeddings, step)
        self.log("train/grad_norm", out.grad_norm.detach().float().mean(), prog_bar=True)
        self.log("train/t", out.t.float().mean())
        losses = {"lambda_guidance": out.loss}
        opacity = render.opacity.clamp(1e-5, 1.0 - 1e-5)
        losses["lambda_sparsity"] = (opacity**2 + 0.01).sqrt().mean()
        losses["lambda_opaque"] = -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()
        if "orientation_loss" in render.extras:
            losses["lambda_orient"] = render.extras["orientation_loss"].mean()
        if "z_variance" in render.extras:
            z_var = render.extras["z_variance"]
            losses["lambda_z_variance"] = (z_var * (render.opacity > 0.5).to(z_var.dtype)).mean()
        return losses

    def optimize(self, loss: Tensor, step: int) -> None:
        """One manual optimizer step; a non-finite loss or gradient skips the step (DESIGN: robustness)."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._skip(step, f"loss is {loss.item()}")
            return
        self.manual_backward(loss)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all():
            opt.zero_grad(set_to_none=True)
            self._skip(step, "a gradient is not finite")
            return
        self._nonfinite_in_a_row = 0
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

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

    def configure_optimizers(self):
        try:
            optimizer = build_optimizer(self.cfg.optimizer, self.named_parameters())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        scheduler = build_lr_scheduler(self.cfg.optimizer, optimizer, self.run.max_steps)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- exact resume: RNG states travel with the checkpoint ------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["distill3d"] = {
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "rng_numpy": _numpy_state_to_plain(np.random.get_state()),
            "rng_python": random.getstate(),
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("distill3d")
        if not state:
            return
        self._pending_rng = state
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def _restore_rng(self) -> None:
        """Restore the checkpoint's RNG states at the first resumed step itself, so that nothing Lightning
        draws while starting up (e.g. a DataLoader's base seed) shifts the random stream of training."""
        state = getattr(self, "_pending_rng", None)
        if state is None:
            return
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        np.random.set_state(_numpy_state_from_plain(state["rng_numpy"]))
        random.setstate(state["rng_python"])
        self._pending_rng = None
