"""The distillation loop works: the oracle demo, shortened to a CI budget, converges to the known scene,
and the mesh it exports lies on the analytic surface with the scene's colours. Through the real command."""

from __future__ import annotations

import pytest

from geometry.analytic import builtin_scene
from geometry.mesh.metrics import surface_accuracy
from tests.systems.cli import run_cli, summary
from tests.systems.test_export import load_glb_world

CI_DEMO = [
    "trainer.max_steps=300",
    "trainer.val_check_interval=300",
    "trainer.enable_progress_bar=false",
    "data.n_test_views=8",
    "export.resolution=128",
    "export.target_faces=20000",
    "export.texture_size=512",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    run_dir = root / "run"
    result = run_cli([*CI_DEMO, f"run_dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_oracle_demo_converges_to_the_scene(demo_run):
    metrics = summary(demo_run)["metrics"]
    # Measured 27-28 dB after 300 steps (29.4 dB after the full 800-step demo).
    assert metrics["psnr"] >= 25.0 and metrics["psnr_views"] == 8, metrics


@pytest.mark.slow
def test_exported_mesh_of_the_fitted_demo_matches_the_scene(demo_run):
    scene = builtin_scene("a snowman")
    mesh, image = load_glb_world(demo_run / "export" / "model.glb")
    acc = surface_accuracy(mesh, image, scene.sdf, scene.albedo, n_samples=5000)
    assert acc.sample_sdf < 0.03 and acc.vertex_sdf < 0.03, acc
    assert acc.color_error < 0.1, acc
