"""The conditioning protocol (DESIGN.md §3): what conditions a denoiser, for one camera batch.

A `Condition` module turns cameras into a `ConditionBatch`: the conditional and unconditional inputs of
classifier-free guidance (and, for Perp-Neg, negative views with their weights). Each side is a
`Conditioning`: cross-attention tokens (text, an image embedding; the oracle's mixture weights) plus whatever
else a model family reads per sample (cameras, camera embeddings, reference latents). Guidance methods batch
these into one denoiser call without knowing what they hold, so text prompts, reference images + poses
(Zero123) and camera embeddings (MVDream, VSD) flow the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor, nn

from geometry.cameras import Cameras


@dataclass
class Conditioning:
    """The inputs of one denoiser pass for B samples, besides x_t and t.

    embeddings: (B, L, D) cross-attention context (text tokens, image tokens; the oracle's (B, 1, K) weights).
    cameras: the B cameras (camera-aware denoisers and the oracle read them).
    background: (B, H, W, 3) in [0, 1], what the renderer composited over (the oracle's data distribution).
    extras: model-specific per-sample tensors, batch-first (e.g. "camera" (B, 16), "image_latents" (B, C, h, w)).
    """

    embeddings: Float[Tensor, "B L D"]
    cameras: Cameras | None = None
    background: Float[Tensor, "B H W 3"] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def with_background(self, background: Tensor | None) -> Conditioning:
        return replace(self, background=background)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """One batch of the parts stacked in order (CFG's [cond, uncond, negatives...] → one denoiser call)."""
        first = parts[0]
        cams = None if first.cameras is None else Cameras.cat([p.cameras for p in parts])
        bg = None if first.background is None else torch.cat([p.background for p in parts])
        extras = {k: torch.cat([p.extras[k] for p in parts]) for k in first.extras}
        return Conditioning(torch.cat([p.embeddings for p in parts]), cams, bg, extras)


@dataclass
class ConditionBatch:
    """cond / uncond for classifier-free guidance; negatives (K passes) and weights (B, K) for Perp-Neg."""

    cond: Conditioning
    uncond: Conditioning
    negatives: list[Conditioning] = field(default_factory=list)
    negative_weights: Float[Tensor, "B K"] | None = None

    def passes(self) -> list[Conditioning]:
        """[cond, uncond, *negatives]: the order guidance batches them in."""
        return [self.cond, self.uncond, *self.negatives]

    def with_background(self, background: Tensor | None) -> ConditionBatch:
        return ConditionBatch(
            self.cond.with_background(background),
            self.uncond.with_background(background),
            [n.with_background(background) for n in self.negatives],
            self.negative_weights,
        )


class Condition(nn.Module):
    """Base class: `condition(cameras, negatives=False) -> ConditionBatch`.

    Conditions are modules so their tensors (encoded prompts, image embeddings) move with the system; they
    are built from the frozen encoders once and keep only buffers that stay out of checkpoints
    (persistent=False): a resumed run re-encodes (or reads its cache), it never stores text embeddings.
    """

    def forward(self, cameras: Cameras, negatives: bool = False) -> ConditionBatch:
        raise NotImplementedError
