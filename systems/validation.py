"""Start-up validation of a whole run, before anything heavy is imported or loaded.

Only light modules are imported here (torch, the config dataclasses, the scene loader), so bad input is
reported within seconds; Lightning, diffusers and the weights come after (systems/runner.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from geometry.scene import Scene
from geometry.scene_io import SceneError, resolve_scene
from systems.config_utils import ConfigError, build_config, config_class, import_target
from systems.run_config import RunConfig
from systems.run_dir import resolve_checkpoint
from systems.system_config import SystemConfig

ORACLE = "oracle"
DEFAULT_GUIDANCE = "distill.sds.SDSGuidance"


def guidance_model(guidance_cfg: dict) -> str | None:
    return guidance_cfg.get("pretrained_model_name_or_path")


def validate_guidance(guidance_cfg: dict, prompt_cfg: dict) -> tuple[type, Any, tuple[type, dict] | None]:
    """Typed configs of the guidance and (for real models) the prompt processor; no weights are touched."""
    section = dict(guidance_cfg)
    target = section.pop("_target_", DEFAULT_GUIDANCE)
    cls = import_target(target, "system.guidance")
    config_cls = config_class(cls)
    if config_cls is None:
        raise ConfigError(
            f"system.guidance._target_ '{target}' takes no typed config (a dataclass first argument)"
        )
    if guidance_model(guidance_cfg) == ORACLE:
        section["pretrained_model_name_or_path"] = None  # the oracle is built in, not loaded
        return cls, build_config(config_cls, section, "system.guidance"), None
    gcfg = build_config(config_cls, section, "system.guidance")
    from distill.prompts import PromptProcessorConfig  # imports diffusers: only for real models

    values = dict(prompt_cfg)
    values.setdefault("pretrained_model_name_or_path", guidance_model(guidance_cfg))
    build_config(PromptProcessorConfig, {**values, "prompt": "check"}, "system.prompt_processor")
    return cls, gcfg, (PromptProcessorConfig, values)


def oracle_scene(prompt: str, scene: str | None) -> Scene:
    try:
        return resolve_scene(scene if scene else prompt)
    except SceneError as e:
        raise ConfigError(str(e)) from None


def oracle_negative_index(negative_prompt: str, scenes: list[Scene]) -> int:
    """For the oracle a negative prompt names a built-in scene: it becomes the unconditional distribution."""
    names = [s.name for s in scenes]
    negative = oracle_scene(negative_prompt, None)
    if negative.name not in names:
        raise ConfigError(
            f"negative_prompt '{negative_prompt}' must name a built-in scene for the oracle prior"
        )
    return names.index(negative.name)


@dataclass
class ValidatedRun:
    raw: dict[str, Any]
    cfg: RunConfig
    system_cls: type
    system_cfg: SystemConfig


def validate_run(raw: dict[str, Any]) -> ValidatedRun:
    cfg = build_config(RunConfig, raw, "")
    section = dict(cfg.system)
    target = section.pop("_target_")
    # Keys beyond SystemConfig's may belong to the system's own config (a SystemConfig subclass): the base
    # fields are checked now, the rest once the system class is imported (below).
    known = {f.name for f in dataclasses.fields(SystemConfig)}
    extra = [k for k in section if k not in known]
    system_cfg = build_config(SystemConfig, {k: v for k, v in section.items() if k in known}, "system")
    validate_guidance(system_cfg.guidance, system_cfg.prompt_processor)
    if guidance_model(system_cfg.guidance) == ORACLE:
        oracle_scene(cfg.prompt, cfg.scene)  # a missing or malformed scene file fails here
        if cfg.negative_prompt:
            oracle_scene(cfg.negative_prompt, None)
    for what, target_path in (("resume", cfg.resume), ("weights", cfg.weights)):
        if target_path:
            resolve_checkpoint(target_path, what)
    system_cls = import_target(target, "system")  # imports Lightning: after the cheap checks
    own_config = config_class(system_cls)
    if own_config is not None and own_config is not SystemConfig:
        system_cfg = build_config(own_config, section, "system")
    elif extra:
        build_config(SystemConfig, section, "system")  # raises the unknown-key error with a suggestion
    return ValidatedRun(raw, cfg, system_cls, system_cfg)
