"""Every shipped experiment (configs/experiment/*.yaml, found by glob) through the real `distill3d` command with
tiny models, and the run-directory contract: config.yaml, checkpoint without frozen weights, turntable video,
export, summary. Then re-export and re-render a finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.systems.cli import TINY, run_cli, summary
from tests.systems.experiments import EXPERIMENTS, TINY_MODELS, tiny_overrides

FROZEN_PARTS = ("unet", "vae", "text_encoder", "denoiser")


def _checkpoint_keys(path: Path) -> list[str]:
    return list(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])


def config_particles(run_dir: Path) -> int:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["system"].get("num_particles", 1)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_through_the_command(tmp_path, request, experiment):
    def tiny_model(model_id: str) -> str:
        assert model_id in TINY_MODELS, (
            f"{experiment} names {model_id}: add a tiny stand-in to tests/systems/experiments.py"
        )
        return str(request.getfixturevalue(TINY_MODELS[model_id]))

    overrides, steps = tiny_overrides(experiment, tiny_model)
    run_dir = tmp_path / "run"
    result = run_cli([f"experiment={experiment}", f"run_dir={run_dir}", *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == steps and s["experiment"] == experiment
    assert all(stage["status"] == "completed" for stage in s["stages"])
    art = s["artifacts"]
    for key in ("config", "checkpoint", "video"):
        assert Path(art[key]).is_file() and run_dir in Path(art[key]).parents, key
    assert (run_dir / "video" / "test.mp4").stat().st_size > 0
    assert list((run_dir / "save").glob("*it*-val.png"))
    assert s["export"]["status"] == "completed", s["export"]
    # One particle exports to export/, several to export/particle_<i>/ each.
    exports = art["export"] if "particle_0" in art["export"] else {"": art["export"]}
    assert len(exports) == config_particles(run_dir)
    for folder, files in exports.items():
        assert {"glb", "obj"} <= set(files) and (run_dir / "export" / folder / "model.glb").stat().st_size > 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment_name"] == experiment
    for ckpt in (run_dir / "ckpts").glob("*.ckpt"):
        keys = _checkpoint_keys(ckpt)
        # LoRA adapters live inside the frozen UNet but are trained: they must be there, the base weights not.
        frozen = [k for k in keys if any(part in k for part in FROZEN_PARTS) and ".lora_" not in k]
        assert keys and not frozen, (ckpt.name, frozen[:5])
    assert ("psnr" in s.get("metrics", {})) == ("oracle" in str(config["system"]["guidance"]["denoiser"]))


def test_demo_reexport_and_rerender_from_a_finished_run(tmp_path):
    run_dir = tmp_path / "demo"
    first = run_cli([*TINY, "system.geometry.density_bias=blob_magic3d", f"run_dir={run_dir}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"run directory: {run_dir}" in first.stdout
    assert 0 < summary(run_dir)["metrics"]["psnr"] < 100

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


def test_a_run_without_a_surface_completes_and_records_the_skipped_export(tmp_path):
    """The demo field starts empty: after 2 steps there is nothing to extract. Training still succeeded."""
    run_dir = tmp_path / "empty"
    result = run_cli([*TINY, f"run_dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["export"]["status"] == "skipped"
    assert "surface" in s["export"]["reason"] and "export" not in s["artifacts"]
    assert "export skipped" in result.stderr
