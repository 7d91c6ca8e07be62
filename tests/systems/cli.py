"""Running the real `distill3d` entry point in a subprocess, with tiny settings for tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def distill3d_command() -> list[str]:
    """The installed console script (the real entry point); `python -m systems.app.launch` if it is not on PATH."""
    script = Path(sys.executable).with_name("distill3d")
    if script.exists():
        return [str(script)]
    found = shutil.which("distill3d")
    return [found] if found else [sys.executable, "-m", "systems.app.launch"]


# Small enough that a run takes seconds on a 2-core CPU; every experiment accepts these keys.
TINY_RUN = [
    "trainer.enable_progress_bar=false",
    "data.height=[32]",
    "data.eval_height=32",
    "data.n_val_views=1",
    "data.n_test_views=2",
    "eval.n_views=2",
    "eval.height=32",
    "export.resolution=32",
    "export.texture_size=64",
    "export.target_faces=0",
]

# TINY_RUN for the NeRF experiments: 2 steps, a small hash grid, few samples per ray.
TINY = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    *TINY_RUN,
    "system.geometry.hash_grid.n_levels=4",
    "system.geometry.hash_grid.log2_hashmap_size=12",
    "system.renderer.num_samples_per_ray=16",
]


REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """Offline, quiet, and with the repository on PYTHONPATH so `_target_`s may name test fixtures."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": path,
    }


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    env = cli_env()
    return subprocess.run(
        [*distill3d_command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
