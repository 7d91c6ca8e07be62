"""Checkpoints of a run: atomic saves, periodic saves during training (the last K kept), and reading one back
with a one-line error when it is truncated, corrupt or from another model.

A stage's checkpoint (`ckpts/last.ckpt` for the final stage, `ckpts/<stage>.ckpt` before it) always holds the
newest state: the periodic callback rewrites it atomically every N steps or M minutes, and keeps the last K
states beside it as `ckpts/<stage->step-NNNNNN.ckpt` (hard links of the same file, so no extra disk or time).
A hard kill loses at most one interval; `resume=<run dir>` continues from the newest.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from distill3d.errors import InputFileError
from distill3d.files import atomic_target


def save_checkpoint_atomically(trainer: pl.Trainer, path: Path) -> Path:
    """Write to a temporary file, then rename: a checkpoint is never half-written."""
    with atomic_target(path) as tmp:
        trainer.save_checkpoint(str(tmp))
    return path


def step_checkpoint_name(stage_checkpoint: Path, step: int) -> Path:
    """ckpts/last.ckpt → ckpts/step-000500.ckpt; ckpts/coarse.ckpt → ckpts/coarse-step-000500.ckpt."""
    prefix = "" if stage_checkpoint.stem == "last" else f"{stage_checkpoint.stem}-"
    return stage_checkpoint.with_name(f"{prefix}step-{step:06d}.ckpt")


def step_checkpoints(stage_checkpoint: Path) -> list[Path]:
    """The kept periodic checkpoints of one stage, oldest first."""
    pattern = step_checkpoint_name(stage_checkpoint, 0).name.replace("000000", "*")
    return sorted(stage_checkpoint.parent.glob(pattern))


class PeriodicCheckpoint(pl.Callback):
    """Save the stage checkpoint every `every_n_steps` steps or `every_minutes` minutes, whichever comes first
    (0 turns either off), and keep the last `keep_last` of them as step-numbered files."""

    def __init__(self, path: Path, every_n_steps: int, every_minutes: float, keep_last: int) -> None:
        self.path, self.every_n_steps, self.every_minutes, self.keep_last = (
            path,
            every_n_steps,
            every_minutes,
            keep_last,
        )
        self._last_save = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save = time.monotonic()

    def due(self, step: int, now: float) -> bool:
        by_steps = self.every_n_steps > 0 and step % self.every_n_steps == 0
        by_time = self.every_minutes > 0 and now - self._last_save >= 60.0 * self.every_minutes
        return by_steps or by_time

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.monotonic()
        if trainer.should_stop or step >= trainer.max_steps or not self.due(step, now):
            return  # the end of training (or an interrupt) saves the stage checkpoint itself
        save_checkpoint_atomically(trainer, self.path)
        self._last_save = time.monotonic()
        if self.keep_last > 0:
            keep_copy(self.path, step_checkpoint_name(self.path, step))
            for old in step_checkpoints(self.path)[: -self.keep_last]:
                old.unlink(missing_ok=True)


def keep_copy(source: Path, target: Path) -> None:
    """A second name for a finished checkpoint: a hard link where the filesystem allows, else a copy."""
    with atomic_target(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def read_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """torch.load a distill3d checkpoint on the CPU; a broken or foreign file is one InputFileError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, not a torch file: all the same to a user
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(
            f"{what}: checkpoint {path} is unreadable (truncated or corrupt: {detail}); {_earlier_hint(path)}"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise InputFileError(f"{what}: {path} is not a distill3d checkpoint (no state_dict in it)")
    return state


def _earlier_hint(path: Path) -> str:
    earlier = [p for p in sorted(path.parent.glob("*step-*.ckpt")) if p != path]
    if earlier:
        return f"resume from an earlier one, e.g. resume={earlier[-1]}, or start the run again"
    return "start the run again (no earlier checkpoint was kept)"


def load_weights(system: torch.nn.Module, path: Path, what: str) -> int:
    """Load a checkpoint's parameters into `system`; returns the step it was saved at. A checkpoint of another
    model (other geometry or renderer settings) is one InputFileError naming the mismatched keys."""
    state = read_checkpoint(path, what)
    try:
        system.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        missing, unexpected = _key_mismatch(system, state["state_dict"])
        detail = (
            "; ".join(
                f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for name, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
            or str(e).strip().splitlines()[-1].strip()
        )
        raise InputFileError(
            f"{what}: checkpoint {path} does not fit this experiment's model ({detail}); use a checkpoint of"
            " the same experiment and geometry/renderer settings"
        ) from None
    return int(state.get("global_step", 0))


def _key_mismatch(system: torch.nn.Module, saved: dict[str, Any]) -> tuple[list[str], list[str]]:
    expected = set(system.state_dict())
    return sorted(expected - set(saved)), sorted(set(saved) - expected)


def init_particles(system: torch.nn.Module, source: torch.nn.Module, source_data: Any = None) -> None:
    """Each particle's geometry from the source system's (particle i from the source's i, or its last), through
    the representation's `init_from` (NeRF → DMTet, NeRF → Gaussians, ...).

    source_data: the source stage's camera config; with it `init_from` also gets renders of the source particle
    at its evaluation cameras (ExportViews), so it can start from what the source exports (a NeRF's surface).
    """
    from systems.data import export_views

    sources = source.particles
    source.eval()
    for index, particle in enumerate(system.particles):
        src = sources[min(index, len(sources) - 1)]
        views = None if source_data is None else export_views(src, source_data)
        particle.geometry.init_from(src.geometry, views=views)


def other_representation(run_dir: Path, path: Path, system_cfg: Any) -> tuple[torch.nn.Module, Any] | None:
    """For `weights=` of a run whose final geometry differs from this run's (its config.yaml says so): that run's
    system with the checkpoint loaded and its camera config, to initialize from; None when the geometry is the
    same (load as is)."""
    import yaml

    from systems.app.validation import validate_run

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        raw = yaml.safe_load(saved.read_text())
    except yaml.YAMLError as e:
        raise InputFileError(
            f"weights: {saved} is not valid YAML ({e}); give the run's own config.yaml"
        ) from None
    final = validate_run({**raw, "resume": None, "weights": None, "mode": "train"}).final
    if final.system_cfg.geometry.get("_target_") == system_cfg.geometry.get("_target_"):
        return None
    source = final.system_cls.from_config(final.system_cfg, final.run_info(), None, training=False)
    load_weights(source, path, "weights")
    return source, final.cfg.data
