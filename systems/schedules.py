"""Step-dependent scalar values (loss weights, probabilities), as explicit schedule objects.

A value in a config is either a number (constant) or threestudio's ramp list
`[start_step, start_value, end_value, end_step]`: `start_value` until `start_step`, then linear to `end_value`
at `end_step`, constant after. Systems update every schedule in one place (`BaseSystem.update_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScheduledValue:
    start_step: int
    start_value: float
    end_value: float
    end_step: int

    @staticmethod
    def parse(spec: Any, name: str) -> ScheduledValue:
        if isinstance(spec, (int, float)):
            return ScheduledValue(0, float(spec), float(spec), 0)
        if isinstance(spec, (list, tuple)) and len(spec) == 4:
            start_step, start_value, end_value, end_step = spec
            if end_step < start_step:
                raise ValueError(f"{name}: ramp ends (step {end_step}) before it starts (step {start_step})")
            return ScheduledValue(int(start_step), float(start_value), float(end_value), int(end_step))
        raise ValueError(
            f"{name} must be a number or [start_step, start_value, end_value, end_step], got {spec!r}"
        )

    def __call__(self, step: int) -> float:
        if step <= self.start_step or self.end_step == self.start_step:
            return self.start_value if step <= self.start_step else self.end_value
        if step >= self.end_step:
            return self.end_value
        r = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start_value + r * (self.end_value - self.start_value)
