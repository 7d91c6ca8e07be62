"""How much memory a grid extraction needs, checked before a run starts instead of discovered by the OOM killer.

Extraction holds the resolution³ grid of field values (float32) and the passes over it (the silhouette
threshold, the visibility and cavity fills: boolean and index grids, a distance transform); marching cubes reads
the float32 grid in place. The peak grows as resolution³ plus a fixed overhead (the model, the libraries); the
per-voxel cost below was measured with benchmarks/export_memory.py (peak RSS of `distill3d mode=export` at
several resolutions), rounded up.
"""

from __future__ import annotations

import os

# Peak bytes per grid voxel of the extraction, measured (benchmarks/export_memory.py), rounded up.
# Measured on the 2-core CI machine (demo NeRF, 300 steps): with fill_cavities 0.98 / 1.16 / 1.53 / 2.48 GB at
# 128 / 192 / 256 / 320 (fit 0.81 GB + 49 B/voxel, the last step 58 B/voxel); without it 0.95 / 2.51 GB at 192 /
# 320 (61 B/voxel): the fills are not what dominates, so one figure serves both.
BYTES_PER_VOXEL = 60.0
BASE_BYTES = 1.0e9  # the process before extraction: torch, the model, the renders of the probes
GB = 1e9


def extraction_bytes(resolution: int) -> float:
    """Estimated peak resident memory (bytes) of a `distill3d mode=export` at this grid resolution."""
    return BASE_BYTES + BYTES_PER_VOXEL * float(resolution) ** 3


def available_bytes() -> float:
    """Memory the OS can give this process now (MemAvailable on Linux; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def largest_resolution(budget: float) -> int:
    """The largest multiple of 16 whose estimated extraction fits in `budget` bytes (at least 16)."""
    side = max(budget - BASE_BYTES, 0.0) / BYTES_PER_VOXEL
    return max(16, int(side ** (1.0 / 3.0)) // 16 * 16)


def memory_problem(resolution: int, max_memory_gb: float | None) -> str | None:
    """None if the extraction fits; else the one-line reason with the estimate and the largest fitting size.

    max_memory_gb: the budget (None = what the OS has available now)."""
    budget = available_bytes() if max_memory_gb is None else max_memory_gb * GB
    need = extraction_bytes(resolution)
    if need <= budget:
        return None
    where = "available on this machine" if max_memory_gb is None else "allowed by export.max_memory_gb"
    return (
        f"export.resolution={resolution} needs about {need / GB:.0f} GB to extract, more than the"
        f" {budget / GB:.1f} GB {where}: use export.resolution={largest_resolution(budget)} or less"
    )
