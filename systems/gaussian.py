"""3D Gaussian splatting systems: DreamGaussian (SD SDS, Tang et al. 2023) and the offline Gaussian demo.

Same loop as DreamFusion (render random cameras → guidance → backward); what differs is that the number of
parameters changes: after each optimizer step the densify strategy (geometry/densify.py) reads the view-space
gradients the renderer kept, and every `densify.interval` steps clones / splits / prunes Gaussians together
with their Adam moments. Learning rates are per parameter, the means' decaying exponentially (REFERENCE.md:
1e-3 → 2e-5). Checkpoints hold however many Gaussians the run had; loading resizes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from geometry.densify import DensifyConfig, DensifyStrategy
from geometry.gaussians_io import write_gaussians_ply
from systems.config_utils import ConfigError
from systems.dreamfusion import DreamFusion
from systems.optim import build_optimizer, lr_factor
from systems.system_config import SystemConfig


@dataclass
class GaussianSystemConfig(SystemConfig):
    """SystemConfig plus densification and the means' learning-rate decay.

    position_lr_group: the optimizer.param_groups prefix whose lr decays exponentially to position_lr_final
    over the run (3DGS / DreamGaussian); every other group keeps its lr.
    """

    densify: DensifyConfig = field(default_factory=DensifyConfig)
    position_lr_group: str = "geometry.means"
    position_lr_final: float = 2e-5

    def validate(self) -> None:
        super().validate()
        if self.position_lr_final <= 0:
            raise ValueError("system.position_lr_final must be positive")


def exponential_lr_factor(step: int, max_steps: int, lr_init: float, lr_final: float) -> float:
    """lr(step) / lr_init for log-linear interpolation lr_init → lr_final over max_steps (3DGS's expon_lr)."""
    r = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return (lr_final / lr_init) ** r


class GaussianSplatting(DreamFusion):
    """Gaussians + a guidance (SDS with SD 2.1-base in DreamGaussian; the analytic oracle in the demo)."""

    Config = GaussianSystemConfig

    def __init__(self, cfg: GaussianSystemConfig, run) -> None:
        super().__init__(cfg, run)
        self.densifier = DensifyStrategy(cfg.densify, self.geometry)
        self.densify_stats: dict[str, int] = {}

    def configure_optimizers(self):
        try:
            optimizer = build_optimizer(self.cfg.optimizer, self.named_parameters())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        cfg, steps = self.cfg, self.run.max_steps
        lambdas = []
        for group in optimizer.param_groups:
            if group["name"] == cfg.position_lr_group:
                lr0 = group["lr"]
                lambdas.append(lambda s, lr0=lr0: exponential_lr_factor(s, steps, lr0, cfg.position_lr_final))
            else:
                lambdas.append(lambda s: lr_factor(cfg.optimizer, s, steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimize(self, loss, step: int) -> None:
        skipped = self.skipped_steps
        super().optimize(loss, step)
        if self.skipped_steps != skipped:
            return
        height, width = self.renderer.last_size
        self.densifier.accumulate(self.renderer.last_info, width, height)
        stats = self.densifier.step(step, self.geometry, self.optimizers().optimizer)
        if stats:
            self.densify_stats = stats
            self.log("train/num_gaussians", float(stats["num_gaussians"]))

    # ---- export: the .ply beside the mesh (runner hook `export_artifacts`) ------------------------------
    def export_artifacts(self, out_dir: Path) -> dict[str, str]:
        tensors = {name: getattr(self.geometry, name) for name in self.geometry.state_dict()}
        path = write_gaussians_ply(Path(out_dir) / "gaussians.ply", tensors)
        return {"gaussians_ply": str(path)}
