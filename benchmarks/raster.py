"""Forward + backward time of the mesh rasterizer: the torch twin on --device, and nvdiffrast beside it on CUDA.

    python benchmarks/raster.py [--device cpu|cuda] [--size 128] [--faces 50000] [--steps 10] [--threads 0]

Mesh: trimesh icosphere of radius 0.6 (81,920 faces) decimated to --faces (quadric collapse, fast-simplification)
seen from distance 2, fovy 45°, a random azimuth per step. One step: clip_space → rasterize → interpolate vertex
colours → antialias → backward to vertex positions and colours. Prints the median milliseconds per step of each
backend and, on CUDA, the twin / nvdiffrast ratio.

Then the whole DMTet step (--dmtet-resolution, default 128³ grid; 0 skips it): a DMTetGeometry (sphere of
radius 0.6) → marching tetrahedra → MeshRenderer at --size² (rasterize, albedo field at the covered pixels,
antialias) → backward into the SDF, the deformation and the texture field; steps/s per backend.
"""

from __future__ import annotations

import argparse
import time

import torch
import trimesh
from fast_simplification import simplify

from geometry.backend import importable
from geometry.cameras import make_cameras
from geometry.dmtet.geometry import DMTetConfig, DMTetGeometry
from geometry.mesh.raster import MeshRasterizer, clip_space
from geometry.mesh.renderer import MeshRenderer, MeshRendererConfig


def _cameras(gen: torch.Generator, size: int, device: str):
    azim = torch.rand(1, generator=gen) * 360 - 180
    return make_cameras(torch.tensor([15.0]), azim, 2.0, 45.0, size).to(device)


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def time_backend(backend: str, args: argparse.Namespace, verts: torch.Tensor, faces: torch.Tensor) -> float:
    rasterizer = MeshRasterizer(backend)
    colors = (verts * 0.5 + 0.5).clone().requires_grad_()
    verts = verts.clone().requires_grad_()
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 2):
        cams = _cameras(gen, args.size, args.device)
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
    return _median(times)


def time_dmtet(backend: str, args: argparse.Namespace) -> tuple[float, int]:
    """Median seconds of one DMTet step and the face count of its surface."""
    geometry = DMTetGeometry(DMTetConfig(grid_resolution=args.dmtet_resolution, init_radius=0.6)).to(
        args.device
    )
    renderer = MeshRenderer(MeshRendererConfig(backend=backend), geometry)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 2):
        cams = _cameras(gen, args.size, args.device)
        start = time.perf_counter()
        renderer(cams).rgb.square().mean().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
        geometry.zero_grad(set_to_none=True)
    return _median(times), int(geometry.isosurface()[1].shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--dmtet-resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sphere = trimesh.creation.icosphere(subdivisions=6, radius=0.6)
    v, f = simplify(sphere.vertices, sphere.faces, target_count=min(args.faces, len(sphere.faces)))
    verts = torch.tensor(v, dtype=torch.float32, device=args.device)
    faces = torch.tensor(f, dtype=torch.int32, device=args.device)
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
    if args.dmtet_resolution > 0:
        backends = ["torch"] + (
            ["cuda"] if args.device.startswith("cuda") and importable("nvdiffrast") else []
        )
        parts = []
        for backend in backends:
            seconds, n_faces = time_dmtet(backend, args)
            parts.append(f"{'torch twin' if backend == 'torch' else 'nvdiffrast'} {1 / seconds:.2f} steps/s")
        print(
            f"DMTet step {args.dmtet_resolution}³ grid ({n_faces} faces) {args.size}²: " + " | ".join(parts)
        )


if __name__ == "__main__":
    main()
