"""Lightning callbacks: graceful SIGINT/SIGTERM handling and a progress bar that knows the step count."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


def save_checkpoint_atomically(trainer: pl.Trainer, path: Path) -> Path:
    """Write to a temporary file, then rename: a checkpoint is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    trainer.save_checkpoint(str(tmp))
    os.replace(tmp, path)
    return path


class GracefulInterrupt(pl.Callback):
    """On SIGINT/SIGTERM, finish the current step, write the checkpoint, and stop training cleanly.

    Our handlers replace Python's default (KeyboardInterrupt mid-step) and Lightning's SIGTERM handler
    (which raises at the next batch) only while training runs.
    """

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = checkpoint_path
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C means "now"
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None and not trainer.should_stop:
            save_checkpoint_atomically(trainer, self.checkpoint_path)
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


class StepProgressBar(TQDMProgressBar):
    """Training runs on an endless camera stream: show progress against trainer.max_steps."""

    @property
    def total_train_batches(self):
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
