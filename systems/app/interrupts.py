"""SIGINT/SIGTERM for a whole run: training finishes its step, saves and stops; anywhere else (turntable,
metrics, export) the run stops at once. Either way the run ends with summary.json `status: interrupted`, where
it stopped, and exit code 128 + the signal number, so a scheduler never reads an interrupted run as a success.

Lightning installs its own SIGTERM handler inside every `fit`/`test`; the callback re-installs ours when a loop
starts (Lightning restores ours when it tears down).
"""

from __future__ import annotations

import signal

import pytorch_lightning as pl

from systems.app.checkpoints import save_checkpoint_atomically

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """Raised out of the turntable, the metrics or the export when a signal arrives there."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """The run's signal handlers. `deferred` (while training): remember the signal for the step's end."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            if sig not in self._previous:
                self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handler(self, signum, frame) -> None:
        again = self.received is not None
        self.received = signum
        if not self.deferred or (again and signum == signal.SIGINT):  # a second Ctrl+C means "now"
            raise RunInterrupted(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or 0)


class InterruptCallback(pl.Callback):
    """Training: on a signal, finish the step, write the stage checkpoint and stop. Testing: stop at once."""

    def __init__(self, interrupts: Interrupts, checkpoint_path=None) -> None:
        self.interrupts, self.checkpoint_path = interrupts, checkpoint_path
        self._saved = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.interrupts.install()
        self.interrupts.deferred = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.interrupts.received is not None and not trainer.should_stop:
            save_checkpoint_atomically(trainer, self.checkpoint_path)
            self._saved = True
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.interrupts.received is not None and not self._saved:  # a signal after the last step
            save_checkpoint_atomically(trainer, self.checkpoint_path)
            self._saved = True
        self.interrupts.deferred = False

    def on_test_start(self, trainer, pl_module) -> None:
        self.interrupts.install()
        if self.interrupts.received is not None:
            raise RunInterrupted(self.interrupts.received)
