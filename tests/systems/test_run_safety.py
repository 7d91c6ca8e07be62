"""A run is never lost, mixed or silently overwritten (through the real `distill3d` command): periodic checkpoints
survive SIGKILL and resume exactly, resume keeps the metrics history, a run directory has one writer and is never
overwritten by accident, every interruption is recorded, and a sweep runs every job."""

from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.systems.cli import distill3d_command, run_cli, summary
from tests.systems.test_resume import FAST

PERIODIC = ["checkpoint.every_n_steps=10", "checkpoint.every_minutes=0", "checkpoint.keep_last=5"]


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _last_row_step(run_dir: Path) -> int:
    try:
        steps = _train_steps(_rows(run_dir))
    except (FileNotFoundError, ValueError, KeyError):
        return -1
    return steps[-1] if steps else -1


def _train_steps(rows: list[dict]) -> list[int]:
    return [int(r["step"]) for r in rows if r.get("train/loss")]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    from tests.systems.cli import cli_env

    cmd = [*distill3d_command(), *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition, timeout: float = 300.0, poll: float = 0.02) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(poll)


def test_sigkill_loses_at_most_one_interval_and_resumes_exactly(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*FAST, *PERIODIC, "trainer.max_steps=60", "trainer.log_every_n_steps=1"]
    assert run_cli([*args, f"run_dir={straight}"], cwd=tmp_path).returncode == 0
    proc = _start([*args, f"run_dir={killed}"], tmp_path)
    try:
        # Killed between two checkpoints, after rows past the first one reached the metrics file.
        _wait_for(lambda: _last_row_step(killed) >= 22 or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    lost_at = _ckpt(killed / "ckpts" / "last.ckpt")["global_step"]
    assert lost_at in (20, 30, 40, 50), lost_at
    # The periodic checkpoint holds exactly the uninterrupted run's state at that step.
    kept = _ckpt(straight / "ckpts" / f"step-{lost_at:06d}.ckpt")["state_dict"]
    for key, value in _ckpt(killed / "ckpts" / "last.ckpt")["state_dict"].items():
        assert torch.equal(value, kept[key]), key
    before = _train_steps(_rows(killed))

    result = run_cli([f"resume={killed}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _ckpt(straight / "ckpts" / "last.ckpt"), _ckpt(killed / "ckpts" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 60
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"{key} differs after resume"
    # The metrics history: every row before the checkpoint kept, each step once, then the resumed rows.
    after = _train_steps(_rows(killed))
    assert [s for s in before if s < lost_at] == [s for s in after if s < lost_at] and before
    assert sorted(after) == after and len(set(after)) == len(after) and after[-1] >= 55
    assert after == _train_steps(_rows(straight))
    assert sorted(p.name for p in (killed / "ckpts").glob("step-*.ckpt"))[-1] == "step-000050.ckpt"


def test_resume_appends_to_the_metrics_history(tmp_path):
    run_dir = tmp_path / "run"
    common = [*FAST, "trainer.log_every_n_steps=2"]
    assert run_cli([*common, "trainer.max_steps=10", f"run_dir={run_dir}"], cwd=tmp_path).returncode == 0
    first = _rows(run_dir)
    assert _train_steps(first)
    result = run_cli([f"resume={run_dir}", "trainer.max_steps=20"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(run_dir)
    assert rows[: len(first)] == first, "resume changed the earlier rows"
    assert max(_train_steps(rows)) > max(_train_steps(first))


def test_run_dir_of_a_finished_run_is_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    args = [*FAST, "trainer.max_steps=2", "trainer.val_check_interval=1", f"run_dir={run_dir}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not empty (status: completed)" in lines[0] and "resume=" in lines[0], lines
    assert before == {p: p.stat().st_mtime_ns for p in before}, "the refused run touched the old one"
    assert list((run_dir / "save").glob("*.png"))
    # overwrite=true replaces it: the old run's files (here its validation grids) are gone.
    replaced = [*FAST, "trainer.max_steps=2", f"run_dir={run_dir}", "overwrite=true"]
    assert run_cli(replaced, cwd=tmp_path).returncode == 0
    assert not (run_dir / "save").exists() or not list((run_dir / "save").glob("*.png"))
    assert summary(run_dir)["status"] == "completed"


def test_second_writer_is_refused_and_sigterm_in_the_turntable_is_recorded(tmp_path):
    run_dir = tmp_path / "run"
    # A long turntable (600 views) after 2 steps: time to start a second writer, then to signal the turntable.
    args = [
        *FAST,
        "trainer.max_steps=2",
        "data.n_test_views=600",
        "data.eval_height=64",
        f"run_dir={run_dir}",
    ]
    proc = _start(args, tmp_path)
    try:
        _wait_for(lambda: (run_dir / "config.yaml").exists() or proc.poll() is not None, poll=0.1)
        second = run_cli(args, cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        line = second.stderr.strip().splitlines()
        assert (
            len(line) == 1 and "in use by another distill3d process" in line[0] and str(proc.pid) in line[0]
        )
        _wait_for(lambda: "stages" in _summary_or_empty(run_dir) or proc.poll() is not None, poll=0.1)
        time.sleep(1.0)  # inside the turntable
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["stopped"]["phase"] == "turntable", s
    assert not (run_dir / "video" / "test.mp4").exists() and "Traceback" not in err
    assert f"distill3d resume={run_dir}" in out


def _summary_or_empty(run_dir: Path) -> dict:
    try:
        return summary(run_dir)
    except (FileNotFoundError, ValueError):
        return {}


def test_new_run_directories_are_unique_within_a_second(tmp_path):
    from systems.app.claim import claim_new

    claimed = [claim_new(str(tmp_path), "demo", "a_snowman") for _ in range(3)]
    paths = [p for p, _ in claimed]
    assert len(set(paths)) == 3 and all(p.is_dir() for p in paths)
    for _, lock in claimed:
        lock.release()


def test_a_sweep_runs_every_job_and_names_the_failed_one(tmp_path):
    exploding = "tests.fixtures.failing_guidance.ExplodingSDS"
    args = [
        "-m",
        *FAST,
        "trainer.max_steps=3",
        f"system.guidance._target_={exploding},distill.guidance.sds.SDSGuidance",
        f"output_root={tmp_path / 'outputs'}",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "1 of 2 sweep jobs failed" in last and "job 0" in last and "exploded at step 1" in last, last
    summaries = [summary(p.parent) for p in (tmp_path / "outputs").rglob("summary.json")]
    by_status = {s["status"]: s for s in summaries}
    assert sorted(by_status) == ["completed", "failed"], summaries
    assert "exploded at step 1" in by_status["failed"]["error"]
    assert by_status["failed"]["stopped"]["phase"] == "train" and by_status["completed"]["steps"] == 3


def test_mixed_precision_trains_on_the_cpu(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [*FAST, "trainer.max_steps=20", "trainer.precision=16-mixed", f"run_dir={run_dir}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = _ckpt(run_dir / "ckpts" / "last.ckpt")
    assert state["global_step"] == 20 and summary(run_dir)["skipped_steps"] == 0
    assert all(v.dtype == torch.float32 for v in state["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_corrupt_checkpoint_is_one_line_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli([*FAST, "trainer.max_steps=2", f"run_dir={run_dir}"], cwd=tmp_path).returncode == 0
    ckpt = run_dir / "ckpts" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated, as by a full disk
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    for args in ([f"resume={run_dir}", "trainer.max_steps=4"], ["mode=export", f"resume={run_dir}"]):
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is unreadable (truncated or corrupt" in lines[0], lines
    assert before == {p: p.read_bytes() for p in before}
    assert {p for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == set(before)


def test_an_unquoted_prompt_with_a_quote_or_accent_just_works(tmp_path):
    run_dir = tmp_path / "run"
    prompt = "a snowman's café"  # what the shell passes for prompt="a snowman's café"
    args = [*FAST, "trainer.max_steps=1", "scene=snowman", f"prompt={prompt}", f"run_dir={run_dir}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["prompt"] == prompt


def test_a_run_lock_has_one_holder_and_dies_with_it(tmp_path):
    import os

    import pytest

    from systems.app.claim import RunDirectoryBusy, RunLock

    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()  # released: the next writer gets it
