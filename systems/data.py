"""Random cameras for score distillation: training camera batches, evaluation orbits (no Lightning here).

Training batches are a pure function of (seed, step): a run resumed at step k sees exactly the cameras
the uninterrupted run saw, without saving any sampler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from geometry.cameras import Cameras, c2w_from_spherical, look_at, make_cameras


@dataclass
class RandomCameraConfig:
    """Camera sampling ranges (REFERENCE.md, NeRF: Cameras). Angles in degrees, distances in world units."""

    height: list[int] = field(default_factory=lambda: [64])
    width: list[int] | None = None  # None: square images
    batch_size: list[int] = field(default_factory=lambda: [1])
    resolution_milestones: list[int] = field(default_factory=list)  # steps where height/batch move on
    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 90.0])
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    distance_range: list[float] = field(default_factory=lambda: [1.0, 1.5])
    fovy_range: list[float] = field(default_factory=lambda: [40.0, 70.0])
    uniform_sphere_prob: float = 0.5  # elevation area-uniform on the sphere band this often
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_distance_range: list[float] = field(default_factory=lambda: [0.8, 1.5])
    light_position_perturb: float = 1.0
    progressive_until: int = 0  # widen from a frontal range to the full range over these steps (Magic3D)
    # Multi-view batches (MVDream): n_view views per object, azimuths 360/n_view apart from a random start,
    # elevation, distance, fovy and perturbations shared by the object's views; batch_size counts views.
    n_view: int = 1
    relative_radius: bool = (
        False  # distance = sampled value / tan(fovy / 2) (MVDream: the object fills the view)
    )
    # Snap sampled elevations and azimuths to multiples of this many degrees (0: continuous). The azimuth
    # oracles cache their exact renders per pose, so a lattice of training poses makes their steps cheap.
    angle_step: float = 0.0
    eval_height: int = 64
    eval_width: int | None = None
    eval_elevation: float = 15.0
    eval_distance: float | None = None  # None: the middle of distance_range
    eval_fovy: float | None = None  # None: the middle of fovy_range
    n_val_views: int = 4
    n_test_views: int = 120
    seed: int = 0

    def validate(self) -> None:
        pairs = {
            "elevation_range": self.elevation_range,
            "azimuth_range": self.azimuth_range,
            "distance_range": self.distance_range,
            "fovy_range": self.fovy_range,
            "light_distance_range": self.light_distance_range,
        }
        for name, pair in pairs.items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"data.{name} must be [low, high] with low <= high, got {list(pair)}")
        if not (-90.0 <= self.elevation_range[0] and self.elevation_range[1] <= 90.0):
            raise ValueError(f"data.elevation_range must lie in [-90, 90], got {list(self.elevation_range)}")
        if self.distance_range[0] <= 0:
            raise ValueError(f"data.distance_range must be positive, got {list(self.distance_range)}")
        if not (0 < self.fovy_range[0] and self.fovy_range[1] < 180):
            raise ValueError(f"data.fovy_range must lie in (0, 180) degrees, got {list(self.fovy_range)}")
        n = len(self.resolution_milestones) + 1
        for name in ("height", "batch_size"):
            values = getattr(self, name)
            if len(values) not in (1, n) or any(v <= 0 for v in values):
                raise ValueError(
                    f"data.{name} needs 1 or {n} positive values (one per resolution stage), got {values}"
                )
        if self.width is not None and len(self.width) != len(self.height):
            raise ValueError("data.width must have as many entries as data.height (or be null)")
        if self.n_view < 1 or any(b % self.n_view for b in self.batch_size):
            raise ValueError(
                f"data.batch_size {self.batch_size} must be whole multiples of data.n_view={self.n_view} "
                "(each object contributes n_view views)"
            )
        if self.angle_step < 0:
            raise ValueError(f"data.angle_step must be >= 0 degrees (0 = continuous), got {self.angle_step}")
        if self.n_test_views <= 0 or self.n_val_views <= 0:
            raise ValueError("data.n_val_views and data.n_test_views must be positive")


def _stage_value(values: list[int], milestones: list[int], step: int) -> int:
    stage = sum(step >= m for m in milestones)
    return values[min(stage, len(values) - 1)]


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


class RandomCameraSampler:
    """Samples training camera batches as a function of the step."""

    def __init__(self, cfg: RandomCameraConfig) -> None:
        cfg.validate()
        self.cfg = cfg

    def resolution(self, step: int) -> tuple[int, int]:
        c = self.cfg
        h = _stage_value(c.height, c.resolution_milestones, step)
        w = h if c.width is None else _stage_value(c.width, c.resolution_milestones, step)
        return h, w

    def batch_size(self, step: int) -> int:
        return _stage_value(self.cfg.batch_size, self.cfg.resolution_milestones, step)

    def ranges(self, step: int) -> tuple[list[float], list[float]]:
        """Elevation and azimuth ranges at this step (progressively widened from a frontal view)."""
        c = self.cfg
        if c.progressive_until <= 0 or step >= c.progressive_until:
            return list(c.elevation_range), list(c.azimuth_range)
        r = min(1.0, (step + 1) / c.progressive_until)
        elev_mid = 0.5 * (c.elevation_range[0] + c.elevation_range[1])
        elev = [
            elev_mid + r * (c.elevation_range[0] - elev_mid),
            elev_mid + r * (c.elevation_range[1] - elev_mid),
        ]
        return elev, [r * c.azimuth_range[0], r * c.azimuth_range[1]]

    def sample(self, step: int) -> Cameras:
        c = self.cfg
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        n = self.batch_size(step)
        objects, views = n // c.n_view, c.n_view
        height, width = self.resolution(step)
        elev_range, azim_range = self.ranges(step)
        per_object = lambda x: x.repeat_interleave(views, dim=0)  # noqa: E731  (object-major layout)
        elevation = per_object(self._elevation(gen, objects, elev_range))
        if views == 1:  # azimuth stratified across the batch: one sample per equal slice of the range
            strata = (torch.arange(n) + torch.rand(n, generator=gen)) / n
        else:  # MVDream: one random start per object, its views spread evenly over the range
            strata = (torch.rand(objects, 1, generator=gen) + torch.arange(views)).reshape(-1) / views
        azimuth = azim_range[0] + (azim_range[1] - azim_range[0]) * strata
        azimuth = (azimuth + 180.0) % 360.0 - 180.0
        distance = per_object(_uniform(gen, objects, *c.distance_range))
        fovy = per_object(_uniform(gen, objects, *c.fovy_range))
        if c.angle_step > 0:
            elevation, azimuth = (torch.round(a / c.angle_step) * c.angle_step for a in (elevation, azimuth))
        if c.relative_radius:
            distance = distance / torch.tan(torch.deg2rad(fovy) / 2)
        c2w = self._perturbed_poses(gen, elevation, azimuth, distance, views)
        light = self._light_positions(gen, c2w[:, :3, 3])
        return Cameras(c2w, torch.deg2rad(fovy), height, width, elevation, azimuth, distance, light)

    def _elevation(self, gen: torch.Generator, n: int, elev_range: list[float]) -> Tensor:
        uniform_angle = _uniform(gen, n, *elev_range)
        lo, hi = (math.sin(math.radians(e)) for e in elev_range)
        on_sphere = torch.rad2deg(torch.asin(_uniform(gen, n, lo, hi).clamp(-1.0, 1.0)))
        use_sphere = torch.rand(n, generator=gen) < self.cfg.uniform_sphere_prob
        return torch.where(use_sphere, on_sphere, uniform_angle)

    def _perturbed_poses(
        self, gen: torch.Generator, elevation: Tensor, azimuth: Tensor, distance: Tensor, views: int = 1
    ) -> Tensor:
        c = self.cfg
        base = c2w_from_spherical(elevation, azimuth, distance)
        if c.camera_perturb == 0 and c.center_perturb == 0 and c.up_perturb == 0:
            return base
        n = elevation.shape[0] // views
        # One perturbation per object, shared by its views (MVDream's sampler does the same).
        noise = lambda: torch.randn(n, 3, generator=gen).repeat_interleave(views, dim=0)  # noqa: E731
        eye = base[:, :3, 3] + c.camera_perturb * noise()
        target = c.center_perturb * noise()
        # The spherical frame's up (not world z) stays well defined at the poles.
        up = base[:, :3, 1] + c.up_perturb * noise()
        return look_at(eye, target, up)

    def _light_positions(self, gen: torch.Generator, camera_position: Tensor) -> Tensor:
        c = self.cfg
        n = camera_position.shape[0]
        direction = F.normalize(
            camera_position + c.light_position_perturb * torch.randn(n, 3, generator=gen), dim=-1
        )
        return direction * _uniform(gen, n, *c.light_distance_range)[:, None]


def eval_distance_fovy(cfg: RandomCameraConfig) -> tuple[float, float]:
    """The evaluation camera distance and vertical field of view (degrees): set, or the middle of the ranges."""
    distance = cfg.eval_distance if cfg.eval_distance is not None else sum(cfg.distance_range) / 2
    fovy = cfg.eval_fovy if cfg.eval_fovy is not None else sum(cfg.fovy_range) / 2
    return distance, fovy


def export_views(renderer: torch.nn.Module, cfg: RandomCameraConfig):
    """Renders of `renderer` at the evaluation cameras of `cfg`, for export and stage converters."""
    from geometry.mesh.surface import ExportViews

    distance, fovy = eval_distance_fovy(cfg)
    return ExportViews(renderer, distance, fovy, cfg.eval_elevation)


def orbit_cameras(
    cfg: RandomCameraConfig,
    n_views: int,
    elevation: float | None = None,
    azimuth_offset: float = 0.0,
    height: int | None = None,
) -> Cameras:
    """Deterministic orbit: n views evenly spaced in azimuth (starting at -180 + offset), lit from the camera."""
    distance, fovy = eval_distance_fovy(cfg)
    elevation = cfg.eval_elevation if elevation is None else elevation
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views) - 180.0 + azimuth_offset
    height = height or cfg.eval_height
    width = cfg.eval_width if height == cfg.eval_height and cfg.eval_width else height
    cams = make_cameras(elevation, azimuth, distance, fovy, height, width)
    cams.light_position = cams.position.clone()
    return cams
