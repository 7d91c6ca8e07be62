"""Every shipped experiment through the real `distill3d` command (tiny models, 32², 2 steps), and the
run-directory contract: config.yaml, checkpoint without frozen weights, turntable video, export, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.systems.cli import TINY, run_cli, summary


def _run_dir(tmp_path, name):
    return tmp_path / "runs" / name


def _check_run(run_dir, expect_psnr: bool):
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 2
    art = s["artifacts"]
    for key in ("config", "checkpoint", "video"):
        assert Path(art[key]).is_file() and run_dir in Path(art[key]).parents
    assert (run_dir / "video" / "test.mp4").stat().st_size > 0
    assert (run_dir / "export" / "model.glb").stat().st_size > 0 and (
        run_dir / "export" / "model.obj"
    ).exists()
    assert set(art["export"]) == {"glb", "obj"}
    assert list((run_dir / "save").glob("it*-val.png"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 2
    assert ("psnr" in s.get("metrics", {})) == expect_psnr
    return s


def _checkpoint_keys(run_dir):
    state = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    return list(state["state_dict"])


def test_demo_experiment_smoke(tmp_path):
    run_dir = _run_dir(tmp_path, "demo")
    # The demo starts from an empty volume; a blob gives a 2-step run a surface to export.
    result = run_cli([*TINY, "system.geometry.density_bias=blob_magic3d", f"run_dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = _check_run(run_dir, expect_psnr=True)
    assert 0 < s["metrics"]["psnr"] < 100
    assert f"run directory: {run_dir}" in result.stdout

    # Re-export with new options and re-render the turntable from the checkpoint, without training.
    video = run_dir / "video" / "test.mp4"
    video.unlink()
    again = run_cli(
        ["mode=export", f"resume={run_dir}", "export.formats=[ply]", "export.resolution=24"], cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    s = summary(run_dir)
    assert s["mode"] == "export" and s["steps"] == 2 and set(s["artifacts"]["export"]) == {"ply"}
    assert (run_dir / "export" / "model.ply").stat().st_size > 0 and not video.exists()
    test = run_cli(["mode=test", f"resume={run_dir}"], cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert summary(run_dir)["mode"] == "test" and video.stat().st_size > 0


@pytest.mark.parametrize(
    ("experiment", "weights"), [("dreamfusion-sd", "tiny_sd_path"), ("dreamfusion-if", "tiny_if_path")]
)
def test_real_model_experiments_smoke_with_tiny_weights(tmp_path, request, experiment, weights):
    """SD (latent SDS through the VAE) and IF (pixel SDS, learned variance) through the real loading code."""
    run_dir = _run_dir(tmp_path, experiment)
    args = [
        f"experiment={experiment}",
        f"system.guidance.pretrained_model_name_or_path={request.getfixturevalue(weights)}",
        "system.guidance.torch_dtype=fp32",
        f"run_dir={run_dir}",
        *TINY,
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_run(run_dir, expect_psnr=False)
    keys = _checkpoint_keys(run_dir)
    frozen = [k for k in keys if any(m in k for m in ("unet", "vae", "text_encoder"))]
    assert keys and not frozen, frozen
