"""Encoded prompts as a Condition: the plain prompt, the negative (unconditional) prompt and four view prompts,
picked per camera (view-dependent prompting) or blended with negatives (Perp-Neg).

Text prompts (conditions/text.py) and the analytic oracle's scene-mixture weights (conditions/oracle.py) are
both this: embeddings of shape (…, L, D), chosen by view.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from jaxtyping import Float
from torch import Tensor

from distill.conditions.base import Condition, ConditionBatch, Conditioning
from distill.conditions.views import DIRECTIONS, perp_neg_weights, view_direction
from geometry.cameras import Cameras

PERP_NEG_F_SB = (1.0, 0.5, -0.606)
PERP_NEG_F_FSB = (1.0, 0.5, 0.967)
PERP_NEG_F_FS = (4.0, 0.5, -2.426)
PERP_NEG_F_SF = (4.0, 0.5, -2.426)


@dataclass
class ViewOptions:
    """How views pick their embedding (REFERENCE.md, view-dependent prompting and Perp-Neg).

    front/back/overhead_threshold: degrees; front if |az| < front, back if |az| > 180 − back, overhead if
    elevation > overhead (checked first). use_perp_neg: every camera gets Perp-Neg negatives (threestudio's
    prompt_processor.use_perp_neg; a guidance may also ask for them). perp_neg_f_*: (a, b, c) of a·exp(−b·r) + c.
    """

    view_dependent_prompting: bool = True
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    use_perp_neg: bool = False
    perp_neg_f_sb: tuple[float, float, float] = PERP_NEG_F_SB
    perp_neg_f_fsb: tuple[float, float, float] = PERP_NEG_F_FSB
    perp_neg_f_fs: tuple[float, float, float] = PERP_NEG_F_FS
    perp_neg_f_sf: tuple[float, float, float] = PERP_NEG_F_SF

    def __post_init__(self) -> None:
        if not 0 <= self.front_threshold <= 180 - self.back_threshold <= 180:
            raise ValueError(
                "Need 0 <= front_threshold <= 180 - back_threshold: the front and back regions overlap."
            )
        for name in ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must be three numbers (a, b, c) of a·exp(-b·r) + c.")
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))

    @classmethod
    def pick(cls, values: object) -> ViewOptions:
        """The ViewOptions fields of any config object that has them (e.g. a TextPromptConfig)."""
        return cls(**{f.name: getattr(values, f.name) for f in fields(cls) if hasattr(values, f.name)})


class PromptEmbeddings(Condition):
    """prompt (1, L, D), uncond (1, L, D), views (4, L, D) in DIRECTIONS order, as non-persistent buffers."""

    def __init__(
        self,
        prompt: Float[Tensor, "1 L D"],
        uncond: Float[Tensor, "1 L D"],
        views: Float[Tensor, "4 L D"],
        options: ViewOptions | None = None,
        texts: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if views.shape != (len(DIRECTIONS), *prompt.shape[1:]) or uncond.shape != prompt.shape:
            raise ValueError(
                f"Embedding shapes disagree: prompt {tuple(prompt.shape)}, uncond {tuple(uncond.shape)}, "
                f"views {tuple(views.shape)}; expected (1,L,D), (1,L,D), (4,L,D)."
            )
        self.register_buffer("prompt", prompt, persistent=False)
        self.register_buffer("uncond", uncond, persistent=False)
        self.register_buffer("views", views, persistent=False)
        self.options = options or ViewOptions()
        self.texts = tuple(texts)

    # view_direction reads the thresholds from this object
    front_threshold = property(lambda self: self.options.front_threshold)
    back_threshold = property(lambda self: self.options.back_threshold)
    overhead_threshold = property(lambda self: self.options.overhead_threshold)

    @classmethod
    def from_tensors(
        cls,
        prompt: Float[Tensor, "..."],
        uncond: Float[Tensor, "..."] | None = None,
        views: Float[Tensor, "..."] | None = None,
        **options,
    ) -> PromptEmbeddings:
        """Build from given tensors (no text encoder): prompt and uncond (…, L, D), views (4, L, D); shapes are
        checked here, with a message. uncond defaults to zeros, views to the prompt for every direction; options
        are ViewOptions fields."""
        prompt = prompt.reshape(1, *prompt.shape[-2:])
        uncond = torch.zeros_like(prompt) if uncond is None else uncond.reshape(1, *uncond.shape[-2:])
        views = prompt.expand(len(DIRECTIONS), -1, -1).clone() if views is None else views
        return cls(prompt, uncond, views, ViewOptions(**options))

    def text_embeddings(
        self, elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"], view_dependent: bool | None = None
    ) -> tuple[Float[Tensor, "B L D"], Float[Tensor, "B L D"]]:
        """(cond, uncond) per camera, on elevation's device. view_dependent None = the configured choice."""
        vd = self.options.view_dependent_prompting if view_dependent is None else view_dependent
        b, dev = elevation.shape[0], elevation.device
        if vd:
            cond = self.views.to(dev)[view_direction(elevation, azimuth, self).to(dev)]
        else:
            cond = self.prompt.to(dev).expand(b, -1, -1)
        return cond, self.uncond.to(dev).expand(b, -1, -1)

    def perp_neg_embeddings(
        self, elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"]
    ) -> tuple[Float[Tensor, "B 4 L D"], Float[Tensor, "B 2"]]:
        """Perp-Neg inputs: embeddings [positive, uncond, neg_a, neg_b] (B, 4, L, D) and weights (B, 2)."""
        o, dev = self.options, elevation.device
        r, weights, idx = perp_neg_weights(
            elevation.to(dev), azimuth.to(dev), o.perp_neg_f_sb, o.perp_neg_f_fsb, o.perp_neg_f_fs, o.perp_neg_f_sf,
            o.overhead_threshold,
        )  # fmt: skip
        views = self.views.to(dev)
        r_ = r.to(views.dtype)[:, None, None]
        positive = r_ * views[idx[:, 0]] + (1.0 - r_) * views[idx[:, 1]]  # Perp-Neg view interpolation
        uncond = self.uncond.to(dev).expand(elevation.shape[0], -1, -1)
        emb = torch.stack([positive, uncond, views[idx[:, 2]], views[idx[:, 3]]], dim=1)
        return emb, weights.to(views.dtype)

    def forward(self, cameras: Cameras, negatives: bool = False) -> ConditionBatch:
        """The CFG pair for these cameras; with Perp-Neg (asked for, or configured) also the two negatives."""
        elevation, azimuth = cameras.elevation.to(self.prompt.device), cameras.azimuth.to(self.prompt.device)
        if negatives or self.options.use_perp_neg:
            emb, weights = self.perp_neg_embeddings(elevation, azimuth)
            parts = [Conditioning(emb[:, k], cameras) for k in range(4)]
            return ConditionBatch(parts[0], parts[1], parts[2:], weights)
        cond, uncond = self.text_embeddings(elevation, azimuth)
        return ConditionBatch(Conditioning(cond, cameras), Conditioning(uncond, cameras))
