"""Exact resume: 40 steps straight == 20 steps + `resume=` to 40; SIGTERM mid-run writes a checkpoint that
resumes. Through the real `distill3d` command."""

from __future__ import annotations

import signal
import subprocess
import time

import torch

from tests.systems.cli import TINY, distill3d_command, run_cli, summary

FAST = [
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.val_check_interval"))],
    "trainer.val_check_interval=0",
    "export.enabled=false",
    "data.n_test_views=1",
    "eval.n_views=1",
    # An LR schedule is defined over trainer.max_steps, so extending a run (20 → 40) changes it by design; the
    # exactness check below is about everything else (parameters, Adam moments, occupancy grid, RNG, step).
    "system.optimizer.lr_scheduler=none",
]


def _state(run_dir):
    ckpt = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"], ckpt["optimizer_states"]


def test_resume_is_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli([*FAST, "trainer.max_steps=40", f"run_dir={straight}"], cwd=tmp_path).returncode == 0
    assert run_cli([*FAST, "trainer.max_steps=20", f"run_dir={split}"], cwd=tmp_path).returncode == 0
    first, step, _ = _state(split)
    assert step == 20
    result = run_cli([f"resume={split}", "trainer.max_steps=40"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, step_a, opt_a = _state(straight)
    b, step_b, opt_b = _state(split)
    assert step_a == step_b == 40 and summary(split)["steps"] == 40
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert any(not torch.equal(first[k], b[k]) for k in first), "the resumed run did not train"
    for group_a, group_b in zip(opt_a[0]["state"].values(), opt_b[0]["state"].values(), strict=True):
        assert torch.equal(group_a["exp_avg"], group_b["exp_avg"])


def test_sigterm_checkpoints_then_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [*distill3d_command(), *FAST, "trainer.max_steps=100000", f"run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run_dir / "logs").exists() and time.time() < deadline:  # training has started
            time.sleep(0.5)
        time.sleep(5.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and f"distill3d resume={run_dir}" in out
    s = summary(run_dir)
    _, step, _ = _state(run_dir)
    assert s["status"] == "interrupted" and 0 < step == s["steps"] < 100000
    assert not list((run_dir / "ckpts").glob(".*tmp*")), "temporary checkpoint left behind"
    result = run_cli([f"resume={run_dir}", f"trainer.max_steps={step + 3}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed" and _state(run_dir)[1] == step + 3
