"""Exact oracles over an unknown azimuth (issue 13): the analytic analogues of a view-unaware 2D model and of a
multi-view model, so the Janus problem and its cure can be measured against ground truth.

The data distribution is a library scene k seen from a side of the object that the model does not know: the
object turned about the up axis by a hidden azimuth on a fine grid (azimuth_step degrees). For a camera c the
candidates are x_{k,g} = render(scene k, camera c turned by offset_g(c)), composited over the render's
background; the exact denoiser is the posterior mean over (k, g) (Tweedie, as the plain oracle's):

    p(k, g | x_t) ∝ pi(k, g) · Π_v N(x_t^v; sqrt(ab_t)·x_{k,g}^v, (1 − ab_t)·I)      (v: the object's views)
    x0_hat^v      = Σ_{k,g} p(k, g | x_t) · x_{k,g}^v

- ViewUnawareOracle (distill/denoisers/view_unaware_oracle.py): one view at a time (V = 1); g is the side the
  camera sees (object-relative camera azimuth a_g), the prompt's weights pi(k, g) may restrict it (view-dependent
  prompts: "front view" = the front quadrant).
- MultiViewOracle (distill/denoisers/multiview_oracle.py): the V views of an object jointly; g is the object's
  global azimuth, shared by all its views, uniform a priori (MVDream's cross-view attention, exactly).

Renders are exact and memoized per pose (PoseRenderCache): with training poses on a lattice (data.angle_step)
every candidate is a lookup after the first visits, so a step costs about what the NeRF costs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from distill.conditions.base import Conditioning
from distill.denoisers.oracle import OracleConfig, OracleDenoiser, posterior_mean_x0
from distill.schedule import NoiseSchedule
from geometry.analytic import Scene
from geometry.cameras import Cameras, rotate_about_up
from geometry.functional.compositing import over_background

# Pose keys round c2w and fovy to this many units per world unit / radian: far finer than any two distinct
# training poses, coarse enough that a pose reached by two float paths (turned twice) finds one entry.
_KEY_SCALE = 1e4


@dataclass
class AzimuthOracleConfig(OracleConfig):
    """azimuth_step: spacing of the hidden-azimuth grid in degrees (5 → 72 sides, 360 must be a multiple);
    cache_entries: exact renders kept (each H·W·4 floats; cleared when full)."""

    azimuth_step: float = 5.0
    cache_entries: int = 4096

    def __post_init__(self) -> None:
        count = 360.0 / self.azimuth_step if self.azimuth_step > 0 else 0.5
        if abs(count - round(count)) > 1e-6 or count < 1:
            raise ValueError(f"azimuth_step={self.azimuth_step} must divide 360 degrees (e.g. 5, 10, 15)")
        if self.cache_entries < 0:
            raise ValueError(f"cache_entries={self.cache_entries} must be >= 0 (0 = no cache)")


class PoseRenderCache:
    """Exact unlit renders (rgb over black, opacity) of library scenes, memoized per (scene, pose, fovy, size)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._store: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def renders(
        self, index: int, scene: Scene, cameras: Cameras
    ) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 1"]]:
        """rgb over black and opacity of `scene` (library index `index`) at every camera; misses render at once."""
        pose = torch.cat([cameras.c2w[:, :3, :].flatten(1), cameras.fovy[:, None]], dim=1)
        rows = torch.round(pose * _KEY_SCALE).to(torch.int64).tolist()
        keys = [(index, cameras.height, cameras.width, *row) for row in rows]
        missing = sorted({i for i, key in enumerate(keys) if key not in self._store})
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            cams = cameras[torch.tensor(missing, device=cameras.device)]
            out = scene.render(cams, background=torch.zeros(len(missing), 3, device=cams.device))
            fresh = {keys[i]: (out.rgb[j], out.opacity[j]) for j, i in enumerate(missing)}
            if len(self._store) + len(fresh) > self.max_entries:
                self._store.clear()  # a full cache means poses off any lattice: start afresh
            if self.max_entries:
                self._store.update(fresh)
        entries = [fresh.get(key) or self._store[key] for key in keys]
        return torch.stack([e[0] for e in entries]), torch.stack([e[1] for e in entries])


class AzimuthOracle(OracleDenoiser):
    """Base of the two azimuth oracles: the grid, the cached candidates, the posterior mean. Subclasses say
    which offsets a camera's candidates are turned by (`offsets`) and the prior over (k, g) (`prior`)."""

    Config = AzimuthOracleConfig

    def __init__(
        self,
        scenes: list[Scene],
        azimuth_step: float = 5.0,
        schedule: NoiseSchedule | None = None,
        cache_entries: int = 4096,
    ) -> None:
        super().__init__(scenes, schedule)
        count = round(360.0 / azimuth_step)
        self.register_buffer(
            "azimuth_grid", torch.arange(count, dtype=torch.float32) * azimuth_step - 180.0, persistent=False
        )
        self.cache = PoseRenderCache(cache_entries)

    @classmethod
    def from_config(cls, cfg: AzimuthOracleConfig, run=None) -> AzimuthOracle:
        return cls(cls.library(cfg, run), cfg.azimuth_step, cache_entries=cfg.cache_entries)

    @property
    def num_sides(self) -> int:
        return int(self.azimuth_grid.shape[0])

    def offsets(self, cameras: Cameras) -> Float[Tensor, "B G"]:
        """Degrees each camera is turned by for its G candidates."""
        raise NotImplementedError

    def prior(self, embeddings: Float[Tensor, "B E"]) -> Float[Tensor, "B K G"]:
        """pi(k, g) per sample from the conditioning's embeddings."""
        raise NotImplementedError

    def candidates(
        self,
        cameras: Cameras,
        offsets: Float[Tensor, "B G"],
        background: Float[Tensor, "B H W 3"],
        active: Bool[Tensor, " K"],
    ) -> Float[Tensor, "KG B 3 H W"]:
        """x_{k,g} in [-1, 1], k-major; scenes not active anywhere in the batch are filled with the background
        (their prior weight is zero, so they never enter the posterior)."""
        b, g = offsets.shape
        repeated = Cameras.cat([cameras] * g)  # (G·B) cameras, g-major
        turned = replace(repeated, c2w=rotate_about_up(repeated.c2w, offsets.T.reshape(-1)))
        bg = background.repeat(g, 1, 1, 1)
        images = []
        for k, scene in enumerate(self.scenes):
            if not bool(active[k]):
                images.append(bg)
                continue
            rgb, opacity = self.cache.renders(k, scene, turned)
            images.append(over_background(rgb.to(bg.device), opacity.to(bg.device), bg))
        stacked = torch.stack(images).reshape(len(self.scenes) * g, b, *bg.shape[1:])  # (K·G, B, H, W, 3)
        return stacked.permute(0, 1, 4, 2, 3).to(background.dtype) * 2.0 - 1.0

    @torch.no_grad()
    def predict_eps(
        self, x_t: Float[Tensor, "B 3 H W"], t: Int[Tensor, "B"], cond: Conditioning
    ) -> Float[Tensor, "B 3 H W"]:
        if cond.cameras is None:
            raise ValueError("the azimuth oracles need the cameras of the batch (Conditioning.cameras)")
        batch, views = x_t.shape[0], self.num_views
        if batch % views:
            raise ValueError(f"a batch of {batch} images is not a whole number of {views}-view objects")
        if views > 1 and not bool((t.reshape(-1, views) == t.reshape(-1, views)[:, :1]).all()):
            raise ValueError("the views of one object must share one timestep t")
        weights = self.prior(cond.embeddings.reshape(batch, -1).float())  # (B, K, G)
        height, width = x_t.shape[-2:]
        background = cond.background
        if background is None:
            background = torch.ones(batch, height, width, 3, device=x_t.device)
        cameras = cond.cameras.with_resolution(height, width)
        active = (weights > 0).flatten(2).any(-1).any(0)
        cands = self.candidates(cameras, self.offsets(cameras).to(x_t.device), background, active)
        alpha_bar = self.schedule.alpha_bar(t, x_t).reshape(-1).float()
        # log(0) = -inf: sides and scenes the prompt rules out have zero posterior (as in the plain oracle).
        x0_hat = posterior_mean_x0(x_t.float(), cands, weights.flatten(1).log(), alpha_bar, views)
        return self.schedule.x0_to_eps(x_t.float(), x0_hat, t).to(x_t.dtype)
