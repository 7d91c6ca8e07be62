"""Progress callbacks: one bar on a terminal that knows the step count, plain periodic lines in a log."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


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


class PlainProgress(pl.Callback):
    """Progress for logs (stdout not a terminal): one plain line every `every_steps` steps or `every_seconds`
    seconds, whichever comes first — step, losses, speed, ETA — and no cursor codes or redraws."""

    def __init__(self, every_steps: int = 100, every_seconds: float = 30.0) -> None:
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self._start = self._last = 0.0
        self._start_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total, now = trainer.global_step, trainer.max_steps, time.perf_counter()
        if step < total and step % self.every_steps and now - self._last < self.every_seconds:
            return
        self._last = now
        rate = (step - self._start_step) / max(now - self._start, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("nan")
        metrics = trainer.callback_metrics
        shown = " ".join(f"{k.split('/')[-1]} {float(v):.4g}" for k, v in metrics.items() if k in _SHOWN)
        print(f"train step {step}/{total} {shown} {rate:.2f} it/s ETA {_clock(eta)}", flush=True)


_SHOWN = ("train/loss", "train/grad_norm")


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
