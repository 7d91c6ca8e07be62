"""Multi-view guidance through the real `distill3d` command: mvdream-sd21 on the tiny MVDream port folder (the
real loader; NeRF and Gaussians; exact resume, no frozen weights in checkpoints), and the oracle demos' aligned
metrics."""

from __future__ import annotations

import pytest
import torch

from tests.systems.cli import run_cli, summary
from tests.systems.experiments import tiny_overrides

STEPS = ("trainer.max_steps", "trainer.val_check_interval")


def _ckpt(run_dir):
    return torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)


def _overrides(experiment: str, model: str) -> list[str]:
    """The tiny-run overrides of tests/systems/experiments.py without their step counts, export off."""
    overrides, _ = tiny_overrides(experiment, lambda _id: model)
    keep = [o for o in overrides if not o.startswith(STEPS)]
    return [
        *keep,
        "trainer.val_check_interval=0",
        "export.enabled=false",
        "system.optimizer.lr_scheduler=none",
    ]


@pytest.mark.parametrize("experiment", ["mvdream-sd21", "mvdream-sd21-gaussians"])
def test_mvdream_resume_is_exact_through_the_real_loader(
    tmp_path, monkeypatch, tiny_mvdream_path, experiment
):
    # The Gaussians' torch rasterizer accumulates with index_add, whose multi-threaded CPU order varies from run
    # to run (two identical runs differ in the last bits); one thread makes the bitwise comparison meaningful.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [f"experiment={experiment}", *_overrides(experiment, str(tiny_mvdream_path))]
    straight, split = tmp_path / "straight", tmp_path / "split"
    for run_dir, steps in ((straight, 6), (split, 3)):
        result = run_cli([*args, f"trainer.max_steps={steps}", f"run_dir={run_dir}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    halfway = _ckpt(split)["state_dict"]
    result = run_cli([f"resume={split}", "trainer.max_steps=6"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _ckpt(straight), _ckpt(split)
    assert a["global_step"] == b["global_step"] == 6 and summary(split)["steps"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert not [k for k in a["state_dict"] if k.startswith("guidance.")]  # MVDream's weights stay frozen, out
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"{key} differs after resume"
    assert any(not torch.equal(halfway[k], b["state_dict"][k]) for k in halfway), (
        "the resumed run did not train"
    )


@pytest.mark.parametrize("experiment", ["demo-mvdream", "demo-janus"])
def test_oracle_demos_report_aligned_metrics(tmp_path, experiment):
    run_dir = tmp_path / "run"
    args = [
        f"experiment={experiment}",
        *_overrides(experiment, ""),
        "trainer.max_steps=3",
        f"run_dir={run_dir}",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = summary(run_dir)["metrics"]
    assert metrics["psnr_aligned"] >= metrics["psnr"] - 1e-6  # the best turn includes no turn at all
    assert -180.0 < metrics["aligned_azimuth_deg"] <= 180.0
    assert "aligned:" in result.stdout
