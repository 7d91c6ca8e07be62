"""Experiment loggers: CSV (default), TensorBoard, wandb (offline when no server is reachable).

The CSV logger of a resumed run keeps the history: Lightning's writer deletes an existing metrics.csv when it
starts, so ours keeps every row logged before the step the run resumes from (rows after it were logged past the
checkpoint and are trained again) and appends the new ones.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from distill3d.files import atomic_target
from systems.app.config import LoggerConfig

log = logging.getLogger("distill3d")


def wandb_server_reachable(timeout: float = 2.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def build_logger(
    cfg: LoggerConfig, run_dir: Path, version: str = "", resume_step: int | None = None, flush_every: int = 10
):
    """The configured logger writing under run_dir (version: a sub-folder, e.g. one per stage); resume_step:
    the step a resumed run continues from (the CSV history before it is kept); flush_every: steps between CSV
    writes (every logged row reaches the disk at once, so a hard kill loses none of them)."""
    if cfg.type == "none":
        return False
    if cfg.type == "csv":
        return history_csv_logger(run_dir, version, resume_step, flush_every)
    if cfg.type == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=version)
    from pytorch_lightning.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE")
    offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_server_reachable())
    if offline and mode not in ("offline", "dryrun"):
        log.warning(
            "wandb: no server reachable, logging offline (sync later with `wandb sync %s/wandb`)", run_dir
        )
    return WandbLogger(
        project=cfg.project,
        name=cfg.name or run_dir.name,
        tags=list(cfg.tags),
        group=cfg.group,
        entity=cfg.entity,
        save_dir=str(run_dir),
        offline=offline,
    )


def history_csv_logger(run_dir: Path, version: str, resume_step: int | None, flush_every: int):
    """Lightning's CSVLogger whose metrics.csv keeps the rows before `resume_step` (all of it is new if None)."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class HistoryWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # Lightning's hook that deletes the old file
            path = Path(self.metrics_file_path)
            if not path.is_file() or resume_step is None:
                path.unlink(missing_ok=True)
                return
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                keys, rows = list(reader.fieldnames or []), list(reader)
            kept = [r for r in rows if r.get("step", "") == "" or int(float(r["step"])) < resume_step]
            with atomic_target(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)
            self.metrics_keys = sorted(keys)

    class HistoryCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = HistoryWriter(log_dir=self.log_dir)
            return self._experiment

    return HistoryCSVLogger(
        save_dir=str(run_dir), name="logs", version=version, flush_logs_every_n_steps=flush_every
    )
