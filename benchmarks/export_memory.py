"""Export memory: peak RSS of `distill3d mode=export` at several grid resolutions on a trained demo NeRF, the
least-squares bytes per voxel, next to geometry/mesh/memory.py's estimate; then `export.resolution=1024`, which
must be refused up front (in about a second, at a small RSS) or stay under 8 GB.

Usage: python benchmarks/export_memory.py [--run <demo run dir>] [--resolutions 128 192 256 320] [--steps 300]
       [--no-fill]
(without --run, a demo is trained first for --steps steps in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geometry.mesh.memory import BASE_BYTES, BYTES_PER_VOXEL, extraction_bytes

MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
    " print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, repr(r.stderr[-300:]))"
)


def distill3d(*args: str) -> list[str]:
    return [sys.executable, "-m", "systems.app.launch", *args]


def peak(cmd: list[str], cwd: Path) -> tuple[int, float, str, float]:
    """(exit code, peak RSS in bytes, stderr tail, seconds) of one command, in a fresh measuring process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, capture_output=True, text=True)
    code, rss_kb, err = out.stdout.strip().split(" ", 2)
    return int(code), float(rss_kb) * 1024.0, eval(err), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 192, 256, 320])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-fill", action="store_true", help="export.fill_cavities=false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        run = args.run
        if run is None:
            run = cwd / "demo"
            subprocess.run(
                distill3d(f"run_dir={run}", f"trainer.max_steps={args.steps}", "export.enabled=false"),
                cwd=cwd,
                check=True,
                capture_output=True,
            )
        rows = []
        for res in args.resolutions:
            code, rss, err, seconds = peak(
                distill3d("mode=export", f"resume={run}", f"export.resolution={res}", "export.formats=[glb]"),
                cwd,
            )
            assert code == 0, err
            rows.append((res, rss, seconds))
            estimate = extraction_bytes(res)
            print(
                f"res {res:5d}: peak RSS {rss / 1e9:6.2f} GB  estimate {estimate / 1e9:6.2f} GB  ({seconds:.1f} s)"
            )
        voxels = np.array([r**3 for r, _, _ in rows], dtype=np.float64)
        slope, intercept = np.polyfit(voxels, np.array([p for _, p, _ in rows]), 1)
        print(
            f"fit: {intercept / 1e9:.2f} GB + {slope:.1f} B/voxel   (memory.py: {BASE_BYTES / 1e9:.2f} GB +"
            f" {BYTES_PER_VOXEL:.1f} B/voxel)"
        )
        code, rss, err, seconds = peak(
            distill3d("mode=export", f"resume={run}", "export.resolution=1024"), cwd
        )
        summary = json.loads((run / "summary.json").read_text())
        print(
            f"res  1024: exit {code}, peak RSS {rss / 1e9:.2f} GB, {seconds:.1f} s, export status"
            f" {summary.get('export', {}).get('status')}: {err.strip().splitlines()[-1] if err.strip() else ''}"
        )


if __name__ == "__main__":
    main()
