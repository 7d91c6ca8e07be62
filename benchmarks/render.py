"""Volume-renderer throughput: rays/s for forward and forward+backward, printed as one table from one run.

Rows: resolution (64², 128²) × hash grid eager/compiled × empty-space skipping off/on, on a NeRF whose
occupancy grid was fitted to a built-in scene's silhouette (so skipping has real empty space to skip).
Run: `python benchmarks/render.py [--device cuda] [--repeats 2]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from geometry.cameras import make_cameras
from geometry.fields.backgrounds import SolidBackground
from geometry.fields.hash_grid import HashGridConfig
from geometry.fields.materials import NoMaterial
from geometry.nerf.field import ImplicitVolume, NeRFConfig
from geometry.nerf.renderer import VolumeRenderer, VolumeRendererConfig


def build(compile_grid: bool, prune: bool, device: str) -> VolumeRenderer:
    torch.manual_seed(0)
    # The CPU recipe of configs/experiment/demo.yaml: 5 levels, all dense (R = 16..81), so the torch twin samples
    # them with grid_sample; the compiled variant keeps the generic gather path.
    grid = HashGridConfig(
        n_levels=5, log2_hashmap_size=20, base_resolution=16, per_level_scale=1.5, compile=compile_grid
    )
    # the Magic3D blob (radius 0.5) gives the field a compact object inside mostly empty space
    nerf = ImplicitVolume(NeRFConfig(hash_grid=grid, normal_type="none", density_bias="blob_magic3d"))
    cfg = VolumeRendererConfig(
        num_samples_per_ray=48, grid_prune=prune, occupancy_threshold=0.1, return_normal=False
    )
    renderer = VolumeRenderer(cfg, nerf, NoMaterial(), SolidBackground()).to(device)
    if prune:
        if device == "cuda":
            renderer.train()
            for step in range(cfg.occupancy_warmup_steps + 1):
                renderer.update_occupancy(step)
        else:
            renderer.refresh_occupancy()
    return renderer


def rays_per_second(renderer: VolumeRenderer, res: int, backward: bool, repeats: int, device: str) -> float:
    cams = make_cameras([20.0], [30.0], [2.2], 45.0, res, device=device)
    renderer.train(backward)

    def once() -> None:
        with torch.set_grad_enabled(backward):
            out = renderer(cams)
            if backward:
                out.rgb.sum().backward()

    once()  # warm-up (and torch.compile)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * res * res / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{'res':>5} {'hash grid':>9} {'skipping':>8} {'fwd rays/s':>11} {'fwd+bwd rays/s':>15} {'samples/ray':>11}"
    )
    for res in args.resolutions:
        for compile_grid in (False, True):
            for prune in (False, True):
                r = build(compile_grid, prune, args.device)
                fwd = rays_per_second(r, res, False, args.repeats, args.device)
                bwd = rays_per_second(r, res, True, args.repeats, args.device)
                with torch.no_grad():
                    n = r.eval()(make_cameras([20.0], [30.0], [2.2], 45.0, res, device=args.device))
                spr = n.extras["num_samples"].item() / res**2
                mode = "compiled" if compile_grid else "eager"
                print(
                    f"{res:>5} {mode:>9} {str(prune):>8} {fwd:>11.0f} {bwd:>15.0f} {spr:>11.1f}", flush=True
                )


if __name__ == "__main__":
    main()
