"""One distill3d run: build → train every stage → turntable → metrics → export → summary.json.

Everything that can be wrong with the input was checked by validation; the first stage's system is built, its
weights loaded and any checkpoint it resumes from read before the run directory is claimed (systems/app/claim.py),
so bad input, missing weights or a corrupt checkpoint leave nothing written. From then on the run always ends
with a summary.json status: completed, interrupted (a signal; exit 128 + its number) or failed (the error).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from geometry.mesh.export import ExportError, export_geometry
from systems.app.callbacks import PlainProgress, StepProgressBar
from systems.app.checkpoints import (
    PeriodicCheckpoint,
    init_particles,
    load_weights,
    other_representation,
    save_checkpoint_atomically,
)
from systems.app.claim import RunLock, claim_existing, claim_explicit, claim_new
from systems.app.interrupts import InterruptCallback, Interrupts, RunInterrupted
from systems.app.loggers import build_logger
from systems.app.run_dir import read_summary, resolve_checkpoint, slug, write_config, write_summary
from systems.app.stages import completed_stages
from systems.app.validation import ValidatedRun, ValidatedStage
from systems.data import export_views, orbit_cameras
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


class Runner:
    def __init__(self, validated: ValidatedRun) -> None:
        self.validated = validated
        self.cfg = validated.cfg
        self.multi_stage = len(validated.stages) > 1
        self.interrupts = Interrupts()
        self.phase: dict[str, Any] = {"phase": "start"}  # where the run is, for an interrupted/failed summary

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

    def claim(self) -> tuple[Path, RunLock, bool]:
        """(run directory, its lock, whether it was created now): resume/test/export lock the run they name;
        run_dir= is refused when it holds a run (unless overwrite=true); a new run gets a new directory."""
        cfg = self.cfg
        if cfg.resume or cfg.mode != "train":
            target, what = (cfg.resume, "resume") if cfg.resume else (cfg.weights, "weights")
            run_dir = resolve_checkpoint(target, what, need_final=cfg.mode != "train")[0]
            return run_dir, claim_existing(run_dir), False
        if cfg.run_dir:
            run_dir = Path(cfg.run_dir)
            existed = run_dir.exists()
            lock = claim_explicit(run_dir, cfg.overwrite, read_summary(run_dir).get("status"))
            return run_dir, lock, not existed
        tag = cfg.tag or slug(cfg.prompt or Path(cfg.scene or "scene").stem)
        run_dir, lock = claim_new(cfg.output_root, cfg.experiment_name, tag)
        return run_dir, lock, True

    def trainer(
        self, vs: ValidatedStage, run_dir: Path, callbacks: list, logger, checkpoint: Path | None = None
    ) -> pl.Trainer:
        """checkpoint: where a signal during training saves the state (the stage checkpoint)."""
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
            precision=t.resolved_precision(),
            logger=logger,
            callbacks=[InterruptCallback(self.interrupts, checkpoint), *callbacks],
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
        prepared = self.prepare_training() if self.cfg.mode == "train" else self.prepare_evaluation()
        run_dir, lock, created = self.claim()
        summary: dict[str, Any] = read_summary(run_dir) if self.cfg.resume else {}
        self.interrupts.install()
        try:
            if self.cfg.mode == "train":
                return self.train(prepared, run_dir, summary, start)
            return self.evaluate_only(prepared, run_dir, summary, start)
        except RunInterrupted:
            return self.stopped(run_dir, summary, start, "interrupted")
        except BaseException as e:
            if created and self.phase["phase"] == "start":
                lock.release()
                shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves nothing behind
            else:
                summary["error"] = (
                    f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                )
                self.stopped(run_dir, summary, start, "failed")
            raise
        finally:
            self.interrupts.uninstall()
            lock.release()

    def stopped(self, run_dir: Path, summary: dict, start: float, status: str) -> int:
        """Record an interrupted or failed training run in summary.json (mode=test|export leave the trained
        run's record as it was); returns the exit code of an interrupt."""
        if self.cfg.mode == "train":
            summary.update(status=status, stopped=dict(self.phase), wall_seconds=time.perf_counter() - start)
            write_summary(run_dir, summary)
        if status == "interrupted":
            where = " ".join(f"{k} {v}" for k, v in self.phase.items() if k != "phase")
            print(
                f"distill3d: {self.interrupts.signal_name} received during {self.phase['phase']}"
                f"{f' ({where})' if where else ''}; summary: {run_dir / 'summary.json'}\n"
                f"continue with: distill3d resume={run_dir}"
            )
        return self.interrupts.exit_code

    def prepare_training(self):
        """The first pending stage's system, with its weights= or resume checkpoint read and loaded: a broken
        checkpoint fails here, before the run directory is touched. Returns (pending stages, built, resume), resume
        the (checkpoint, its step) the first stage continues from, or None."""
        cfg, stages = self.cfg, self.validated.stages
        run_dir = resolve_checkpoint(cfg.resume, "resume", need_final=False)[0] if cfg.resume else None
        done = completed_stages(read_summary(run_dir)) if run_dir else set()
        pending = [vs for vs in stages if vs.stage.final or vs.stage.name not in done]
        built = self.build_system(pending[0], training=True)
        ckpt = run_dir / pending[0].stage.checkpoint if run_dir else None
        if ckpt is not None and ckpt.is_file():
            return pending, built, (ckpt, load_weights(built[0], ckpt, "resume"))
        self.initialize(built[0], pending[0], run_dir)
        return pending, built, None

    def train(self, prepared, run_dir: Path, summary: dict, start: float) -> int:
        cfg = self.cfg
        pending, first, first_resume = prepared
        write_config(run_dir, self.validated.raw)
        summary.update(experiment=cfg.experiment_name, prompt=cfg.prompt, mode=cfg.mode, run_dir=str(run_dir))
        summary.update(status="running", pid=os.getpid())
        summary.pop("error", None), summary.pop("stopped", None)
        summary.setdefault("artifacts", {})["config"] = str(run_dir / "config.yaml")
        write_summary(run_dir, summary)
        system = trainer = None
        for i, vs in enumerate(pending):
            if i == 0:
                built, resume = first, first_resume
            else:
                built, resume = self.build_system(vs, training=True), None
                self.initialize(built[0], vs, run_dir)
            system, trainer, code = self.train_stage(vs, run_dir, summary, built, resume)
            if code:
                return self.stopped(run_dir, summary, start, "interrupted")
        return self.finish(system, run_dir, summary, start, tester=trainer)

    def train_stage(
        self, vs: ValidatedStage, run_dir: Path, summary: dict, built, resume: tuple[Path, int] | None
    ):
        """Fit one stage (from resume = (checkpoint, its step) if given); returns (system, trainer, exit code or 0)."""
        cfg, stage = vs.cfg, vs.stage
        system, datamodule = built
        system.run_dir = run_dir
        ckpt_path = run_dir / stage.checkpoint
        resume_ckpt, resume_step = resume if resume else (None, None)
        c = cfg.checkpoint
        periodic = PeriodicCheckpoint(ckpt_path, c.every_n_steps, c.every_minutes, c.keep_last)
        version = stage.name if self.multi_stage else ""
        logger = build_logger(cfg.logger, run_dir, version, resume_step, cfg.trainer.log_every_n_steps)
        trainer = self.trainer(vs, run_dir, [periodic], logger, checkpoint=ckpt_path)
        self.phase = {"phase": "train", **({"stage": stage.name} if self.multi_stage else {})}
        train_start = time.perf_counter()
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
        interrupted = self.interrupts.received is not None
        if not interrupted:  # (on a signal the InterruptCallback has saved)
            save_checkpoint_atomically(trainer, ckpt_path)
        self.phase["step"] = trainer.global_step
        record = {
            "name": stage.name,
            "steps": trainer.global_step,
            "train_seconds": time.perf_counter() - train_start,
            "status": "interrupted" if interrupted else "completed",
        }
        order = [x.stage.name for x in self.validated.stages]
        stages = [s for s in summary.get("stages", []) if s["name"] != stage.name]
        summary["stages"] = sorted([*stages, record], key=lambda s: order.index(s["name"]))
        summary.update(
            steps=trainer.global_step,
            skipped_steps=system.skipped_steps,
            train_seconds=record["train_seconds"],
        )
        artifacts = summary["artifacts"]
        artifacts["checkpoint"] = str(ckpt_path)
        artifacts["validation"] = artifacts.get("validation", []) + system.artifacts.get("validation", [])
        write_summary(run_dir, summary)  # a later stage killed hard still knows this one finished
        return system, trainer, self.interrupts.exit_code if interrupted else 0

    def initialize(self, system, vs: ValidatedStage, run_dir: Path | None) -> None:
        """A fresh stage starts from an earlier stage (init_from) or, for the first, from weights=."""
        stage = vs.stage
        if stage.init_from is not None:
            source_vs = next(s for s in self.validated.stages if s.stage.name == stage.init_from)
            source, _ = self.build_system(source_vs, training=False)
            load_weights(source, run_dir / source_vs.stage.checkpoint, f"stage {stage.init_from}")
            init_particles(system, source, source_vs.cfg.data)
            log.info("stage %s initialized from stage %s", stage.name, stage.init_from)
        elif self.cfg.weights and stage.index == 0:
            weights_run, path = resolve_checkpoint(self.cfg.weights, "weights")
            other = other_representation(weights_run, path, vs.system_cfg)
            if other is None:
                load_weights(system, path, "weights")
            else:  # weights= of a run with another geometry (magic3d-refine from a coarse NeRF): its init_from
                source, source_data = other
                init_particles(system, source, source_data)
                log.info("initialized from %s (%s)", path, type(source.geometry).__name__)

    def prepare_evaluation(self):
        """mode=test|export: the final stage's system from a checkpoint (read before anything is written)."""
        cfg, vs = self.cfg, self.validated.final
        system, _ = self.build_system(vs, training=False)
        what, target = ("resume", cfg.resume) if cfg.resume else ("weights", cfg.weights)
        steps = load_weights(system, resolve_checkpoint(target, what)[1], what)
        return system, steps

    def evaluate_only(self, prepared, run_dir: Path, summary: dict, start: float) -> int:
        cfg = self.cfg
        system, steps = prepared
        system.run_dir = run_dir
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
            self.phase = {"phase": "turntable"}
            tester = tester or self.trainer(vs, run_dir, [], False)
            tester.test(system, datamodule=RandomCameraDataModule(vs.cfg.data), verbose=False)
            if "video" in system.artifacts:
                artifacts["video"] = system.artifacts["video"]
        save_particle_model = getattr(system.guidance, "save_particle_model", None)
        if training and save_particle_model is not None:  # VSD's LoRA, in peft's format
            saved = save_particle_model(run_dir / "export" / "particle_model")
            if saved is not None:
                artifacts["particle_model"] = str(saved)
        self.phase = {"phase": "metrics"}
        metrics = self.evaluate(system)
        if metrics:
            summary["metrics"] = {**summary.get("metrics", {}), **metrics}
        if cfg.mode == "export" or (training and cfg.export.enabled):
            self.phase = {"phase": "export"}
            self.export(system, run_dir, summary, required=cfg.mode == "export")
        self.phase = {"phase": "done"}
        summary.update(status="completed", wall_seconds=time.perf_counter() - start)
        for key in ("stage", "stopped", "error", "pid"):
            summary.pop(key, None)
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
        system.eval()
        particles = system.particles
        records, files = [], {}
        for index, particle in enumerate(particles):
            # One particle exports to export/; several to export/particle_<i>/ each.
            folder = run_dir / "export" if len(particles) == 1 else run_dir / "export" / f"particle_{index}"
            views = export_views(particle, data)
            try:
                result = export_geometry(particle.geometry, self.cfg.export, folder, views)
            except ExportError as e:
                if required:
                    raise
                log.warning("export%s skipped: %s", f" of particle {index}" if len(particles) > 1 else "", e)
                records.append({"status": "skipped", "reason": str(e)})
                continue
            log.info("exported %s", ", ".join(result.files.values()))
            records.append({"status": "completed", **result.info, "seconds": result.timings})
            files[f"particle_{index}"] = result.files
        if len(particles) == 1:
            record = records[0]
            summary["export"] = {k: v for k, v in record.items() if k != "seconds"}
            if record["status"] == "completed":
                summary["artifacts"]["export"] = files["particle_0"]
                summary["export_seconds"] = record["seconds"]
            else:
                summary["artifacts"].pop("export", None)
            return
        done = any(r["status"] == "completed" for r in records)
        summary["export"] = {"status": "completed" if done else "skipped", "particles": records}
        if files:
            summary["artifacts"]["export"] = files
        else:
            summary["artifacts"].pop("export", None)

    @staticmethod
    def report(run_dir: Path, summary: dict[str, Any]) -> None:
        metrics = summary.get("metrics", {})
        if "psnr" in metrics:
            print(
                f"PSNR vs analytic ground truth: {metrics['psnr']:.2f} dB (min {metrics['psnr_min']:.2f} dB) over"
                f" {metrics['psnr_views']} held-out views"
            )
        if "psnr_aligned" in metrics:
            print(
                f"  aligned: {metrics['psnr_aligned']:.2f} dB with the scene turned by"
                f" {metrics['aligned_azimuth_deg']:.0f}° about the up axis"
            )
        for row in metrics.get("particles", []):
            print(
                f"  particle {row['index']}: {row['scene']}, {row['psnr']:.2f} dB (min {row['psnr_min']:.2f} dB)"
            )
        if "modes_covered" in metrics:
            print(f"modes covered: {metrics['modes_covered']} of {metrics['modes']}")
        print(
            f"wall time: {summary['wall_seconds']:.1f} s, steps: {summary.get('steps', 0)},"
            f" skipped steps: {summary.get('skipped_steps', 0)}"
        )
        print(f"run directory: {run_dir}")
