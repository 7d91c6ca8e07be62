"""One distill3d run: validate → build → (train) → turntable → metrics → export → summary.json.

Everything that can be wrong with the input is checked before the run directory is created or any weights
load, so bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from systems.callbacks import GracefulInterrupt, StepProgressBar, save_checkpoint_atomically
from systems.config_utils import ConfigError
from systems.data import orbit_cameras
from systems.datamodule import RandomCameraDataModule
from systems.guidance_factory import build_frozen_parts
from systems.loggers import build_logger
from systems.run_config import RunConfig
from systems.run_dir import (
    CKPT_NAME,
    new_run_dir,
    read_summary,
    resolve_checkpoint,
    slug,
    write_config,
    write_summary,
)
from systems.system_config import RunInfo, SystemConfig
from systems.validation import ORACLE, ValidatedRun, guidance_model, oracle_scene

log = logging.getLogger("distill3d")

# Lightning configures its loggers at import (INFO): keep the console to our own progress and results.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*weights_only.*")
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*limit_val_batches.*")


@dataclass
class Runner:
    raw: dict[str, Any]
    cfg: RunConfig
    system_cls: type
    system_cfg: SystemConfig

    @classmethod
    def from_validated(cls, v: ValidatedRun) -> Runner:
        return cls(v.raw, v.cfg, v.system_cls, v.system_cfg)

    # ---- building -------------------------------------------------------------------------------------
    def build_system(self):
        cfg = self.cfg
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        run = RunInfo(cfg.prompt, cfg.negative_prompt, cfg.scene, cfg.trainer.max_steps, cfg.seed)
        system = self.system_cls(self.system_cfg, run)
        datamodule = RandomCameraDataModule(cfg.data)
        system.camera_sampler = datamodule.sampler
        return system, datamodule

    def attach_frozen(self, system, training: bool) -> None:
        cfg, scfg = self.cfg, self.system_cfg
        if training:
            parts = build_frozen_parts(
                scfg.guidance,
                scfg.prompt_processor,
                cfg.prompt,
                cfg.negative_prompt,
                cfg.scene,
                cfg.trainer.max_steps,
            )
            system.set_guidance(parts.guidance, parts.prompt_embeddings)
            system.scene = parts.scene
        elif guidance_model(scfg.guidance) == ORACLE:
            system.scene = oracle_scene(cfg.prompt, cfg.scene)

    def run_directory(self) -> Path:
        cfg = self.cfg
        if cfg.resume:
            return resolve_checkpoint(cfg.resume, "resume")[0]
        if cfg.run_dir:
            return Path(cfg.run_dir)
        tag = cfg.tag or slug(cfg.prompt or Path(cfg.scene or "scene").stem)
        return new_run_dir(cfg.output_root, cfg.experiment_name, tag)

    def trainer(self, run_dir: Path, callbacks: list, logger) -> pl.Trainer:
        t = self.cfg.trainer
        interval = t.val_check_interval if 0 < t.val_check_interval <= max(t.max_steps, 1) else None
        return pl.Trainer(
            max_steps=t.max_steps,
            max_epochs=-1,
            accelerator=t.accelerator,
            devices=t.devices,
            precision=t.precision,
            logger=logger,
            callbacks=[StepProgressBar(), *callbacks] if t.enable_progress_bar else callbacks,
            enable_progress_bar=t.enable_progress_bar,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            val_check_interval=interval,
            check_val_every_n_epoch=None,
            limit_val_batches=1.0 if interval else 0,
            log_every_n_steps=t.log_every_n_steps,
            inference_mode=False,  # analytic normals need autograd during evaluation
            default_root_dir=str(run_dir),
        )

    # ---- running -------------------------------------------------------------------------------------
    def run(self, start: float) -> int:
        cfg = self.cfg
        training = cfg.mode == "train"
        system, datamodule = self.build_system()
        self.attach_frozen(system, training)  # loads weights: after validation, before any disk write
        run_dir = self.run_directory()
        ckpt_path = run_dir / CKPT_NAME
        run_dir.mkdir(parents=True, exist_ok=True)
        if training:
            write_config(run_dir, self.raw)
        system.run_dir = run_dir
        logger = build_logger(cfg.logger, run_dir)
        interrupt = GracefulInterrupt(ckpt_path)
        trainer = self.trainer(run_dir, [interrupt], logger)
        summary = read_summary(run_dir) if cfg.resume else {}
        summary.update(experiment=cfg.experiment_name, prompt=cfg.prompt, mode=cfg.mode, run_dir=str(run_dir))
        artifacts = summary.setdefault("artifacts", {})
        artifacts["config"] = str(run_dir / "config.yaml")

        if training:
            resume_ckpt = resolve_checkpoint(cfg.resume, "resume")[1] if cfg.resume else None
            if cfg.weights:
                load_weights(system, resolve_checkpoint(cfg.weights, "weights")[1])
            train_start = time.perf_counter()
            trainer.fit(system, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
            summary["train_seconds"] = time.perf_counter() - train_start
            if interrupt.received is None:
                save_checkpoint_atomically(trainer, ckpt_path)
            artifacts["checkpoint"] = str(ckpt_path)
            summary.update(steps=trainer.global_step, skipped_steps=system.skipped_steps)
            artifacts["validation"] = artifacts.get("validation", []) + system.artifacts.get("validation", [])
            if interrupt.received is not None:
                summary.update(status="interrupted", wall_seconds=time.perf_counter() - start)
                write_summary(run_dir, summary)
                print(
                    f"distill3d: {interrupt.signal_name} received at step {trainer.global_step}: checkpoint saved"
                    f" to {ckpt_path}\ncontinue with: distill3d resume={run_dir}"
                )
                return 128 + int(interrupt.received)
        else:
            what, target = ("resume", cfg.resume) if cfg.resume else ("weights", cfg.weights)
            steps = load_weights(system, resolve_checkpoint(target, what)[1])
            summary.setdefault("steps", steps)

        if cfg.mode in ("train", "test"):
            trainer.test(system, datamodule=datamodule, verbose=False)
            if "video" in system.artifacts:
                artifacts["video"] = system.artifacts["video"]
        metrics = self.evaluate(system)
        if metrics:
            summary["metrics"] = {**summary.get("metrics", {}), **metrics}
        if cfg.mode == "export" or (training and cfg.export.enabled):
            timings: dict[str, float] = {}
            artifacts["export"] = self.export(system, run_dir, timings)
            summary["export_seconds"] = timings
        summary.update(status="completed", wall_seconds=time.perf_counter() - start)
        write_summary(run_dir, summary)
        self.report(run_dir, summary)
        return 0

    def evaluate(self, system) -> dict[str, float]:
        e = self.cfg.eval
        if system.scene is None or e.n_views <= 0:
            return {}
        cams = orbit_cameras(self.cfg.data, e.n_views, e.elevation, e.azimuth_offset, e.height)
        return system.evaluate_against_scene(cams)

    def export(self, system, run_dir: Path, timings: dict[str, float]) -> dict[str, str]:
        """Mesh + UV atlas + baked texture → export/ (GLB, OBJ, PLY as configured)."""
        from systems.export import export_field, opacity_probe_from_renderer

        cfg = self.cfg
        probe_cams = orbit_cameras(cfg.data, 8, cfg.data.eval_elevation, 0.0, 64)
        system.eval()
        with torch.no_grad():
            probe = opacity_probe_from_renderer(
                lambda cams: system.renderer(cams.to(system.device), shading="albedo"), probe_cams
            )
        # Hook: a system may write representation-specific files too (e.g. the Gaussians' .ply).
        extra = getattr(system, "export_artifacts", None)
        extra_paths = extra(run_dir / "export") if callable(extra) else {}
        paths = export_field(system.geometry, cfg.export, run_dir / "export", probe, timings=timings)
        paths.update(extra_paths)
        log.info("exported %s", ", ".join(str(p) for p in paths.values()))
        return {fmt: str(p) for fmt, p in paths.items()}

    @staticmethod
    def report(run_dir: Path, summary: dict[str, Any]) -> None:
        metrics = summary.get("metrics", {})
        if "psnr" in metrics:
            print(
                f"PSNR vs analytic ground truth: {metrics['psnr']:.2f} dB (min {metrics['psnr_min']:.2f} dB) over"
                f" {metrics['psnr_views']} held-out views"
            )
        print(
            f"wall time: {summary['wall_seconds']:.1f} s, steps: {summary.get('steps', 0)},"
            f" skipped steps: {summary.get('skipped_steps', 0)}"
        )
        print(f"run directory: {run_dir}")


def load_weights(system, ckpt: Path) -> int:
    """Load a checkpoint's parameters into `system`; returns the step it was saved at."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    missing, unexpected = system.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {ckpt} does not fit this system (missing {len(missing)}, unexpected {len(unexpected)} keys):"
            " use the same experiment and geometry settings it was trained with"
        )
    return int(state.get("global_step", 0))
