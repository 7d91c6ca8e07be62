"""Stand-ins for guidance tests: a hand-made Denoiser recording its calls, an azimuth-valued Condition."""

from __future__ import annotations

import torch

from distill.conditions.base import Condition, ConditionBatch, Conditioning
from distill.denoisers.base import Denoiser
from distill.schedule import NoiseSchedule

EMBED_DIM = 6


class RecordingDenoiser(Denoiser):
    """eps = tanh(x_t)·(1 + t/T) + mean_L(embedding)[:C] — depends on every input, records every call."""

    def __init__(self, space="pixel", image_size=None, channels=3, latent_size=None):
        super().__init__()
        self.schedule = NoiseSchedule.stable_diffusion()
        self.space, self.image_size, self.channels, self.latent_size = (
            space,
            image_size,
            channels,
            latent_size,
        )
        self.calls: list[dict] = []

    def encode(self, images):
        return images * 2.0 - 1.0

    def decode(self, x0):
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    def eps(self, x_t, t, hidden):
        bias = hidden.mean(1)[:, : self.channels, None, None]
        return torch.tanh(x_t) * (1.0 + t.float() / 1000.0).view(-1, 1, 1, 1) + bias

    def predict_eps(self, x_t, t, cond):
        self.calls.append(dict(x_t=x_t.clone(), t=t.clone(), cond=cond))
        return self.eps(x_t, t, cond.embeddings)


class AzimuthCondition(Condition):
    """Stand-in Condition: the conditional embedding of a camera is filled with its azimuth."""

    def __init__(self, neg_weights=(-1.5, -0.5)):
        super().__init__()
        self.neg_weights = torch.tensor(neg_weights)

    def text_embeddings(self, elevation, azimuth):
        cond = azimuth.float().view(-1, 1, 1).expand(-1, 4, EMBED_DIM) / 100.0
        return cond.clone(), torch.zeros_like(cond)

    def perp_neg_embeddings(self, elevation, azimuth):
        cond, uncond = self.text_embeddings(elevation, azimuth)
        embeds = torch.stack([cond, uncond, cond + 0.7, cond - 0.3], dim=1)  # [pos, uncond, neg_a, neg_b]
        return embeds, self.neg_weights.expand(len(azimuth), 2).clone()

    def forward(self, cameras, negatives=False):
        if negatives:
            emb, weights = self.perp_neg_embeddings(cameras.elevation, cameras.azimuth)
            parts = [Conditioning(emb[:, k], cameras) for k in range(4)]
            return ConditionBatch(parts[0], parts[1], parts[2:], weights)
        cond, uncond = self.text_embeddings(cameras.elevation, cameras.azimuth)
        return ConditionBatch(Conditioning(cond, cameras), Conditioning(uncond, cameras))
