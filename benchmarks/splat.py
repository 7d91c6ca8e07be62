"""Forward + backward steps per second of the Gaussian splatting renderer (torch twin on CPU, gsplat on CUDA).

    python benchmarks/splat.py [--gaussians 10000] [--size 64] [--steps 20] [--threads 0]

Scene: the demo's initialization (Gaussians uniform in a ball of radius 0.6, 3-nearest-neighbour scales),
one camera at distance 2.4, fovy 45°. Prints steps/s and the number of (pixel, Gaussian) pairs per render.
"""

from __future__ import annotations

import argparse
import time

import torch

from geometry.cameras import make_cameras
from geometry.gaussians.model import GaussianConfig, GaussianModel
from geometry.gaussians.renderer import SplatRenderer, SplatRendererConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=10000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    g = GaussianModel(GaussianConfig(num_points=args.gaussians, init_radius=0.6, init_opacity=0.5)).to(
        args.device
    )
    renderer = SplatRenderer(SplatRendererConfig(), g).train()
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 3):
        azim = torch.rand(1, generator=gen) * 360 - 180
        cams = make_cameras(torch.tensor([15.0]), azim, 2.4, 45.0, args.size).to(args.device)
        start = time.perf_counter()
        out = renderer(cams)
        (out.rgb.square().mean() + out.opacity.mean()).backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 3:  # warm-up excluded
            times.append(time.perf_counter() - start)
        g.zero_grad()
    t = sorted(times)[len(times) // 2]
    pairs = int(out.extras["num_pairs"]) if "num_pairs" in out.extras else "n/a"
    print(
        f"splat {args.device} threads={torch.get_num_threads()} {args.gaussians} Gaussians {args.size}²:"
        f" {1 / t:.2f} forward+backward steps/s (median {t * 1000:.0f} ms), pairs/render: {pairs}"
    )


if __name__ == "__main__":
    main()
