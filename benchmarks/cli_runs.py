"""Running the real `distill3d` command from a benchmark script (the benchmarks that compare whole runs)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command() -> list[str]:
    """The installed console script beside this Python, else `python -m systems.app.launch`."""
    script = Path(sys.executable).with_name("distill3d")
    return [str(script)] if script.exists() else [sys.executable, "-m", "systems.app.launch"]


def run_distill3d(args: list[str], label: str) -> float:
    """Run distill3d with `args` (progress bar off) in the repository; wall seconds, or exit naming `label`."""
    start = time.perf_counter()
    result = subprocess.run(
        [*command(), *args, "trainer.enable_progress_bar=false"], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start
