"""Export benchmark: a ~100k-face extraction decimated to 50k faces with a 1024² texture (target ≤ 60 s on a
2-core CPU). Prints the seconds of each stage. Field: the analytic snowman's SDF pre-sampled on a 128³ grid
(outside the timing) and read back trilinearly, so field queries cost about what a hash grid costs, then
turned into a steep density; albedo is the exact scene colour.

Usage: python benchmarks/export.py [--resolution 160] [--target-faces 50000] [--texture-size 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from geometry.analytic import builtin_scene
from geometry.mesh.export import ExportConfig, export_geometry
from geometry.mesh.extract import sample_grid
from geometry.mesh.surface import density_to_mesh


class SnowmanField:
    radius = 1.0

    def __init__(self) -> None:
        self.scene = builtin_scene("a snowman")
        self.sdf_grid = sample_grid(self.scene.sdf, self.radius, 128)[None, None]  # (1, 1, X, Y, Z)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        coords = (points / self.radius).flip(-1).reshape(1, 1, 1, -1, 3)  # grid_sample wants (z, y, x)
        sdf = F.grid_sample(self.sdf_grid, coords, align_corners=True, padding_mode="border").reshape(-1)
        return 100.0 * torch.sigmoid(-sdf / 0.01)[:, None]

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.scene.albedo(points)

    def to_mesh(self, cfg: ExportConfig, views=None):
        return density_to_mesh(self, cfg)

    def surface_colors(self, cfg: ExportConfig, views=None):
        return lambda points, normals: self.albedo(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=240)
    parser.add_argument("--target-faces", type=int, default=50_000)
    parser.add_argument("--texture-size", type=int, default=1024)
    args = parser.parse_args()
    cfg = ExportConfig(
        formats=["glb", "obj"],
        resolution=args.resolution,
        target_faces=args.target_faces,
        texture_size=args.texture_size,
    )
    field = SnowmanField()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = export_geometry(field, cfg, Path(out))
        sizes = {k: Path(p).stat().st_size / 1e6 for k, p in result.files.items()}
    total = time.perf_counter() - start
    print(f"extracted faces: {result.info['extracted_faces']}  (target after decimation: {cfg.target_faces})")
    for stage, seconds in result.timings.items():
        print(f"{stage:>14s}: {seconds:7.2f} s")
    print(f"{'total':>14s}: {total:7.2f} s   (target ≤ 60 s on 2 CPU cores)")
    print("file sizes (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
