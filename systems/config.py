"""Typed configuration of a system (the recipe): component sections, loss weights, shading, optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from systems.optim import OptimizerConfig


@dataclass
class ShadingConfig:
    """Which shading the renderer uses each training step (REFERENCE.md, NeRF: Shading; threestudio's
    DiffuseWithPointLightMaterial): "albedo" for the first ambient_only_steps, then per batch albedo with
    probability 1 − diffuse_prob, else textureless with probability textureless_prob, else lambertian.

    mode: "albedo" (always unlit) or "random" (the schedule above).
    """

    mode: str = "random"
    ambient_only_steps: int = 2001
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.5

    def validate(self) -> None:
        if self.mode not in ("albedo", "random"):
            raise ValueError(f"shading.mode must be 'albedo' or 'random', got '{self.mode}'")
        for name in ("diffuse_prob", "textureless_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"shading.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SystemConfig:
    """A recipe: the `_target_` sections of its components and how they are trained.

    geometry / material / background / renderer / guidance / prompt_processor: component sections (a `_target_`
    plus its typed config); guidance holds its denoiser section. loss: {lambda_<name>: weight or ramp} for the
    loss names the guidance and renderer declare. eval_chunk_views: views rendered at once in evaluation.
    num_particles: independent 3D models optimized together (VSD's particles); each is rendered at the same
        cameras every step, evaluated, shown side by side and exported (export/particle_<i>/).
    particles_per_step: how many of them (a random subset) are rendered each step; None = all.
    guidance_input: what the guidance scores: "rgb" (the render), or "normal" — the world-normal image mapped to
        [0, 1] over the same background, as ProlificDreamer's geometry stage does (SDS on normals, CFG 100),
        so only the shape trains.
    """

    geometry: dict = field(default_factory=dict)
    material: dict = field(default_factory=dict)
    background: dict = field(default_factory=dict)
    renderer: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    prompt_processor: dict = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=lambda: {"lambda_guidance": 1.0})
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    max_nonfinite_in_a_row: int = 20
    eval_chunk_views: int = 4
    num_particles: int = 1
    particles_per_step: int | None = None
    guidance_input: str = "rgb"

    def validate(self) -> None:
        if self.guidance_input not in ("rgb", "normal"):
            raise ValueError(f"system.guidance_input must be 'rgb' or 'normal', got '{self.guidance_input}'")
        if self.max_nonfinite_in_a_row < 1:
            raise ValueError("system.max_nonfinite_in_a_row must be >= 1")
        if self.num_particles < 1:
            raise ValueError(f"system.num_particles={self.num_particles} must be >= 1")
        if self.particles_per_step is not None and not 1 <= self.particles_per_step <= self.num_particles:
            raise ValueError(
                f"system.particles_per_step={self.particles_per_step} must be in [1, num_particles="
                f"{self.num_particles}] (or null for all)"
            )


@dataclass
class RunInfo:
    """What a system is told about its run (not part of the recipe)."""

    prompt: str
    negative_prompt: str = ""
    scene: str | None = None
    max_steps: int = 1000
    seed: int = 0
