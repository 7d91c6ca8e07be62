"""Every shipped experiment, found by glob, with the overrides that make it a seconds-long CPU run with tiny models."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.systems.cli import TINY_RUN

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# The model a recipe names → the tiny random model in the same layout that stands in for it (tests/fixtures).
TINY_MODELS = {
    "stabilityai/stable-diffusion-2-1-base": "tiny_sd_path",
    "DeepFloyd/IF-I-XL-v1.0": "tiny_if_path",
    "ashawkey/mvdream-sd2.1-diffusers": "tiny_mvdream_path",
}
NERF = "geometry.nerf.field.ImplicitVolume"
GAUSSIANS = "geometry.gaussians.model.GaussianModel"
DMTET = "geometry.dmtet.geometry.DMTetGeometry"
DIFFUSERS = "distill.denoisers.diffusers_unet.DiffusersDenoiser"
MVDREAM = "distill.denoisers.mvdream.MVDreamDenoiser"


def composed(experiment: str) -> dict:
    """The experiment's full config as the command composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    return OmegaConf.to_container(cfg, resolve=True)


def _geometry_overrides(geometry: dict, prefix: str) -> list[str]:
    """Shrink one geometry section (prefix: where it lives, e.g. "system" or "stages.1.system")."""
    target = geometry.get("_target_")
    if target == NERF:
        out = [
            f"{prefix}.geometry.hash_grid.n_levels=4",
            f"{prefix}.geometry.hash_grid.log2_hashmap_size=12",
            f"{prefix}.renderer.num_samples_per_ray=16",
            # a 2-step run of a field that starts empty has no surface: a blob gives export something to find
            f"{prefix}.geometry.density_bias=blob_magic3d",
        ]
        if geometry.get("hash_grid", {}).get("start_level") is not None:
            out.append(f"{prefix}.geometry.hash_grid.start_level=2")  # progressive levels, within the 4 kept
        return out
    if target == GAUSSIANS:
        return [
            f"{prefix}.geometry.num_points=300",
            f"{prefix}.densify.start_step=1",
            f"{prefix}.densify.interval=2",
            f"{prefix}.densify.grad_threshold=1e-12",
        ]
    if target == DMTET:  # the same hash grid as the NeRF's above, so a DMTet stage can copy its weights
        return [
            f"{prefix}.geometry.grid_resolution=32",
            f"{prefix}.geometry.hash_grid.n_levels=4",
            f"{prefix}.geometry.hash_grid.log2_hashmap_size=12",
        ]
    return []


def _guidance_overrides(guidance: dict, prefix: str, tiny_model) -> list[str]:
    """The tiny random model in place of the one a guidance section names; tiny_model(model id) → its folder."""
    denoiser = guidance.get("denoiser", {})
    if denoiser.get("_target_") not in (DIFFUSERS, MVDREAM):
        return []
    return [
        f"{prefix}.guidance.denoiser.pretrained_model_name_or_path={tiny_model(denoiser['pretrained_model_name_or_path'])}",
        f"{prefix}.guidance.denoiser.torch_dtype=fp32",
    ]


def _system_overrides(system: dict, prefix: str, tiny_model) -> list[str]:
    return _geometry_overrides(system.get("geometry", {}), prefix) + _guidance_overrides(
        system.get("guidance", {}), prefix, tiny_model
    )


def _stage_overrides(cfg: dict, i: int, stage: dict, tiny_model) -> list[str]:
    """A stage's own sections are shrunk where they live (stages.<i>.…), inherited ones at the top level."""
    out = [f"stages.{i}.trainer.max_steps=2", f"stages.{i}.trainer.val_check_interval=1"]
    data = stage.get("data", {})
    out += [f"stages.{i}.data.{key}=[32]" for key in ("height", "width") if key in data]
    out += [f"stages.{i}.data.eval_height=32"] * ("eval_height" in data)
    out += [f"stages.{i}.data.{key}=[]" for key in ("resolution_milestones",) if key in data]
    out += [f"stages.{i}.data.batch_size=[1]"] * ("batch_size" in data)
    system, top = stage.get("system", {}), cfg["system"]
    if "_target_" in system and system["_target_"] != top.get("_target_"):
        return out + _system_overrides(system, f"stages.{i}.system", tiny_model)  # a whole new system
    for name, shrink in (
        ("geometry", lambda sec, pre: _geometry_overrides(sec, pre)),
        ("guidance", lambda sec, pre: _guidance_overrides(sec, pre, tiny_model)),
    ):
        own = system.get(name, {})
        replaced = "_target_" in own and own["_target_"] != top.get(name, {}).get("_target_")
        out += shrink(own, f"stages.{i}.system") if replaced else shrink(top.get(name, {}), "system")
    return out


def tiny_overrides(experiment: str, tiny_model) -> tuple[list[str], int]:
    """(overrides, steps of the final stage) for a 2-steps-per-stage run of `experiment` at 32²."""
    cfg = composed(experiment)
    views = cfg.get("data", {}).get("n_view", 1)  # multi-view recipes: one object of n_view views
    common = [*TINY_RUN, "data.resolution_milestones=[]", f"data.batch_size=[{views}]"]
    stages = cfg.get("stages") or []
    if not stages:
        steps = ["trainer.max_steps=2", "trainer.val_check_interval=1"]
        return [*common, *steps, *_system_overrides(cfg["system"], "system", tiny_model)], 2
    out = list(common)
    for i, stage in enumerate(stages):
        out += _stage_overrides(cfg, i, stage, tiny_model)
    return list(dict.fromkeys(out)), 2
