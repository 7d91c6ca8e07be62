"""Building the frozen side of a run: the guidance (with its denoiser) and the prompt embeddings.

`guidance.pretrained_model_name_or_path: oracle` selects the analytic oracle prior (distill/oracle.py);
anything else is a hub id or a local diffusers folder. The prompt processor follows the guidance's model
unless `prompt_processor.pretrained_model_name_or_path` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.oracle import OracleDenoiser, oracle_prompt_embeddings, oracle_scenes
from geometry.scene import Scene
from geometry.scene_io import SceneError, resolve_scene
from systems.config_utils import ConfigError, build_config, config_class, import_target

ORACLE = "oracle"


@dataclass
class FrozenParts:
    guidance: Any
    prompt_embeddings: Any
    scene: Scene | None  # ground truth, when the prior is the analytic oracle


def guidance_model(guidance_cfg: dict) -> str | None:
    return guidance_cfg.get("pretrained_model_name_or_path")


def validate_guidance(guidance_cfg: dict, prompt_cfg: dict) -> tuple[type, Any, Any]:
    """Typed configs for the guidance and the prompt processor (cheap: no weights are touched)."""
    section = dict(guidance_cfg)
    target = section.pop("_target_", "distill.sds.SDSGuidance")
    cls = import_target(target, "system.guidance")
    config_cls = config_class(cls)
    if config_cls is None:
        raise ConfigError(f"system.guidance._target_ '{target}' has no typed Config class")
    gcfg = build_config(config_cls, section, "system.guidance")
    pcfg = None
    if guidance_model(guidance_cfg) != ORACLE:
        from distill.prompts import PromptProcessorConfig

        pcfg_values = dict(prompt_cfg)
        pcfg_values.setdefault("pretrained_model_name_or_path", guidance_model(guidance_cfg))
        pcfg = (PromptProcessorConfig, pcfg_values)
    return cls, gcfg, pcfg


def oracle_scene(prompt: str, scene: str | None) -> Scene:
    try:
        return resolve_scene(scene if scene else prompt)
    except SceneError as e:
        raise ConfigError(str(e)) from None


def build_frozen_parts(
    guidance_cfg: dict, prompt_cfg: dict, prompt: str, negative_prompt: str, scene: str | None, max_steps: int
) -> FrozenParts:
    cls, gcfg, pcfg = validate_guidance(guidance_cfg, prompt_cfg)
    if guidance_model(guidance_cfg) == ORACLE:
        target = oracle_scene(prompt, scene)
        scenes, index = oracle_scenes(target)
        negative = None
        if negative_prompt:
            negative_scene = oracle_scene(negative_prompt, None)
            names = [s.name for s in scenes]
            negative = names.index(negative_scene.name)
        gcfg.pretrained_model_name_or_path = None
        guidance = cls(gcfg, denoiser=OracleDenoiser(scenes), max_steps=max_steps)
        return FrozenParts(guidance, oracle_prompt_embeddings(len(scenes), index, negative), target)
    from distill.prompts import PromptProcessor

    config_cls, values = pcfg
    values = {**values, "prompt": prompt, "negative_prompt": negative_prompt}
    processor = PromptProcessor(build_config(config_cls, values, "system.prompt_processor"))
    embeddings = processor()
    guidance = cls(gcfg, max_steps=max_steps)
    return FrozenParts(guidance, embeddings, None)
