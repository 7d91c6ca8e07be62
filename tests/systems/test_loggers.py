"""Loggers: wandb falls back to offline without a reachable server; grids and the turntable reach it."""

from __future__ import annotations

from systems.app import loggers
from systems.app.config import LoggerConfig
from tests.systems.cli import TINY, run_cli


def test_wandb_goes_offline_when_no_server_is_reachable(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(loggers, "wandb_server_reachable", lambda timeout=2.0: False)
    cfg = LoggerConfig(type="wandb", project="p", tags=["a", "b"], group="g")
    logger = loggers.build_logger(cfg, tmp_path)
    assert logger._offline is True
    assert logger._wandb_init["project"] == "p" and logger._wandb_init["group"] == "g"
    assert list(logger._wandb_init["tags"]) == ["a", "b"] and logger._wandb_init["name"] == tmp_path.name


def test_csv_and_tensorboard_write_under_the_run_directory(tmp_path):
    csv = loggers.build_logger(LoggerConfig(type="csv"), tmp_path)
    tb = loggers.build_logger(LoggerConfig(type="tensorboard"), tmp_path)
    assert csv.log_dir.startswith(str(tmp_path)) and tb.log_dir.startswith(str(tmp_path))
    assert loggers.build_logger(LoggerConfig(type="none"), tmp_path) is False


def test_wandb_run_gets_validation_grids_and_turntable(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "logger.type=wandb", "export.enabled=false", f"run_dir={run_dir}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    media = list((run_dir / "wandb").glob("offline-run-*/files/media"))
    assert media, "no offline wandb run with media"
    assert list(media[0].rglob("validation*.png")) and list(media[0].rglob("*.mp4"))
