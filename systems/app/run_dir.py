"""The run directory contract (DESIGN.md §5): naming, config.yaml, summary.json, atomic writes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill3d.errors import InputFileError
from distill3d.files import write_atomic

CKPT_NAME = "ckpts/last.ckpt"


def slug(text: str, max_len: int = 48) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text.strip()).strip("_")
    return (s[:max_len] or "run").rstrip("_")


def new_run_dir(output_root: str, experiment: str, tag: str) -> Path:
    """outputs/<experiment>/<tag>@<YYYYmmdd-HHMMSS>/ (a suffix keeps parallel sweeps apart)."""
    base = Path(output_root) / experiment / f"{tag}@{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


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


def resolve_checkpoint(target: str, what: str) -> tuple[Path, Path]:
    """`resume=`/`weights=` value → (run directory, checkpoint file); raises FileNotFoundError with the fix."""
    path = Path(target).expanduser()
    if path.is_dir():
        ckpt = path / CKPT_NAME
        if not ckpt.is_file():
            raise InputFileError(
                f"{what}={target}: no checkpoint at {ckpt}; give a run directory that finished"
                " or was interrupted, or a .ckpt file"
            )
        return path, ckpt
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "ckpts" else path.parent
        return run_dir, path
    raise InputFileError(
        f"{what}={target}: no such run directory or checkpoint; check the path"
        " (run directories are under outputs/<experiment>/)"
    )
