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
}
NERF = "geometry.nerf.field.ImplicitVolume"
GAUSSIANS = "geometry.gaussians.model.GaussianModel"
DIFFUSERS = "distill.denoisers.diffusers_unet.DiffusersDenoiser"


def composed(experiment: str) -> dict:
    """The experiment's full config as the command composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    return OmegaConf.to_container(cfg, resolve=True)


def _system_overrides(system: dict, prefix: str, tiny_model) -> list[str]:
    """Shrink one system section; tiny_model(model id) → the fixture folder that replaces it."""
    out = []
    geometry = system.get("geometry", {}).get("_target_")
    if geometry == NERF:
        out += [
            f"{prefix}.geometry.hash_grid.n_levels=4",
            f"{prefix}.geometry.hash_grid.log2_hashmap_size=12",
            f"{prefix}.renderer.num_samples_per_ray=16",
            # a 2-step run of a field that starts empty has no surface: a blob gives export something to find
            f"{prefix}.geometry.density_bias=blob_magic3d",
        ]
        if system["geometry"].get("hash_grid", {}).get("start_level") is not None:
            out.append(f"{prefix}.geometry.hash_grid.start_level=2")  # progressive levels, within the 4 kept
    elif geometry == GAUSSIANS:
        out += [
            f"{prefix}.geometry.num_points=300",
            f"{prefix}.densify.start_step=1",
            f"{prefix}.densify.interval=2",
            f"{prefix}.densify.grad_threshold=1e-12",
        ]
    denoiser = system.get("guidance", {}).get("denoiser", {})
    if denoiser.get("_target_") == DIFFUSERS:
        out += [
            f"{prefix}.guidance.denoiser.pretrained_model_name_or_path={tiny_model(denoiser['pretrained_model_name_or_path'])}",
            f"{prefix}.guidance.denoiser.torch_dtype=fp32",
        ]
    return out


def tiny_overrides(experiment: str, tiny_model) -> tuple[list[str], int]:
    """(overrides, steps of the final stage) for a 2-steps-per-stage run of `experiment` at 32²."""
    cfg = composed(experiment)
    common = [*TINY_RUN, "data.resolution_milestones=[]", "data.batch_size=[1]"]
    stages = cfg.get("stages") or []
    if not stages:
        steps = ["trainer.max_steps=2", "trainer.val_check_interval=1"]
        return [*common, *steps, *_system_overrides(cfg["system"], "system", tiny_model)], 2
    out = list(common)
    for i, stage in enumerate(stages):
        out += [f"stages.{i}.trainer.max_steps=2", f"stages.{i}.trainer.val_check_interval=1"]
        system = stage.get("system", {})
        if "_target_" not in system or system.get("_target_") == cfg["system"].get("_target_"):
            system = {**cfg["system"], **system}  # the stage inherits the top-level system
            out += _system_overrides(system, "system", tiny_model)
        else:
            out += _system_overrides(system, f"stages.{i}.system", tiny_model)
    return list(dict.fromkeys(out)), 2
