"""The typed top-level run configuration (DESIGN.md §5), validated before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from geometry.mesh.export_config import ExportConfig
from systems.data import RandomCameraConfig

MODES = ("train", "test", "export")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Lightning's precision names that this project trains with: fp32 weights, optional fp16/bf16 autocast.
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true", "64")
LOGGERS = ("csv", "tensorboard", "wandb", "none")


@dataclass
class TrainerConfig:
    """Passed to pytorch_lightning.Trainer (GPU when present, CPU otherwise with accelerator=auto)."""

    max_steps: int = 1000
    val_check_interval: int = 200  # training steps between validation grids (0 = never)
    log_every_n_steps: int = 10
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"  # "16-mixed" on GPUs (fp16 autocast), "bf16-mixed" on GPUs or CPUs
    enable_progress_bar: bool = True

    def validate(self) -> None:
        self.validate_hardware()
        if self.max_steps < 0:
            raise ValueError(
                f"trainer.max_steps must be >= 0, got {self.max_steps}: pass a non-negative step count"
            )
        if self.val_check_interval < 0:
            raise ValueError(f"trainer.val_check_interval must be >= 0, got {self.val_check_interval}")
        if self.log_every_n_steps < 1:
            raise ValueError("trainer.log_every_n_steps must be >= 1")

    def validate_hardware(self) -> None:
        """What Lightning would reject with a traceback (or accept and then crash on), in one line."""
        import torch

        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"trainer.accelerator={self.accelerator}: use one of {', '.join(ACCELERATORS)}")
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"trainer.accelerator={self.accelerator} but no CUDA GPU is visible (torch {torch.__version__},"
                f" {build}): use trainer.accelerator=auto (the CPU here) or cpu, or install a CUDA torch"
            )
        if self.accelerator == "mps" and not torch.backends.mps.is_available():
            raise ValueError(
                "trainer.accelerator=mps but Apple's MPS is not available: use trainer.accelerator=auto"
            )
        if self.devices != 1:
            raise ValueError(
                f"trainer.devices={self.devices}: one device per run for now; run a sweep (-m) to use several"
            )
        if str(self.precision) not in PRECISIONS:
            hint = (
                " (pure half weights break the hash grid and Adam's eps)"
                if "true" in str(self.precision)
                else ""
            )
            raise ValueError(
                f"trainer.precision={self.precision}{hint}: use one of {', '.join(PRECISIONS)}"
                " (16-mixed / bf16-mixed: fp32 weights with fp16 / bf16 autocast)"
            )

    def resolved_precision(self) -> str:
        """fp16 autocast is CUDA-only: on a CPU, 16-mixed runs as bf16-mixed (what Lightning does too, with a
        warning)."""
        import torch

        on_cpu = self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())
        return "bf16-mixed" if str(self.precision) == "16-mixed" and on_cpu else str(self.precision)


@dataclass
class CheckpointConfig:
    """Periodic checkpoints (systems/app/checkpoints.py): every N steps or M minutes, whichever comes first
    (0 turns either off); the last `keep_last` are kept as ckpts/step-NNNNNN.ckpt."""

    every_n_steps: int = 500
    every_minutes: float = 2.0
    keep_last: int = 2

    def validate(self) -> None:
        if self.every_n_steps < 0 or self.every_minutes < 0 or self.keep_last < 0:
            raise ValueError("checkpoint.every_n_steps, every_minutes and keep_last must be >= 0 (0 = off)")


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
    overwrite: bool = False  # with run_dir=: replace the run already there (its files are deleted first)
    output_root: str = "outputs"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
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
        if self.mode == "export" or (self.mode == "train" and self.export.enabled):
            self.export.check_memory()
        if self.overwrite and not self.run_dir:
            raise ValueError("overwrite=true needs run_dir=<the run directory to replace>")
        if not self.prompt and not self.scene:
            raise ValueError('no prompt: pass prompt="..." (or scene=<file.yaml> for the oracle prior)')
        if "_target_" not in self.system and not self.stages:
            raise ValueError("system._target_ is missing: choose an experiment (experiment=demo, ...)")
