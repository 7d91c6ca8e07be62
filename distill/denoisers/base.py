"""The Denoiser interface (DESIGN.md §3): "predict the noise in x_t at timestep t given a conditioning".

A diffusers UNet wrapper (latent SD, pixel DeepFloyd IF), the multi-view and image-conditioned models and the
analytic oracles all implement it, so SDS / VSD / multi-view guidance run unchanged on any of them. A denoiser
is selected by `_target_` in `system.guidance.denoiser` like any other component, and built by
`from_config(cfg, run)` — the only place that may load weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from distill.conditions.base import Conditioning
from distill.schedule import NoiseSchedule


class Denoiser(nn.Module, ABC):
    """A frozen diffusion model seen through one small interface.

    Attributes:
        schedule:    the model's NoiseSchedule (alphas_cumprod, prediction type, conversions).
        space:       "latent" (x lives in a VAE latent space) or "pixel" (x is an image in [-1, 1]).
        image_size:  the RGB resolution the model expects before encoding (512 for SD, 64 for IF);
                     None means "whatever resolution the render has" (the oracle).
        latent_size: side of x0 in latent space (64 for SD 2.1-base), None when not a latent model.
        load_config: the distill.models.ModelLoadConfig it was loaded with (None for built-in models):
                     text conditions follow it to the matching text encoder.
        num_views:   how many consecutive batch entries are views of one object that the model denoises
                     jointly (MVDream, the multi-view oracle: 4); 1 for per-image models. Batches are laid out
                     object-major, all views of an object share one t.
    """

    schedule: NoiseSchedule
    space: Literal["latent", "pixel"]
    image_size: int | None
    latent_size: int | None = None
    load_config: Any = None
    num_views: int = 1
    Config: ClassVar[type | None] = None

    @classmethod
    def from_config(cls, cfg: Any, run: Any = None) -> Denoiser:
        """Build (load) the denoiser from its typed config; run: the run's prompt/scene (RunInfo), if needed."""
        return cls(cfg)

    @classmethod
    def ground_truth(cls, cfg: Any, run: Any) -> Any:
        """The known 3D scene the run should converge to, for priors that have one (the oracles); else None.

        A classmethod so that evaluation in test/export mode needs no weights."""
        return None

    @classmethod
    def ground_truths(cls, cfg: Any, run: Any) -> list[Any]:
        """Every mode of the run's target distribution (a two-mode oracle prompt has two); [] when unknown."""
        truth = cls.ground_truth(cfg, run)
        return [] if truth is None else [truth]

    @abstractmethod
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] (already resized to image_size) → the model's x0 space."""

    @abstractmethod
    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """The model's x0 space → images in [0, 1]."""

    @abstractmethod
    def predict_eps(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], cond: Conditioning
    ) -> Float[Tensor, "B C h w"]:
        """The model's noise prediction eps_hat(x_t, t, y), whatever its native prediction type."""

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    def train(self, mode: bool = True) -> Denoiser:
        # Frozen models stay in eval mode (no dropout) even when the surrounding system trains.
        return super().train(False)
