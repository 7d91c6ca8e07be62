"""Forward + backward time of the mesh rasterizer: the torch twin on --device, and nvdiffrast beside it on CUDA.

    python benchmarks/raster.py [--device cpu|cuda] [--size 128] [--subdivisions 6] [--steps 10] [--threads 0]

Mesh: trimesh icosphere of radius 0.6 (subdivisions 6 = 81,920 faces, 5 = 20,480) seen from distance 2,
fovy 45°, a random azimuth per step. One step: clip_space → rasterize → interpolate vertex colours →
antialias → backward to vertex positions and colours. Prints the median milliseconds per step of each backend
and, on CUDA, the twin / nvdiffrast ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import trimesh

from geometry.backend import importable
from geometry.cameras import make_cameras
from geometry.mesh.raster import MeshRasterizer, clip_space


def time_backend(backend: str, args: argparse.Namespace, verts: torch.Tensor, faces: torch.Tensor) -> float:
    rasterizer = MeshRasterizer(backend)
    colors = (verts * 0.5 + 0.5).clone().requires_grad_()
    verts = verts.clone().requires_grad_()
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 2):
        azim = torch.rand(1, generator=gen) * 360 - 180
        cams = make_cameras(torch.tensor([15.0]), azim, 2.0, 45.0, args.size).to(args.device)
        start = time.perf_counter()
        pos = clip_space(verts, cams)
        rast = rasterizer.rasterize(pos, faces, args.size, args.size)
        image = rasterizer.antialias(rasterizer.interpolate(colors, rast, faces), rast, pos, faces)
        image.square().mean().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:  # warm-up excluded
            times.append(time.perf_counter() - start)
        verts.grad = colors.grad = None
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--subdivisions", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sphere = trimesh.creation.icosphere(subdivisions=args.subdivisions, radius=0.6)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32, device=args.device)
    faces = torch.tensor(sphere.faces, dtype=torch.int32, device=args.device)
    head = f"raster {args.device} threads={torch.get_num_threads()} {len(faces)} faces {args.size}²:"
    twin = time_backend("torch", args, verts, faces)
    line = f"{head} torch twin {twin * 1000:.1f} ms/step (forward+backward, median)"
    if args.device.startswith("cuda"):
        if importable("nvdiffrast"):
            cuda = time_backend("cuda", args, verts, faces)
            line += f" | nvdiffrast {cuda * 1000:.2f} ms/step | twin / nvdiffrast = {twin / cuda:.1f}×"
        else:
            line += " | nvdiffrast not importable: pip install diffrp-nvdiffrast"
    print(line)


if __name__ == "__main__":
    main()
