"""The run directory contract (DESIGN.md §5): naming, config.yaml, summary.json, atomic writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill3d.errors import InputFileError
from distill3d.files import write_atomic

CKPT_NAME = "ckpts/last.ckpt"


def slug(text: str, max_len: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text.strip()).strip("_")
    return (s[:max_len] or "run").rstrip("_")


def write_config(run_dir: Path, cfg: DictConfig | dict) -> Path:
    path = run_dir / "config.yaml"
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / "summary.json"
    write_atomic(path, json.dumps(summary, indent=2, default=str) + "\n")
    return path


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_checkpoint(target: str, what: str, need_final: bool = True) -> tuple[Path, Path | None]:
    """`resume=`/`weights=` value → (run directory, final checkpoint). need_final=False (resume= of training):
    a run directory whose final checkpoint does not exist yet is fine (None) if it holds any checkpoint, e.g.
    a periodic one of a run killed in its first stage."""
    path = Path(target).expanduser()
    if path.is_dir():
        ckpt = path / CKPT_NAME
        if ckpt.is_file():
            return path, ckpt
        if not need_final and any((path / "ckpts").glob("*.ckpt")):
            return path, None
        if not need_final and (path / "config.yaml").is_file():
            raise InputFileError(
                f"{what}={target}: the run stopped before its first checkpoint (nothing in {path / 'ckpts'});"
                f" start it again with run_dir={path} overwrite=true"
            )
        raise InputFileError(
            f"{what}={target}: no checkpoint at {ckpt}; give a run directory that finished"
            " or was interrupted, or a .ckpt file"
        )
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "ckpts" else path.parent
        return run_dir, path
    raise InputFileError(
        f"{what}={target}: no such run directory or checkpoint; check the path"
        " (run directories are under outputs/<experiment>/)"
    )
