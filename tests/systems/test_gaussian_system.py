"""Gaussian systems through the real `distill3d` command: the DreamGaussian recipe with tiny SD weights, the
demo's convergence in a CI-sized budget, and resume across densification (checkpoints with other counts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.systems.cli import TINY_RUN, run_cli, summary

TINY_GAUSSIANS = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    *TINY_RUN,
    "data.resolution_milestones=[]",
    "system.geometry.num_points=500",
    "system.densify.start_step=1",
    "system.densify.interval=2",
    "system.densify.grad_threshold=1e-12",
]


def _check(run_dir: Path, steps: int) -> dict:
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == steps
    art = s["artifacts"]
    assert Path(art["video"]).is_file() and list((run_dir / "save").glob("it*-val.png"))
    assert {"glb", "obj", "gaussians_ply"} <= set(art["export"])
    assert (run_dir / "export" / "model.glb").stat().st_size > 0
    assert (run_dir / "export" / "gaussians.ply").read_bytes().startswith(b"ply\n")
    return s


def _num_gaussians(run_dir: Path) -> int:
    state = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    return state["state_dict"]["renderer.geometry.means"].shape[0]


@pytest.mark.slow  # ~75 s on a busy 2-core CPU (one real CLI run)
def test_dreamgaussian_smoke_with_tiny_weights(tmp_path, tiny_sd_path):
    run_dir = tmp_path / "dg"
    args = [
        "experiment=dreamgaussian",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "system.guidance.denoiser.torch_dtype=fp32",
        f"run_dir={run_dir}",
        *TINY_GAUSSIANS,
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check(run_dir, 4)
    state = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in state["state_dict"] if "unet" in k or "vae" in k or "text_encoder" in k]
    assert _num_gaussians(run_dir) != 500  # densification (threshold ~0) changed the count


@pytest.mark.slow  # two real CLI runs
def test_demo_gaussians_resume_after_densification(tmp_path):
    run_dir = tmp_path / "demo"
    first = run_cli(["experiment=demo-gaussians", f"run_dir={run_dir}", *TINY_GAUSSIANS], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    s = _check(run_dir, 4)
    assert 0 < s["metrics"]["psnr"] < 100
    n_before = _num_gaussians(run_dir)
    assert n_before != 500
    again = run_cli(
        ["experiment=demo-gaussians", f"resume={run_dir}", *TINY_GAUSSIANS, "trainer.max_steps=6"],
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(run_dir)["steps"] == 6 and _num_gaussians(run_dir) != n_before


@pytest.mark.slow  # ~41 s wall on an idle 2-core CPU (one real CLI run: 300 steps, 200 at 32² then 100 at 64²)
def test_demo_gaussians_converges_in_a_ci_budget(tmp_path):
    """The demo recipe, shortened, distils the oracle's snowman into Gaussians: measured 24.4 dB (worst view
    23.4 dB) against the analytic ground truth at 64² from a ~10 dB grey start; the full demo reaches 28.2 dB."""
    run_dir = tmp_path / "ci"
    args = [
        "experiment=demo-gaussians",
        f"run_dir={run_dir}",
        "trainer.max_steps=300",
        "trainer.val_check_interval=0",
        "trainer.enable_progress_bar=false",
        "data.resolution_milestones=[200]",
        "data.n_val_views=1",
        "data.n_test_views=2",
        "export.resolution=32",
        "export.texture_size=64",
        "export.target_faces=0",
        "system.densify.stop_step=250",
        "system.densify.max_gaussians=5000",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 300
    assert s["metrics"]["psnr"] >= 23.0, s["metrics"]  # measured 24.4 dB: ~1.4 dB margin for run-to-run noise
    assert s["metrics"]["psnr_min"] >= 22.0, s["metrics"]  # every held-out view converged, not just the mean
    assert _num_gaussians(run_dir) != 2000  # densify / prune fired (the demo starts from 2000 Gaussians)
