"""The analytic oracles' "prompts": mixture weights over the scene library (distill/denoisers/oracle.py) and, for
the view-unaware oracle, over (scene, side seen) (distill/denoisers/view_unaware_oracle.py).

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
        cond, uncond, text = run_scene_weights(denoiser, run)
        emb = cls.from_tensors(cond, uncond, view_dependent_prompting=cfg.view_dependent_prompting)
        return cls(emb.prompt, emb.uncond, emb.views, emb.options, (text,))


def run_scene_weights(denoiser: Any, run: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(cond, uncond) mixture weights over the denoiser's library for the run's prompt / scene and negative
    prompt (mixture_weights), and the prompt's text ("a snowman|a donut")."""
    targets = denoiser.ground_truths(None, run)
    negative = None
    if run.negative_prompt:
        negative = denoiser.scene_index(resolve_scene(run.negative_prompt))
    modes = [denoiser.scene_index(t) for t in targets]
    cond, uncond = mixture_weights(denoiser.num_scenes, modes, negative)
    return cond, uncond, "|".join(t.name for t in targets)


@dataclass
class ViewUnawareOraclePromptConfig:
    """The view-unaware oracle's prompt: weights over (scene, side seen).

    view_dependent_prompting: each camera's prompt names the side it faces ("front view" → the front quadrant
    |a| < front_threshold, "back view" → |a| > 180 − back_threshold, "side view" between, "overhead view" above
    overhead_threshold: any side); off, every view gets the plain prompt (any side). use_perp_neg: Perp-Neg's
    negatives are the other sides' prompts (ViewOptions has the f_* curves)."""

    view_dependent_prompting: bool = False
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    use_perp_neg: bool = False


def side_masks(grid: torch.Tensor, front: float, back: float) -> torch.Tensor:
    """(4, G) which object-relative azimuths each DIRECTIONS prompt allows (front, side, back, overhead)."""
    magnitude = grid.abs()
    is_front, is_back = magnitude < front, magnitude > 180.0 - back
    is_side = ~(is_front | is_back)
    return torch.stack([is_front, is_side, is_back, torch.ones_like(is_front)]).float()


class ViewUnawareOraclePrompt(PromptEmbeddings):
    """`_target_: distill.conditions.oracle.ViewUnawareOraclePrompt` (with the ViewUnawareOracle)."""

    Config = ViewUnawareOraclePromptConfig

    @classmethod
    def from_config(
        cls, cfg: ViewUnawareOraclePromptConfig, run: Any, denoiser: Any
    ) -> ViewUnawareOraclePrompt:
        if not hasattr(denoiser, "azimuth_grid") or denoiser.num_views != 1:
            raise ValueError(
                "system.prompt_processor ViewUnawareOraclePrompt needs the ViewUnawareOracle as "
                "system.guidance.denoiser"
            )
        scenes, uncond_scenes, text = run_scene_weights(denoiser, run)
        masks = side_masks(denoiser.azimuth_grid.cpu(), cfg.front_threshold, cfg.back_threshold)  # (4, G)
        per_side = lambda w, mask: (w.reshape(-1, 1) * mask / mask.sum()).reshape(1, 1, -1)  # noqa: E731
        everywhere = torch.ones(denoiser.num_sides)
        views = torch.cat([per_side(scenes, m) for m in masks])
        emb = cls.from_tensors(
            per_side(scenes, everywhere), per_side(uncond_scenes, everywhere), views, **vars(cfg)
        )
        return cls(emb.prompt, emb.uncond, emb.views, emb.options, (text,))
