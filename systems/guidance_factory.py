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
from systems.config_utils import build_config
from systems.validation import ORACLE, guidance_model, oracle_negative_index, oracle_scene, validate_guidance


@dataclass
class FrozenParts:
    guidance: Any
    prompt_embeddings: Any
    scene: Scene | None  # ground truth, when the prior is the analytic oracle


def build_frozen_parts(
    guidance_cfg: dict, prompt_cfg: dict, prompt: str, negative_prompt: str, scene: str | None, max_steps: int
) -> FrozenParts:
    cls, gcfg, pcfg = validate_guidance(guidance_cfg, prompt_cfg)
    if guidance_model(guidance_cfg) == ORACLE:
        target = oracle_scene(prompt, scene)
        scenes, index = oracle_scenes(target)
        negative = None
        if negative_prompt:
            negative = oracle_negative_index(negative_prompt, scenes)
        guidance = cls(gcfg, denoiser=OracleDenoiser(scenes), max_steps=max_steps)
        return FrozenParts(guidance, oracle_prompt_embeddings(len(scenes), index, negative), target)
    from distill.prompts import PromptProcessor

    config_cls, values = pcfg
    values = {**values, "prompt": prompt, "negative_prompt": negative_prompt}
    processor = PromptProcessor(build_config(config_cls, values, "system.prompt_processor"))
    embeddings = processor()
    guidance = cls(gcfg, max_steps=max_steps)
    return FrozenParts(guidance, embeddings, None)
