"""Start-up validation of a whole run, before any weights load or anything is written.

Only light modules are imported before the cheap checks (torch, the config dataclasses, the scene loader); the
system and component classes are imported to read their typed configs, never built here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from distill3d.errors import ConfigError
from systems.app.config import RunConfig
from systems.app.run_dir import resolve_checkpoint
from systems.app.stages import Stage, plan_stages
from systems.config import RunInfo, SystemConfig
from systems.typed_config import build_config, config_class, import_target


@dataclass
class ValidatedStage:
    stage: Stage
    cfg: RunConfig
    system_cls: type
    system_cfg: SystemConfig

    def run_info(self) -> RunInfo:
        c = self.cfg
        return RunInfo(c.prompt, c.negative_prompt, c.scene, c.trainer.max_steps, c.seed)


@dataclass
class ValidatedRun:
    raw: dict[str, Any]
    stages: list[ValidatedStage]

    @property
    def cfg(self) -> RunConfig:
        """The run-level settings (mode, resume, output, export): the final stage's view of them."""
        return self.stages[-1].cfg

    @property
    def final(self) -> ValidatedStage:
        return self.stages[-1]


def validate_system(section: dict[str, Any], where: str = "system") -> tuple[type, SystemConfig]:
    """The system class named by `_target_` and its typed config, every component section checked."""
    from systems.components import check_components  # imports distill/geometry component modules

    section = dict(section)
    if "_target_" not in section:
        raise ConfigError(f"{where}._target_ is missing: choose an experiment (experiment=demo, ...)")
    system_cls = import_target(section.pop("_target_"), where)
    own = config_class(system_cls)
    if own is None or not (isinstance(own, type) and issubclass(own, SystemConfig)):
        own = SystemConfig
    # Keys beyond the base SystemConfig belong to the recipe's own config (a subclass); unknown ones fail here.
    known = {f.name for f in dataclasses.fields(own)}
    if set(section) - known:
        build_config(own, section, where)  # raises the unknown-key error with a suggestion
    system_cfg = build_config(own, section, where)
    check_components(system_cfg)
    return system_cls, system_cfg


def validate_run(raw: dict[str, Any]) -> ValidatedRun:
    """Typed RunConfig, every stage's system and components, the ground-truth scene, resume/weights paths."""
    from systems.components import ground_truths

    build_config(RunConfig, raw, "")  # the run-level keys, before any stage logic
    stages = []
    for stage in plan_stages(raw):
        where = "system" if len(raw.get("stages") or []) == 0 else f"stages.{stage.name}.system"
        cfg = build_config(RunConfig, stage.raw, "")
        system_cls, system_cfg = validate_system(cfg.system, where)
        validated = ValidatedStage(stage, cfg, system_cls, system_cfg)
        ground_truths(system_cfg, validated.run_info())  # a missing or malformed scene file fails here
        stages.append(validated)
    cfg = stages[-1].cfg
    if cfg.resume:
        resolve_checkpoint(cfg.resume, "resume", need_final=cfg.mode != "train")
    if cfg.weights:
        resolve_checkpoint(cfg.weights, "weights")
    return ValidatedRun(raw, stages)
