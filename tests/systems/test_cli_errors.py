"""Bad input through the real `distill3d` command: one clear line, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import pytest
import torch

from tests.systems.cli import run_cli

BAD_SCENE = "name: bad\nprimitives:\n  - {type: sphere, center: [0, 0], radius: 0.3, color: [1, 0, 0]}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["experiment=nope"], "unknown experiment 'nope'"),
        (["trainer.max_step=5"], "did you mean 'trainer.max_steps'"),
        (["system.guidance.guidance_scal=3"], "did you mean 'system.guidance.guidance_scale'"),
        (["trainer.max_steps=-3"], "trainer.max_steps must be >= 0"),
        (["scene=missing.yaml"], "missing.yaml"),
        (["scene=bad.yaml"], "center"),
        (["mode=export", "resume=outputs/demo/nothing"], "no such run directory"),
        (["resume=outputs/demo/nothing"], "no such run directory"),
        (
            [
                "experiment=dreamfusion-sd",
                "system.guidance.pretrained_model_name_or_path=stabilityai/stable-diffusion-2-1-base",
            ],
            "HF_HUB_OFFLINE",
        ),
        (["system.loss.lambda_orent=1"], "did you mean 'system.loss.lambda_orient'"),
        (["system.loss.lambda_orient=1"], "needs normals while training"),
        (["system.guidance.denoiser._target_=nope.Nope"], "cannot be imported"),
        (["stages=[{name: a},{name: a}]"], "used twice"),
        pytest.param(
            ["trainer.accelerator=gpu"],
            "no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (["trainer.precision=16-true"], "pure half weights"),
        (["trainer.devices=2"], "one device per run"),
        (["export.resolution=1024", "export.max_memory_gb=8"], "use export.resolution="),
        (["prompt=[a cat"], "quote the value"),
        (["overwrite=true"], "overwrite=true needs run_dir="),
        (["checkpoint.every_n_steps=-1"], "must be >= 0"),
    ],
    ids=[
        "unknown-experiment",
        "unknown-key",
        "unknown-nested-key",
        "negative-steps",
        "missing-scene",
        "malformed-scene",
        "export-missing-run",
        "resume-missing-run",
        "weights-offline",
        "unknown-loss-weight",
        "orient-without-normals",
        "bad-denoiser-target",
        "duplicate-stage",
        "gpu-without-cuda",
        "pure-half-precision",
        "several-devices",
        "export-memory",
        "unparsable-value",
        "overwrite-without-run-dir",
        "negative-checkpoint-interval",
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, expected):
    (tmp_path / "bad.yaml").write_text(BAD_SCENE)
    result = run_cli([*args, "output_root=outputs"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("distill3d: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing half-written: no run directory was created.
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.yaml"))
