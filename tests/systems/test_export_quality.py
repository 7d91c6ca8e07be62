"""Export quality against ground truth: game meshes are the outer surface only (no hollow inner shell under it),
and Gaussians export the colours they render (not a washed-out density-weighted mean)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from geometry.analytic import load_scene
from geometry.fields.backgrounds import SolidBackground
from geometry.gaussians.model import GaussianConfig, GaussianModel
from geometry.gaussians.renderer import SplatRenderer, SplatRendererConfig
from geometry.mesh.export import ExportConfig, ExportViews, export_geometry
from geometry.mesh.metrics import sample_surface, surface_accuracy
from geometry.mesh.surface import density_to_mesh
from systems.app.checkpoints import load_weights
from systems.app.runner import Runner
from systems.app.validation import validate_run
from systems.data import eval_distance_fovy
from tests.systems.cli import run_cli, summary
from tests.systems.test_export import load_glb_world

TWO_SPHERES = Path(__file__).resolve().parents[1] / "fixtures" / "scenes" / "two_spheres.yaml"
RED, GREY = (0.8, 0.15, 0.15), (0.5, 0.5, 0.5)


def _fibonacci(n: int, radius: float) -> torch.Tensor:
    i = torch.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1) * radius


def _layered_ball() -> GaussianModel:
    """The mechanism of the washed-out colours, built by hand: an opaque red shell over many faint grey Gaussians
    inside (a trained set looks like this: the prior only sees the surface). Renders are red."""
    model = GaussianModel(GaussianConfig(num_points=1, init="points", init_opacity=0.5))
    shell = _fibonacci(1500, 0.5)
    inside = torch.nn.functional.normalize(
        torch.randn(3000, 3, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    inside = inside * 0.47 * torch.rand(3000, 1, generator=torch.Generator().manual_seed(1)) ** (1 / 3)
    model.init_from_points(torch.cat([shell, inside]), torch.tensor([RED] * 1500 + [GREY] * 3000))
    with torch.no_grad():
        model.log_scales[:1500] = math.log(0.035)
        model.log_scales[1500:] = math.log(0.06)
        model.opacity_logits[:1500] = math.log(0.95 / 0.05)
        model.opacity_logits[1500:] = math.log(0.25 / 0.75)
    return model


def _colour_error(tmp_path, geometry, views) -> float:
    cfg = ExportConfig(
        formats=["glb"], resolution=64, target_faces=5000, texture_size=256, bake_views=16, bake_resolution=96
    )
    result = export_geometry(geometry, cfg, tmp_path, views)
    mesh, image = load_glb_world(result.files["glb"])
    red = torch.tensor(RED)
    acc = surface_accuracy(
        mesh, image, lambda p: p.norm(dim=-1) - 0.5, lambda p: red.expand(len(p), 3), n_samples=4000
    )
    return acc.color_error


def test_gaussian_export_bakes_the_rendered_colour_not_the_density_weighted_mean(tmp_path):
    model = _layered_ball()
    renderer = SplatRenderer(SplatRendererConfig(backend="torch"), model, None, SolidBackground()).eval()
    views = ExportViews(renderer, distance=2.5, fovy_deg=45.0, elevation=15.0)
    baked = _colour_error(tmp_path / "projected", model, views)

    class DensityWeighted:  # the previous export: the field's mean colour at each surface point
        radius = 1.0
        density, albedo, to_mesh = model.density, model.albedo, model.to_mesh

        @staticmethod
        def surface_colors(cfg, views=None):
            return model.surface_colors(cfg, None)

    washed = _colour_error(tmp_path / "mean", DensityWeighted(), views)
    # Measured: 0.010 projected vs 0.165 density-weighted (the faint grey interior pulls the mean toward grey).
    assert baked < 0.05 and washed > 3 * baked, (baked, washed)


@pytest.mark.slow  # one real 300-step demo-gaussians run, ~40 s on an idle 2-core machine
def test_demo_gaussians_export_colours_match_the_scene(tmp_path):
    run_dir = tmp_path / "gs"
    args = [
        "experiment=demo-gaussians", f"run_dir={run_dir}", "trainer.max_steps=300", "trainer.val_check_interval=0",
        "trainer.enable_progress_bar=false", "data.resolution_milestones=[200]", "data.n_val_views=1",
        "data.n_test_views=2", "eval.n_views=4", "system.densify.stop_step=250", "system.densify.max_gaussians=5000",
        "export.texture_size=256",
    ]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scene = load_scene_or_builtin("a snowman")
    mesh, image = load_glb_world(run_dir / "export" / "model.glb")
    acc = surface_accuracy(mesh, image, scene.sdf, scene.albedo, n_samples=10_000)
    # Measured 0.048 (median 0.011) after 300 steps; the full 1000-step demo: 0.042 (median 0.011), where the
    # previous density-weighted bake gave 0.124 (median 0.055). Target ≤ 0.10.
    assert acc.color_error <= 0.08, acc


def load_scene_or_builtin(spec: str):
    from geometry.analytic import builtin_scene

    return load_scene(spec) if spec.endswith(".yaml") else builtin_scene(spec)


def _fitted(run_dir: Path):
    """The trained system of a finished run (in-process, no training), and the views its export uses."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    raw.update(resume=str(run_dir), mode="export", weights=None, run_dir=None)
    validated = validate_run(raw)
    system, _ = Runner(validated).build_system(validated.final, training=False)
    load_weights(system, run_dir / "ckpts" / "last.ckpt", "weights")
    system.eval()
    data = validated.final.cfg.data
    distance, fovy = eval_distance_fovy(data)
    return system, ExportViews(system.renderer, distance, fovy, data.eval_elevation), validated.cfg.export


def _surface_error(mesh, scene) -> tuple[float, float]:
    points, _ = sample_surface(mesh, 20_000, seed=0)
    sdf = scene.sdf(torch.from_numpy(points)).abs()
    return float((sdf < 0.03).float().mean()), float(sdf.mean())


@pytest.mark.slow  # the full 800-step NeRF demo on a held-out scene, ~100 s on an idle 2-core machine
def test_nerf_export_is_the_outer_surface_without_an_inner_shell(tmp_path):
    run_dir = tmp_path / "two"
    args = [f"scene={TWO_SPHERES}", f"run_dir={run_dir}", "trainer.val_check_interval=0", "trainer.enable_progress_bar=false",
            "data.n_test_views=2", "eval.n_views=4", "export.texture_size=256"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["metrics"]["psnr"] > 28
    scene = load_scene(TWO_SPHERES)
    within, mean = _surface_error(load_glb_world(run_dir / "export" / "model.glb")[0], scene)
    # Measured 1.000 within 0.03 and mean |sdf| 0.0048 (targets ≥ 0.95, ≤ 0.012).
    assert within >= 0.95 and mean <= 0.012, (within, mean)
    # Without the visibility fill (the previous export) the same field keeps its hollow inner shell: measured
    # 0.62 within 0.03, 38 % of the surface deeper than 0.03 inside, mean 0.037.
    system, views, cfg = _fitted(run_dir)
    old = density_to_mesh(system.geometry, cfg, views.probe(), depth_probe=None)
    old_within, old_mean = _surface_error(old, scene)
    assert old_within < 0.8 and old_mean > 0.02, (old_within, old_mean)
