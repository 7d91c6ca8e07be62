"""The analytic oracle's "prompt": mixture weights over its scene library (distill/denoisers/oracle.py).

The conditional embedding is one-hot on the run's scene (named by `scene=` or the prompt); the unconditional
one is uniform over the library, or one-hot on the scene a negative prompt names. A multi-mode prompt
("a snowman|a donut") puts equal weight on each of its scenes: a prior with two modes. Shaped (1, 1, K) like text
tokens, so classifier-free guidance and Perp-Neg mean what they mean for real models.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    num_scenes: int, scene_index: int | Sequence[int], negative_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond (1, 1, K): one-hot, or uniform over the modes of a multi-mode prompt; uncond (1, 1, K): uniform,
    or one-hot on the negative prompt's scene)."""
    modes = [scene_index] if isinstance(scene_index, int) else list(scene_index)
    cond = torch.zeros(1, 1, num_scenes)
    cond[..., modes] = 1.0 / len(modes)
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
        targets = denoiser.ground_truths(None, run)
        negative = None
        if run.negative_prompt:
            negative = denoiser.scene_index(resolve_scene(run.negative_prompt))
        modes = [denoiser.scene_index(t) for t in targets]
        cond, uncond = mixture_weights(denoiser.num_scenes, modes, negative)
        emb = cls.from_tensors(cond, uncond, view_dependent_prompting=cfg.view_dependent_prompting)
        return cls(emb.prompt, emb.uncond, emb.views, emb.options, ("|".join(t.name for t in targets),))
