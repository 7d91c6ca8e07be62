"""Typed configuration of a system (the recipe): plugin sections, loss weights, shading, optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from systems.optim import OptimizerConfig
from systems.schedules import ScheduledValue


@dataclass
class LossConfig:
    """Loss weights: numbers or ramps [start_step, start_value, end_value, end_step] (systems/schedules.py)."""

    lambda_guidance: Any = 1.0
    lambda_orient: Any = 0.0
    lambda_sparsity: Any = 0.0
    lambda_opaque: Any = 0.0
    lambda_z_variance: Any = 0.0

    def schedules(self) -> dict[str, ScheduledValue]:
        return {f.name: ScheduledValue.parse(getattr(self, f.name), f"loss.{f.name}") for f in fields(self)}

    def validate(self) -> None:
        self.schedules()


@dataclass
class ShadingConfig:
    """Which shading the renderer uses each step (REFERENCE.md, NeRF: Shading)."""

    mode: str = "random"  # "albedo": always unlit; "random": ambient-only warm-up, then random
    ambient_only_steps: int = 2000
    textureless_prob: float = 0.5

    def validate(self) -> None:
        if self.mode not in ("albedo", "random"):
            raise ValueError(f"shading.mode must be 'albedo' or 'random', got '{self.mode}'")
        if not 0.0 <= self.textureless_prob <= 1.0:
            raise ValueError(f"shading.textureless_prob must be in [0, 1], got {self.textureless_prob}")


@dataclass
class SystemConfig:
    geometry: dict = field(default_factory=dict)
    material: dict = field(default_factory=dict)
    background: dict = field(default_factory=dict)
    renderer: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    prompt_processor: dict = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    max_nonfinite_in_a_row: int = 20
    eval_chunk_views: int = 4

    def validate(self) -> None:
        if self.max_nonfinite_in_a_row < 1:
            raise ValueError("system.max_nonfinite_in_a_row must be >= 1")


@dataclass
class RunInfo:
    """What the launcher tells the system about the run (not part of the recipe)."""

    prompt: str
    negative_prompt: str = ""
    scene: str | None = None
    max_steps: int = 1000
    seed: int = 0
