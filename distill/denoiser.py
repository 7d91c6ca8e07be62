"""The Denoiser interface (DESIGN.md §3): "predict the noise in x_t at timestep t given conditioning".

A diffusers UNet wrapper (latent SD, pixel DeepFloyd IF), the MVDream multi-view UNet and the analytic oracle
all implement it, so SDS / VSD / multi-view guidance run unchanged on any of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from distill.schedule import NoiseSchedule
from geometry.cameras import Cameras


@dataclass
class DenoiserContext:
    """Conditioning beyond text embeddings, for denoisers that need it (the oracle, camera-aware models).

    cameras:    the cameras of the batch (B), or None.
    background: (B, H, W, 3) in [0, 1], the background the renderer composited over, or None.
    """

    cameras: Cameras | None = None
    background: Float[Tensor, "B H W 3"] | None = None

    def repeat(self, n: int) -> DenoiserContext:
        """The context for a batch made of n stacked copies of this batch (e.g. CFG's [cond, uncond])."""
        cams = None if self.cameras is None else Cameras.cat([self.cameras] * n)
        bg = None if self.background is None else self.background.repeat(n, 1, 1, 1)
        return DenoiserContext(cameras=cams, background=bg)


class Denoiser(nn.Module, ABC):
    """A frozen diffusion model seen through one small interface.

    Attributes:
        schedule:   the model's NoiseSchedule (alphas_cumprod, prediction type, conversions).
        space:      "latent" (x lives in a VAE latent space) or "pixel" (x is an image in [-1, 1]).
        image_size: the RGB resolution the model expects before encoding (512 for SD, 64 for IF);
                    None means "whatever resolution the render has" (the oracle).
    """

    schedule: NoiseSchedule
    space: Literal["latent", "pixel"]
    image_size: int | None

    @abstractmethod
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] (already resized to image_size) → the model's x0 space."""

    @abstractmethod
    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """The model's x0 space → images in [0, 1]."""

    @abstractmethod
    def predict_eps(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        encoder_hidden_states: Float[Tensor, "B L D"],
        context: DenoiserContext | None = None,
    ) -> Float[Tensor, "B C h w"]:
        """The model's noise prediction eps_hat(x_t, t, y), whatever its native prediction type."""

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    def train(self, mode: bool = True) -> Denoiser:
        # Frozen models stay in eval mode (no dropout) even when the surrounding system trains.
        return super().train(False)
