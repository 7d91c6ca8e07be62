"""One distill3d run: build → train every stage → turntable → metrics → export → summary.json.

Everything that can be wrong with the input was checked by validation; the first stage's system (weights
included) is built before the run directory is created, so bad input or missing weights leave nothing behind.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from geometry.mesh.export import ExportError, ExportViews, export_geometry
from systems.app.callbacks import (
    GracefulInterrupt,
    PlainProgress,
    StepProgressBar,
    save_checkpoint_atomically,
)
from systems.app.loggers import build_logger
from systems.app.run_dir import (
    new_run_dir,
    read_summary,
    resolve_checkpoint,
    slug,
    write_config,
    write_summary,
)
from systems.app.stages import completed_stages
from systems.app.validation import ValidatedRun, ValidatedStage
from systems.data import eval_distance_fovy, orbit_cameras
from systems.datamodule import RandomCameraDataModule

log = logging.getLogger("distill3d")

# Lightning configures its loggers at import (INFO): keep the console to our own progress and results.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
for _pattern in (
    r".*LeafSpec.*",
    r".*weights_only.*",
    r".*does not have many workers.*",
    r".*limit_val_batches.*",
    r".*module\(s\) in eval mode.*",  # the frozen denoiser stays in eval mode on purpose
):
    warnings.filterwarnings("ignore", message=_pattern)


def load_weights(system, ckpt: Path) -> int:
    """Load a checkpoint's parameters into `system`; returns the step it was saved at."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    return int(state.get("global_step", 0))


class Runner:
    def __init__(self, validated: ValidatedRun) -> None:
        self.validated = validated
        self.cfg = validated.cfg
        self.multi_stage = len(validated.stages) > 1

    # ---- building -------------------------------------------------------------------------------------
    def build_system(self, vs: ValidatedStage, training: bool, run_dir: Path | None = None):
        pl.seed_everything(vs.cfg.seed, workers=True, verbose=False)
        datamodule = RandomCameraDataModule(vs.cfg.data)
        prefix = f"{vs.stage.name}-" if self.multi_stage else ""
        system = vs.system_cls.from_config(
            vs.system_cfg,
            vs.run_info(),
            datamodule.sampler,
            training=training,
            run_dir=run_dir,
            file_prefix=prefix,
        )
        return system, datamodule

    def run_directory(self) -> Path:
        cfg = self.cfg
        if cfg.resume:
            return resolve_checkpoint(cfg.resume, "resume")[0]
        if cfg.run_dir:
            return Path(cfg.run_dir)
        tag = cfg.tag or slug(cfg.prompt or Path(cfg.scene or "scene").stem)
        return new_run_dir(cfg.output_root, cfg.experiment_name, tag)

    def trainer(self, vs: ValidatedStage, run_dir: Path, callbacks: list, logger) -> pl.Trainer:
        t = vs.cfg.trainer
        interval = t.val_check_interval if 0 < t.val_check_interval <= max(t.max_steps, 1) else None
        # One bar on a terminal; plain periodic lines in a log (a redrawn bar would fill it with cursor codes).
        bar = t.enable_progress_bar and sys.stdout.isatty()
        if bar:
            callbacks = [StepProgressBar(), *callbacks]
        elif t.enable_progress_bar:
            callbacks = [PlainProgress(), *callbacks]
        return pl.Trainer(
            max_steps=t.max_steps,
            max_epochs=-1,
            accelerator=t.accelerator,
            devices=t.devices,
            precision=t.precision,
            logger=logger,
            callbacks=callbacks,
            enable_progress_bar=bar,
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
        if self.cfg.mode == "train":
            return self.train(start)
        return self.evaluate_only(start)

    def train(self, start: float) -> int:
        cfg, stages = self.cfg, self.validated.stages
        summary_before = read_summary(self.run_directory()) if cfg.resume else {}
        done = completed_stages(summary_before)
        pending = [vs for vs in stages if vs.stage.final or vs.stage.name not in done]
        first = self.build_system(pending[0], training=True)  # loads weights: before any disk write
        run_dir = self.run_directory()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, self.validated.raw)
        summary = dict(summary_before)
        summary.update(experiment=cfg.experiment_name, prompt=cfg.prompt, mode=cfg.mode, run_dir=str(run_dir))
        artifacts = summary.setdefault("artifacts", {})
        artifacts["config"] = str(run_dir / "config.yaml")
        system = trainer = None
        for i, vs in enumerate(pending):
            built = first if i == 0 else self.build_system(vs, training=True)
            system, trainer, code = self.train_stage(vs, run_dir, summary, built, start)
            if code:
                return code
        return self.finish(system, run_dir, summary, start, tester=trainer)

    def train_stage(self, vs: ValidatedStage, run_dir: Path, summary: dict, built, start: float):
        """Fit one stage (resuming its checkpoint if there is one); returns (system, trainer, exit code or 0)."""
        cfg, stage = vs.cfg, vs.stage
        system, datamodule = built
        system.run_dir = run_dir
        ckpt_path = run_dir / stage.checkpoint
        resume_ckpt = ckpt_path if cfg.resume and ckpt_path.is_file() else None
        if resume_ckpt is None:
            self.initialize(system, vs, run_dir)
        interrupt = GracefulInterrupt(ckpt_path)
        logger = build_logger(cfg.logger, run_dir, version=stage.name if self.multi_stage else "")
        trainer = self.trainer(vs, run_dir, [interrupt], logger)
        train_start = time.perf_counter()
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
        if interrupt.received is None:
            save_checkpoint_atomically(trainer, ckpt_path)
        record = {
            "name": stage.name,
            "steps": trainer.global_step,
            "train_seconds": time.perf_counter() - train_start,
        }
        record["status"] = "interrupted" if interrupt.received is not None else "completed"
        stages = [s for s in summary.get("stages", []) if s["name"] != stage.name]
        summary["stages"] = sorted(
            [*stages, record], key=lambda s: [x.stage.name for x in self.validated.stages].index(s["name"])
        )
        summary.update(
            steps=trainer.global_step,
            skipped_steps=system.skipped_steps,
            train_seconds=record["train_seconds"],
        )
        artifacts = summary["artifacts"]
        artifacts["checkpoint"] = str(ckpt_path)
        artifacts["validation"] = artifacts.get("validation", []) + system.artifacts.get("validation", [])
        if interrupt.received is None:
            return system, trainer, 0
        summary.update(status="interrupted", stage=stage.name, wall_seconds=time.perf_counter() - start)
        write_summary(run_dir, summary)
        print(
            f"distill3d: {interrupt.signal_name} received at step {trainer.global_step}"
            f"{f' of stage {stage.name}' if self.multi_stage else ''}: checkpoint saved to {ckpt_path}\n"
            f"continue with: distill3d resume={run_dir}"
        )
        return system, trainer, 128 + int(interrupt.received)

    def initialize(self, system, vs: ValidatedStage, run_dir: Path) -> None:
        """A fresh stage starts from an earlier stage (init_from) or, for the first, from weights=."""
        stage = vs.stage
        if stage.init_from is not None:
            source_vs = next(s for s in self.validated.stages if s.stage.name == stage.init_from)
            source, _ = self.build_system(source_vs, training=False)
            load_weights(source, run_dir / source_vs.stage.checkpoint)
            system.geometry.init_from(source.geometry)
            log.info("stage %s initialized from stage %s", stage.name, stage.init_from)
        elif self.cfg.weights and stage.index == 0:
            load_weights(system, resolve_checkpoint(self.cfg.weights, "weights")[1])

    def evaluate_only(self, start: float) -> int:
        """mode=test|export: the final stage's system from a checkpoint, no training, no weights loaded."""
        cfg, vs = self.cfg, self.validated.final
        system, _ = self.build_system(vs, training=False)
        what, target = ("resume", cfg.resume) if cfg.resume else ("weights", cfg.weights)
        run_dir, ckpt = resolve_checkpoint(target, what)
        steps = load_weights(system, ckpt)
        system.run_dir = run_dir
        summary = read_summary(run_dir) if cfg.resume else {}
        summary.update(experiment=cfg.experiment_name, prompt=cfg.prompt, mode=cfg.mode, run_dir=str(run_dir))
        summary.setdefault("steps", steps)
        summary.setdefault("artifacts", {})["config"] = str(run_dir / "config.yaml")
        return self.finish(system, run_dir, summary, start, tester=None)

    def finish(self, system, run_dir: Path, summary: dict, start: float, tester: pl.Trainer | None) -> int:
        """Turntable, metrics against the ground truth, export, summary.json, the closing report.

        tester: the training run's trainer (its loggers get the turntable); None in test/export mode, where a
        trainer without loggers renders it (a new logger would clear the training run's logs)."""
        cfg, vs = self.cfg, self.validated.final
        training = tester is not None
        artifacts = summary.setdefault("artifacts", {})
        if cfg.mode in ("train", "test"):
            tester = tester or self.trainer(vs, run_dir, [], False)
            tester.test(system, datamodule=RandomCameraDataModule(vs.cfg.data), verbose=False)
            if "video" in system.artifacts:
                artifacts["video"] = system.artifacts["video"]
        metrics = self.evaluate(system)
        if metrics:
            summary["metrics"] = {**summary.get("metrics", {}), **metrics}
        if cfg.mode == "export" or (training and cfg.export.enabled):
            self.export(system, run_dir, summary, required=cfg.mode == "export")
        summary.update(status="completed", wall_seconds=time.perf_counter() - start)
        summary.pop("stage", None)
        write_summary(run_dir, summary)
        self.report(run_dir, summary)
        return 0

    def evaluate(self, system) -> dict[str, float]:
        e, data = self.cfg.eval, self.validated.final.cfg.data
        if system.ground_truth is None or e.n_views <= 0:
            return {}
        return system.evaluate_against_scene(
            orbit_cameras(data, e.n_views, e.elevation, e.azimuth_offset, e.height)
        )

    def export(self, system, run_dir: Path, summary: dict, required: bool) -> None:
        """Mesh + UV atlas + baked texture (+ representation files) → export/. A training run whose export
        finds no surface still completes: the skip and its reason go into summary.json."""
        data = self.validated.final.cfg.data
        distance, fovy = eval_distance_fovy(data)
        system.eval()
        views = ExportViews(system.renderer, distance, fovy, data.eval_elevation)
        try:
            result = export_geometry(system.geometry, self.cfg.export, run_dir / "export", views)
        except ExportError as e:
            if required:
                raise
            log.warning("export skipped: %s", e)
            summary["export"] = {"status": "skipped", "reason": str(e)}
            summary["artifacts"].pop("export", None)
            return
        log.info("exported %s", ", ".join(result.files.values()))
        summary["artifacts"]["export"] = result.files
        summary["export"] = {"status": "completed", **result.info}
        summary["export_seconds"] = result.timings

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
