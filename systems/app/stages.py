"""Several stages per experiment (coarse → refine, NeRF → Gaussians, ...): one command runs them in order,
each initialized from the previous one by its representation's `init_from`, and `resume=` continues inside any.

An experiment without `stages:` is one stage named "main" made of the top-level trainer/data/system. With
`stages:`, each entry is {name, trainer?, data?, system?, init_from?} laid over the top-level config: mappings
merge key by key, except that a component section whose `_target_` changes replaces the old section whole (a
Gaussian geometry does not inherit a NeRF's keys), and a stage's `system.loss` replaces the inherited weights
whole (a mesh stage has no NeRF regularizers to weigh). `init_from` names an earlier stage (default: the previous
one; null: start fresh).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill3d.errors import ConfigError
from systems.app.run_dir import CKPT_NAME

STAGE_KEYS = ("name", "trainer", "data", "system", "init_from")
SINGLE = "main"


@dataclass
class Stage:
    """One stage's full configuration (a RunConfig-shaped dict) and where its checkpoint lives."""

    index: int
    name: str
    raw: dict[str, Any]
    init_from: str | None
    checkpoint: str  # relative to the run directory
    final: bool


def overlay(base: Any, over: Any) -> Any:
    """`over` laid on `base`: dicts merge recursively, a changed `_target_` replaces the section, the rest wins."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    if "_target_" in over and over.get("_target_") != base.get("_target_"):
        return copy.deepcopy(over)
    merged = copy.deepcopy(base)
    for key, value in over.items():
        merged[key] = overlay(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def plan_stages(raw: dict[str, Any]) -> list[Stage]:
    """The run's stages in order, each a complete config; one-line errors for malformed `stages:`."""
    entries = raw.get("stages") or []
    base = {k: v for k, v in raw.items() if k != "stages"}
    if not entries:
        return [Stage(0, SINGLE, base, None, CKPT_NAME, True)]
    names: list[str] = []
    stages = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(
                f"stages[{i}] needs a name (stages: [{{name: coarse, trainer: ..., system: ...}}, ...])"
            )
        unknown = sorted(set(entry) - set(STAGE_KEYS))
        if unknown:
            raise ConfigError(
                f"stages[{i}] ({entry['name']}) has unknown key(s) {unknown}: use {list(STAGE_KEYS)}"
            )
        name = str(entry["name"])
        if name in names:
            raise ConfigError(f"stages: the name '{name}' is used twice; give every stage its own name")
        init_from = entry.get("init_from", names[-1] if names else None)
        if init_from is not None and init_from not in names:
            raise ConfigError(
                f"stages[{i}] ({name}).init_from={init_from!r} names no earlier stage (earlier: {names})"
            )
        stage_raw = copy.deepcopy(base)
        for key in ("trainer", "data", "system"):
            if key in entry:
                stage_raw[key] = overlay(base.get(key, {}), entry[key])
        if "loss" in (entry.get("system") or {}):  # loss names belong to the stage's renderer: no inheriting
            stage_raw["system"]["loss"] = copy.deepcopy(entry["system"]["loss"])
        final = i == len(entries) - 1
        stages.append(
            Stage(i, name, stage_raw, init_from, CKPT_NAME if final else f"ckpts/{name}.ckpt", final)
        )
        names.append(name)
    return stages


def completed_stages(summary: dict[str, Any]) -> set[str]:
    return {s["name"] for s in summary.get("stages", []) if s.get("status") == "completed"}


def checkpoint_of(run_dir: Path, stages: list[Stage], name: str) -> Path:
    return run_dir / next(s.checkpoint for s in stages if s.name == name)
