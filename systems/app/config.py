"""The typed top-level run configuration (DESIGN.md §5), validated before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from geometry.mesh.export_config import ExportConfig
from systems.data import RandomCameraConfig

MODES = ("train", "test", "export")
LOGGERS = ("csv", "tensorboard", "wandb", "none")


@dataclass
class TrainerConfig:
    """Passed to pytorch_lightning.Trainer (GPU when present, CPU otherwise with accelerator=auto)."""

    max_steps: int = 1000
    val_check_interval: int = 200  # training steps between validation grids (0 = never)
    log_every_n_steps: int = 10
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"  # "16-mixed" on GPUs for fp16 speed
    enable_progress_bar: bool = True

    def validate(self) -> None:
        if self.max_steps < 0:
            raise ValueError(
                f"trainer.max_steps must be >= 0, got {self.max_steps}: pass a non-negative step count"
            )
        if self.val_check_interval < 0:
            raise ValueError(f"trainer.val_check_interval must be >= 0, got {self.val_check_interval}")
        if self.log_every_n_steps < 1:
            raise ValueError("trainer.log_every_n_steps must be >= 1")


@dataclass
class LoggerConfig:
    """Experiment tracking: csv (default), tensorboard, wandb (offline when no server is reachable), none."""

    type: str = "csv"
    project: str = "distill3d"
    name: str | None = None  # default: the run directory's name
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    entity: str | None = None

    def validate(self) -> None:
        if self.type not in LOGGERS:
            raise ValueError(f"logger.type must be one of {LOGGERS}, got '{self.type}'")


@dataclass
class EvalConfig:
    """Held-out orbit views for the ground-truth PSNR (only when the prior is the analytic oracle)."""

    n_views: int = 8
    elevation: float = 20.0
    azimuth_offset: float = 22.5  # degrees; keeps the views off the validation orbit
    height: int = 64


@dataclass
class RunConfig:
    experiment_name: str = "demo"
    mode: str = "train"
    prompt: str = ""
    negative_prompt: str = ""
    scene: str | None = None
    seed: int = 0
    tag: str | None = None
    resume: str | None = None
    weights: str | None = None
    run_dir: str | None = None
    output_root: str = "outputs"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    data: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    system: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")
        if self.mode in ("test", "export") and not (self.resume or self.weights):
            raise ValueError(f"mode={self.mode} needs resume=<run dir or .ckpt> naming a trained run")
        if self.resume and self.weights:
            raise ValueError(
                "give either resume= (continue a run) or weights= (start from its weights), not both"
            )
        if not self.prompt and not self.scene:
            raise ValueError('no prompt: pass prompt="..." (or scene=<file.yaml> for the oracle prior)')
        if "_target_" not in self.system and not self.stages:
            raise ValueError("system._target_ is missing: choose an experiment (experiment=demo, ...)")
