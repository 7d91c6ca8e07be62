"""The distillation timestep: the range [t_min, t_max] t is drawn from, which may anneal with the step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

TIMESTEP_SCHEDULE_KINDS = ("constant", "linear", "milestone", "hifa_sqrt", "dreamgaussian")


@dataclass
class TimestepScheduleConfig:
    """The range [t_min, t_max] that the distillation timestep is drawn from, as a function of the step.

    Percents are fractions of T (0.02 -> t = 20 for T = 1000), converted as round(percent·T), capped at T-1.
    kind:
        "constant":      [min_step_percent, max_step_percent] throughout.
        "linear":        both bounds interpolate linearly from (min, max) to (min_end, max_end) between
                         start_step and end_step (MVDream: (0.98, 0.98) -> (0.02, 0.5) over 0..8000).
        "milestone":     (min, max) before end_step, (min_end, max_end) from end_step on
                         (ProlificDreamer: max 0.98 -> 0.5 at 5000).
        "hifa_sqrt":     deterministic t = t_max - (t_max - t_min)·sqrt(step/max_steps) (HiFA).
        "dreamgaussian": deterministic t = (1 - step/max_steps)·T clipped to [t_min, t_max] (DreamGaussian).
    *_end default to the start values. per_sample: one t per batch element (True) or one shared t (False).
    """

    kind: str = "constant"
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    min_step_percent_end: float | None = None
    max_step_percent_end: float | None = None
    start_step: int = 0
    end_step: int = 0
    per_sample: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the fix."""
        if self.kind not in TIMESTEP_SCHEDULE_KINDS:
            raise ValueError(
                f"timestep schedule kind {self.kind!r} is unknown: use one of {TIMESTEP_SCHEDULE_KINDS}"
            )
        for suffix, (lo, hi) in {"": self.bounds_start, "_end": self.bounds_end}.items():
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"timestep schedule needs 0 <= min_step_percent{suffix} <= max_step_percent{suffix} <= 1, "
                    f"got min={lo}, max={hi}"
                )
        if self.start_step < 0 or self.end_step < 0:
            raise ValueError(f"start_step/end_step must be >= 0, got {self.start_step}/{self.end_step}")
        if self.kind == "linear" and self.end_step <= self.start_step:
            raise ValueError(
                f"linear timestep schedule needs end_step > start_step, got {self.start_step}..{self.end_step}: "
                "set end_step to the step where annealing ends"
            )

    @property
    def bounds_start(self) -> tuple[float, float]:
        return self.min_step_percent, self.max_step_percent

    @property
    def bounds_end(self) -> tuple[float, float]:
        lo = self.min_step_percent if self.min_step_percent_end is None else self.min_step_percent_end
        hi = self.max_step_percent if self.max_step_percent_end is None else self.max_step_percent_end
        return lo, hi


class TimestepSampler:
    """Draws integer timesteps for score distillation; the one place where the t-range schedule lives."""

    def __init__(self, cfg: TimestepScheduleConfig, num_train_timesteps: int, max_steps: int):
        cfg.validate()
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if cfg.kind in ("hifa_sqrt", "dreamgaussian") and max_steps < 1:
            raise ValueError(
                f"timestep schedule {cfg.kind!r} needs max_steps >= 1 (the run length), got {max_steps}"
            )
        self.cfg = cfg
        self.num_train_timesteps = num_train_timesteps
        self.max_steps = max_steps

    def _to_step(self, percent: float) -> int:
        return min(round(percent * self.num_train_timesteps), self.num_train_timesteps - 1)

    def range_at(self, step: int) -> tuple[int, int]:
        """(t_min, t_max), inclusive integers, at training step `step`; equal for the deterministic kinds."""
        cfg = self.cfg
        (lo0, hi0), (lo1, hi1) = cfg.bounds_start, cfg.bounds_end
        if cfg.kind == "linear":
            f = min(max((step - cfg.start_step) / (cfg.end_step - cfg.start_step), 0.0), 1.0)
            return self._to_step(lo0 + f * (lo1 - lo0)), self._to_step(hi0 + f * (hi1 - hi0))
        if cfg.kind == "milestone":
            lo, hi = (lo1, hi1) if step >= cfg.end_step else (lo0, hi0)
            return self._to_step(lo), self._to_step(hi)
        t_min, t_max = self._to_step(lo0), self._to_step(hi0)
        ratio = min(max(step / self.max_steps, 0.0), 1.0) if self.max_steps > 0 else 0.0
        if cfg.kind == "hifa_sqrt":
            t = round(t_max - (t_max - t_min) * math.sqrt(ratio))  # HiFA (Zhu et al. 2023), sqrt annealing
            return t, t
        if cfg.kind == "dreamgaussian":
            t = min(max(round((1.0 - ratio) * self.num_train_timesteps), t_min), t_max)
            return t, t
        return t_min, t_max

    def sample(
        self,
        batch_size: int,
        step: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "B"]:
        """(batch_size,) int64 timesteps uniform on [t_min, t_max] (inclusive) of range_at(step).

        per_sample=False draws one t shared by the whole batch. The draw happens on the generator's device
        (CPU without one), so a seeded CPU generator gives the same timesteps on any device.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t_min, t_max = self.range_at(step)
        n = batch_size if self.cfg.per_sample else 1
        draw_device = "cpu" if generator is None else generator.device
        t = torch.randint(t_min, t_max + 1, (n,), generator=generator, device=draw_device, dtype=torch.long)
        return t.expand(batch_size).clone().to(device) if n == 1 else t.to(device)
