"""Who may write a run directory: one process at a time, and never over a finished run by accident.

- A new run's directory is created with `mkdir` (not "exists_ok"), so two jobs started in the same second get
  two directories (`<tag>@<time>`, `<tag>@<time>-1`, ...), never one shared.
- Every process that writes a run directory holds an exclusive lock on `<run dir>/.lock` (fcntl.flock: the
  kernel releases it when the process dies, even by SIGKILL, so a killed run never needs a manual unlock).
  A second writer is refused in one line naming the holder's pid.
- `run_dir=` naming a directory that already holds a run is refused unless `overwrite=true` (which empties it
  first, so no validation image of the old run survives) — continuing a run is `resume=`.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from distill3d.errors import UserError

LOCK_NAME = ".lock"


class RunDirectoryBusy(UserError):
    """Another process owns the run directory, or it holds a run that may not be overwritten."""


class RunLock:
    """An exclusive, non-blocking lock on a run directory, held until `release()` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        path = self.run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirectoryBusy(
                f"run directory {self.run_dir} is in use by another distill3d process"
                f"{f' (pid {holder})' if holder else ''}: wait for it to finish, or choose another run_dir="
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks a byte range instead
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, AttributeError, UnicodeDecodeError):
        return ""


def run_contents(run_dir: Path) -> list[Path]:
    """What a run left in the directory (everything but the lock file)."""
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if p.name != LOCK_NAME]


def claim_new(output_root: str, experiment: str, tag: str) -> tuple[Path, RunLock]:
    """Create outputs/<experiment>/<tag>@<YYYYmmdd-HHMMSS>[-n]/ atomically and lock it."""
    base = Path(output_root) / experiment / f"{tag}@{datetime.now():%Y%m%d-%H%M%S}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path, RunLock(path).acquire()
    raise RunDirectoryBusy(f"could not create a new run directory beside {base}: 10000 names are taken")


def claim_explicit(run_dir: Path, overwrite: bool, status: str | None) -> RunLock:
    """Lock `run_dir=` (created if missing); refuse one that holds a run unless overwrite=true, which empties it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    contents = run_contents(run_dir)
    if contents and not overwrite:
        lock.release()
        state = f" (status: {status})" if status else ""
        raise RunDirectoryBusy(
            f"run_dir={run_dir} is not empty{state}: continue a run there with resume={run_dir}, replace it with"
            " overwrite=true, or choose another run_dir="
        )
    for path in contents:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return lock


def claim_existing(run_dir: Path) -> RunLock:
    """Lock a run being resumed, tested or exported."""
    return RunLock(run_dir).acquire()
