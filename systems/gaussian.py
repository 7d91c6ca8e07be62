"""3D Gaussian splatting recipes: DreamGaussian (SD SDS, Tang et al. 2023) and the offline Gaussian demo.

Same loop as every system (render random cameras → guidance → backward); what differs is that the number of
parameters changes: after each optimizer step the densify strategy (geometry/gaussians/densify.py) reads the
view-space gradients the renderer kept in its output, and every `densify.interval` steps clones / splits /
prunes Gaussians together with their Adam moments. Learning rates are per parameter, the means' decaying
exponentially (3DGS's expon_lr) over `position_lr_steps`. Checkpoints hold however many Gaussians the run had.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from geometry.gaussians.densify import DensifyConfig, DensifyStrategy
from geometry.render_output import RenderOutput
from systems.base import BaseSystem
from systems.config import SystemConfig
from systems.optim import lr_factor


@dataclass
class GaussianSystemConfig(SystemConfig):
    """SystemConfig plus densification and the means' learning-rate decay.

    position_lr_group: the optimizer.param_groups prefix whose lr decays exponentially to position_lr_final over
    position_lr_steps (None = the whole run), then stays there (3DGS / DreamGaussian); every other group follows
    optimizer.lr_scheduler.
    """

    densify: DensifyConfig = field(default_factory=DensifyConfig)
    position_lr_group: str = "geometry.means"
    position_lr_final: float = 2e-5
    position_lr_steps: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.position_lr_final <= 0:
            raise ValueError("system.position_lr_final must be positive")
        if self.position_lr_steps is not None and self.position_lr_steps < 1:
            raise ValueError("system.position_lr_steps must be >= 1 (or null for the whole run)")


def exponential_lr_factor(step: int, steps: int, lr_init: float, lr_final: float) -> float:
    """lr(step) / lr_init for log-linear interpolation lr_init → lr_final over `steps` (3DGS's expon_lr)."""
    r = min(max(step / max(steps, 1), 0.0), 1.0)
    return (lr_final / lr_init) ** r


class GaussianSplatting(BaseSystem):
    """Gaussians + a guidance (SDS with SD 2.1-base in DreamGaussian; the analytic oracle in the demo)."""

    Config = GaussianSystemConfig
    cfg: GaussianSystemConfig

    def __init__(self, cfg: GaussianSystemConfig, *args, **kwargs) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.densifier = DensifyStrategy(cfg.densify, self.geometry)
        # One densifier per particle (each tracks its own Gaussians' statistics); the first keeps the old key.
        self.extra_densifiers = nn.ModuleList(
            DensifyStrategy(cfg.densify, p.geometry) for p in self.extra_particles
        )
        self.densify_stats: dict[str, int] = {}

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        cfg, steps = self.cfg, self.run.max_steps
        position_steps = cfg.position_lr_steps or steps
        lambdas = []
        for group in optimizer.param_groups:
            if group["name"] == cfg.position_lr_group:
                lr0 = group["lr"]
                lambdas.append(
                    lambda s, lr0=lr0: exponential_lr_factor(s, position_steps, lr0, cfg.position_lr_final)
                )
            else:
                lambdas.append(lambda s: lr_factor(cfg.optimizer, s, steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def after_optimizer_step(self, render: RenderOutput, step: int, particle: int = 0) -> None:
        densifier = self.densifier if particle == 0 else self.extra_densifiers[particle - 1]
        densifier.accumulate(render.extras["means2d"], render.extras["radii"], render.width, render.height)
        # Densification finds each tensor in the optimizer by identity, so particles sharing group names is fine.
        stats = densifier.step(step, self.particles[particle].geometry, self.optimizers().optimizer)
        if stats:
            self.densify_stats = stats
            name = "train/num_gaussians" if particle == 0 else f"train/num_gaussians_{particle}"
            self.log(name, float(stats["num_gaussians"]))
