"""The analytic oracle prior: a diffusion "model" whose denoiser is exact (tests, offline demo).

For a camera c, the data distribution of scene k is a point mass on that scene's unlit-albedo render at c,
composited over the background the renderer used (DESIGN.md §8). For a mixture with weights pi_k the exact
denoiser is the posterior mean (Tweedie):

    p(k | x_t) ∝ pi_k · N(x_t; sqrt(ab_t)·x_k, (1 − ab_t)·I)
    x0_hat     = Σ_k p(k | x_t) · x_k
    eps_hat    = (x_t − sqrt(ab_t)·x0_hat) / sqrt(1 − ab_t)

The "text embeddings" of the oracle are the mixture weights pi, shape (B, 1, K): the conditional embedding
is one-hot on the prompt's scene, the unconditional one is uniform over the library, so classifier-free
guidance means what it means for real models and the SDS code runs on the oracle unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from distill.conditions.base import Conditioning
from distill.denoisers.base import Denoiser
from distill.schedule import NoiseSchedule
from geometry.analytic import BUILTIN_SCENES, Scene, builtin_scene, resolve_scene, resolve_scenes
from geometry.cameras import Cameras
from geometry.functional.compositing import over_background


def posterior_mean_x0(
    x_t: Float[Tensor, "B C H W"],
    candidates: Float[Tensor, "K B C H W"],
    log_weights: Float[Tensor, "B K"],
    alpha_bar: Float[Tensor, "B"],
    num_views: int = 1,
) -> Float[Tensor, "B C H W"]:
    """E[x0 | x_t] for a mixture of point masses (Tweedie's formula for a discrete prior).

    num_views: consecutive batch entries that are views of one object and share its hidden candidate k (the
    multi-view oracle): the posterior p(k | all V views) ∝ pi_k · Π_v N(x_t^v; sqrt(ab)·x_k^v, (1 − ab)·I), so
    their log-likelihoods add up. Each object's views share one t (and one row of log_weights).
    """
    sqrt_ab = alpha_bar.sqrt()[None, :, None, None, None]
    sq_dist = (x_t[None] - sqrt_ab * candidates).pow(2).flatten(2).sum(-1)  # (K, B)
    log_likelihood = -sq_dist / (2.0 * (1.0 - alpha_bar)[None, :])  # (K, B)
    if num_views > 1:  # joint over each object's views: their likelihoods multiply, the prior counts once
        k, b = log_likelihood.shape
        joint = log_likelihood.reshape(k, b // num_views, num_views).sum(-1)
        log_likelihood = joint.repeat_interleave(num_views, dim=1)
    logits = log_weights.T + log_likelihood  # (K, B)
    posterior = torch.softmax(logits, dim=0)  # p(k | x_t)
    return (posterior[..., None, None, None] * candidates).sum(0)


@dataclass
class OracleConfig:
    """library: scene names or YAML files the oracle's data distribution mixes (empty = the built-in scenes).
    The run's own scene (`scene=` or the prompt) is always added."""

    library: list[str] | None = None


class OracleDenoiser(Denoiser):
    """Exact denoiser for mixtures of analytic scenes; pixel space, no resizing (image_size None).

    `_target_: distill.denoisers.oracle.OracleDenoiser` in system.guidance.denoiser; pair it with the condition
    `distill.conditions.oracle.OraclePrompt`.
    """

    space = "pixel"
    image_size = None
    Config = OracleConfig

    def __init__(self, scenes: Sequence[Scene], schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        if not scenes:
            raise ValueError("the oracle needs at least one scene")
        self.scenes = list(scenes)
        self.schedule = schedule or NoiseSchedule.stable_diffusion()
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def from_config(cls, cfg: OracleConfig, run=None) -> OracleDenoiser:
        return cls(cls.library(cfg, run))

    @classmethod
    def library(cls, cfg: OracleConfig, run=None) -> list[Scene]:
        """The configured library (or the built-in scenes) plus the run's own scene(s)."""
        library = (
            [resolve_scene(s) for s in cfg.library]
            if cfg.library
            else [builtin_scene(n) for n in BUILTIN_SCENES]
        )
        for target in cls.ground_truths(cfg, run) if run is not None else []:
            if target.name not in [s.name for s in library]:
                library.append(target)
        return library

    @classmethod
    def ground_truth(cls, cfg: OracleConfig | None, run) -> Scene:
        """The scene named by the run's `scene=` (a name or YAML file), else by its prompt (its first mode)."""
        return cls.ground_truths(cfg, run)[0]

    @classmethod
    def ground_truths(cls, cfg: OracleConfig | None, run) -> list[Scene]:
        """The modes of the run's prompt: "a snowman|a donut" is a mixture of two scenes of equal weight."""
        return resolve_scenes(run.scene if run.scene else run.prompt)

    @property
    def num_scenes(self) -> int:
        return len(self.scenes)

    def scene_index(self, scene: Scene) -> int:
        names = [s.name for s in self.scenes]
        if scene.name not in names:
            raise ValueError(f"'{scene.name}' is not in the oracle's library ({', '.join(names)})")
        return names.index(scene.name)

    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return images * 2.0 - 1.0

    def decode(self, x0: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_eps(
        self, x_t: Float[Tensor, "B 3 H W"], t: Int[Tensor, "B"], cond: Conditioning
    ) -> Float[Tensor, "B 3 H W"]:
        """cond.embeddings: (B, 1, K) mixture weights over the library; cond.cameras: the batch's cameras."""
        if cond.cameras is None:
            raise ValueError("the oracle denoiser needs the cameras of the batch (Conditioning.cameras)")
        weights = cond.embeddings.reshape(x_t.shape[0], -1).float()  # (B, K)
        if weights.shape[1] != self.num_scenes:
            raise ValueError(
                f"oracle embeddings have {weights.shape[1]} weights for {self.num_scenes} scenes"
            )
        height, width = x_t.shape[-2:]
        background = cond.background
        if background is None:
            background = torch.ones(x_t.shape[0], height, width, 3, device=x_t.device)
        candidates = self.scene_images(cond.cameras.with_resolution(height, width), background, weights)
        alpha_bar = self.schedule.alpha_bar(t, x_t).reshape(-1).float()
        # log(0) = -inf: a scene with zero prior weight has zero posterior, however close x_t is to it (a
        # finite floor such as log(1e-30) would be overwhelmed by the likelihood at low noise).
        x0_hat = posterior_mean_x0(x_t.float(), candidates, weights.log(), alpha_bar)
        return self.schedule.x0_to_eps(x_t.float(), x0_hat, t).to(x_t.dtype)

    def scene_images(
        self, cameras: Cameras, background: Float[Tensor, "B H W 3"], weights: Float[Tensor, "B K"]
    ) -> Float[Tensor, "K B 3 H W"]:
        """Each scene's render for each camera over its background, in [-1, 1].

        Scenes with zero weight for the whole batch are skipped (filled with the background); renders are
        made once per distinct camera (CFG batches repeat cameras) and composited over each background.
        """
        key = torch.cat([cameras.c2w.flatten(1), cameras.fovy[:, None]], dim=1)
        unique_keys, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.zeros(len(unique_keys), dtype=torch.long, device=key.device)
        first.scatter_(0, inverse, torch.arange(len(key), device=key.device))
        unique_cams = cameras[first]
        images = []
        for k, scene in enumerate(self.scenes):
            if not bool((weights[:, k] > 0).any()):
                images.append(background)
                continue
            black = torch.zeros(len(unique_cams), 3, device=key.device)
            render = scene.render(unique_cams, background=black)
            images.append(over_background(render.rgb[inverse], render.opacity[inverse], background))
        stacked = torch.stack(images, dim=0).to(background.dtype)  # (K, B, H, W, 3)
        return stacked.permute(0, 1, 4, 2, 3) * 2.0 - 1.0
