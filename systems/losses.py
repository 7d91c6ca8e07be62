"""Loss weights: a mapping `lambda_<name>` → number or ramp, checked against the names components declare.

The guidance declares its losses (`loss_names`, e.g. "guidance"; VSD adds "lora"), the renderer its
regularizers ("orient", "sparsity", ...). A weight for a name nobody declares is a typo: refused with a
suggestion, so a new loss needs its declaration in one place only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from distill3d.errors import ConfigError
from systems.schedules import ScheduledValue
from systems.typed_config import suggest

PREFIX = "lambda_"


class LossWeights:
    """Parsed, validated weights: `at(step)` → {name: weight}; `active` names whose weight is ever nonzero."""

    def __init__(self, spec: Mapping[str, Any], declared: Mapping[str, str]) -> None:
        """spec: system.loss; declared: {loss name: the component that computes it}."""
        valid = [PREFIX + n for n in declared]
        self.schedules: dict[str, ScheduledValue] = {}
        for key, value in spec.items():
            if not key.startswith(PREFIX) or key[len(PREFIX) :] not in declared:
                raise ConfigError(
                    f"unknown loss weight 'system.loss.{key}': {suggest(key, valid, 'system.loss')}"
                )
            try:
                self.schedules[key[len(PREFIX) :]] = ScheduledValue.parse(value, f"system.loss.{key}")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.declared = dict(declared)

    @property
    def active(self) -> set[str]:
        """Names whose weight is nonzero at some step (only these are computed)."""
        return {n for n, s in self.schedules.items() if s.start_value != 0.0 or s.end_value != 0.0}

    def at(self, step: int) -> dict[str, float]:
        return {name: sched(step) for name, sched in self.schedules.items()}

    def total(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        """Σ weight·loss over the losses given (unweighted values in), skipping zero weights."""
        weights = self.at(step)
        terms = [weights[n] * v for n, v in losses.items() if weights.get(n, 0.0) != 0.0]
        if not terms:
            raise ConfigError(
                "every loss weight is 0 at this step: set system.loss.lambda_guidance (e.g. 1.0)"
            )
        return sum(terms[1:], terms[0])
