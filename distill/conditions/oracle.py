"""The analytic oracle's "prompt": mixture weights over its scene library (distill/denoisers/oracle.py).

The conditional embedding is one-hot on the run's scene (named by `scene=` or the prompt); the unconditional
one is uniform over the library, or one-hot on the scene a negative prompt names. Shaped (1, 1, K) like text
tokens, so classifier-free guidance and Perp-Neg mean what they mean for real models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.conditions.prompt_embeddings import PromptEmbeddings
from geometry.analytic import resolve_scene


@dataclass
class OraclePromptConfig:
    """The oracle is view-unaware: one embedding for every view."""

    view_dependent_prompting: bool = False


def mixture_weights(
    num_scenes: int, scene_index: int, negative_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond (1, 1, K) one-hot, uncond (1, 1, K) uniform or one-hot on the negative prompt's scene)."""
    cond = torch.zeros(1, 1, num_scenes)
    cond[..., scene_index] = 1.0
    if negative_index is None:
        uncond = torch.full((1, 1, num_scenes), 1.0 / num_scenes)
    else:
        uncond = torch.zeros(1, 1, num_scenes)
        uncond[..., negative_index] = 1.0
    return cond, uncond


class OraclePrompt(PromptEmbeddings):
    """`_target_: distill.conditions.oracle.OraclePrompt` (with the OracleDenoiser)."""

    Config = OraclePromptConfig

    @classmethod
    def from_config(cls, cfg: OraclePromptConfig, run: Any, denoiser: Any) -> OraclePrompt:
        if not hasattr(denoiser, "scene_index"):
            raise ValueError(
                "system.prompt_processor OraclePrompt needs the OracleDenoiser as system.guidance.denoiser"
            )
        target = denoiser.ground_truth(None, run)
        negative = None
        if run.negative_prompt:
            negative = denoiser.scene_index(resolve_scene(run.negative_prompt))
        cond, uncond = mixture_weights(denoiser.num_scenes, denoiser.scene_index(target), negative)
        emb = cls.from_tensors(cond, uncond, view_dependent_prompting=cfg.view_dependent_prompting)
        return cls(emb.prompt, emb.uncond, emb.views, emb.options, (target.name,))
