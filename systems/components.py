"""Building a system's components from its config: renderer (with geometry, material, background), guidance
(with its frozen denoiser), condition, and the ground truth the oracles know.

`check_components` validates every section (typed configs, `_target_`s, loss names) without building anything,
so bad input fails in seconds; `build_components` builds them, loading weights last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill3d.errors import ConfigError
from systems.config import RunInfo, SystemConfig
from systems.losses import LossWeights
from systems.typed_config import check_section, instantiate, target_class


@dataclass
class Components:
    """renderers: one per particle (system.num_particles), each with its own geometry/material/background.
    ground_truths: the modes of the run's target (the oracles), [] when unknown."""

    renderers: list[Any]
    guidance: Any | None
    condition: Any | None
    ground_truths: list[Any]
    losses: LossWeights

    @property
    def renderer(self) -> Any:
        return self.renderers[0]


def _section(cfg: SystemConfig, name: str) -> dict:
    value = getattr(cfg, name)
    if not value:
        raise ConfigError(f"system.{name} is missing: it needs a '_target_' (see configs/experiment/*.yaml)")
    return value


def declared_losses(renderer_cls: type, guidance_cls: type | None) -> dict[str, str]:
    """{loss name: owner} from the components' `loss_names`."""
    names = {n: "renderer" for n in getattr(renderer_cls, "loss_names", ())}
    if guidance_cls is not None:
        names.update({n: "guidance" for n in getattr(guidance_cls, "loss_names", ())})
    return names


def check_components(cfg: SystemConfig) -> dict[str, Any]:
    """Validate every section's typed config and the loss weights; returns {section: (class, config)}."""
    checked = {
        name: check_section(_section(cfg, name), f"system.{name}")
        for name in ("geometry", "material", "background", "renderer")
    }
    guidance_cls, guidance_cfg = check_section(_section(cfg, "guidance"), "system.guidance")
    checked["guidance"] = (guidance_cls, guidance_cfg)
    checked["denoiser"] = check_section(guidance_cfg.denoiser_section(), "system.guidance.denoiser")
    checked["prompt_processor"] = check_section(_section(cfg, "prompt_processor"), "system.prompt_processor")
    loss_weights(cfg, checked["renderer"][0], guidance_cls)
    return checked


def ground_truths(cfg: SystemConfig, run: RunInfo) -> list[Any]:
    """The scene(s) the run should reach, if the denoiser knows them (the oracles), without loading anything."""
    guidance_cls, guidance_cfg = check_section(cfg.guidance, "system.guidance")
    denoiser_cls, denoiser_cfg = check_section(guidance_cfg.denoiser_section(), "system.guidance.denoiser")
    return denoiser_cls.ground_truths(denoiser_cfg, run)


def loss_weights(cfg: SystemConfig, renderer_cls: type, guidance_cls: type | None) -> LossWeights:
    """system.loss over the guidance's defaults (VSD's particle loss is on unless turned off)."""
    defaults = getattr(guidance_cls, "default_loss_weights", {}) if guidance_cls is not None else {}
    spec = {**{f"lambda_{k}": v for k, v in defaults.items()}, **cfg.loss}
    return LossWeights(spec, declared_losses(renderer_cls, guidance_cls))


def build_renderer(cfg: SystemConfig) -> Any:
    geometry = instantiate(cfg.geometry, "system.geometry")
    material = instantiate(cfg.material, "system.material")
    background = instantiate(cfg.background, "system.background")
    return instantiate(cfg.renderer, "system.renderer", geometry, material, background)


def build_components(cfg: SystemConfig, run: RunInfo, with_guidance: bool = True) -> Components:
    """Renderer first (cheap, checks its losses), then — when training — the denoiser (weights), the guidance
    and the condition (text encoding or cache)."""
    guidance_cls, _ = target_class(cfg.guidance, "system.guidance")
    renderer = build_renderer(cfg)
    losses = loss_weights(cfg, type(renderer), guidance_cls)
    try:
        renderer.check_losses(losses.active & set(renderer.loss_names))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # Particles are built one after another from the seeded global RNG: different initial weights each.
    renderers = [renderer] + [build_renderer(cfg) for _ in range(cfg.num_particles - 1)]
    truths = ground_truths(cfg, run)
    if not with_guidance:
        return Components(renderers, None, None, truths, losses)
    _, guidance_cfg = check_section(cfg.guidance, "system.guidance")
    denoiser = instantiate(guidance_cfg.denoiser_section(), "system.guidance.denoiser", run)
    guidance = instantiate(cfg.guidance, "system.guidance", denoiser, run.max_steps)
    condition = instantiate(cfg.prompt_processor, "system.prompt_processor", run, denoiser)
    return Components(renderers, guidance, condition, truths, losses)
