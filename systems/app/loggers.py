"""Experiment loggers: CSV (default), TensorBoard, wandb (offline when no server is reachable)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

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


def build_logger(cfg: LoggerConfig, run_dir: Path, version: str = ""):
    """The configured logger writing under run_dir (version: a sub-folder, e.g. one per stage)."""
    if cfg.type == "none":
        return False
    if cfg.type == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version=version)
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
