"""NeRF export vs DMTet export of the same scene, side by side: geometry accuracy / completeness, colour error,
triangles and wall time, each measured on the exported GLB against the analytic scene.

Both runs go through the real `distill3d` command in this one invocation: `experiment=demo` (the oracle NeRF,
marching cubes at export) and `experiment=demo-dmtet` (the same NeRF, then DMTet refine; the export is the DMTet
mesh itself). Default scenes are the held-out ones in benchmarks/scenes/ (thin parts; never tuned on); the
recipe was tuned on the built-in table and lollipop and on benchmarks/scenes/tuning/ (pass them with --scenes).

- accuracy: mean distance from the exported surface to the true one (|sdf| at 20k area-uniform mesh samples)
- completeness: mean distance from 20k area-uniform samples of the true surface to the exported mesh (exact)
- colour: mean over mesh samples of the largest per-channel |texture − true albedo| (≥ the plain colour MAE)
Targets (issue 12, DMTet): accuracy ≤ 0.005, completeness ≤ 0.006, colour ≤ 0.04, ≤ 6 minutes on 2 cores.
A last row per scene re-exports the DMTet run with --fraction (¼) of the NeRF export's triangles.

    python benchmarks/dmtet_vs_nerf.py                                  # both held-out scenes (~9 min, 2 cores)
    python benchmarks/dmtet_vs_nerf.py --scenes benchmarks/scenes/lamp.yaml --methods dmtet
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from cli_runs import REPO, run_distill3d  # benchmarks/, beside this script

from geometry.analytic.scene_io import load_scene
from geometry.mesh.io import read_glb
from geometry.mesh.metrics import surface_accuracy, surface_distances

METHODS = {"nerf": "demo", "dmtet": "demo-dmtet"}


def run(experiment: str, scene: Path, run_dir: Path, extra: list[str]) -> float:
    args = [f"experiment={experiment}", f"scene={scene.resolve()}", f"run_dir={run_dir}", *extra]
    return run_distill3d(args, f"{experiment} on {scene.name}")


def reexport(run_dir: Path, faces: int) -> None:
    """Export a finished run again, decimated to `faces` triangles (mode=export, no training)."""
    run_distill3d(
        ["mode=export", f"resume={run_dir}", f"export.target_faces={faces}"], f"re-export of {run_dir.name}"
    )


def measure(run_dir: Path, scene_path: Path) -> dict[str, float]:
    scene = load_scene(scene_path)
    mesh, image = read_glb(run_dir / "export" / "model.glb")
    dist = surface_distances(mesh, scene.sdf, n_samples=20_000)
    colour = surface_accuracy(mesh, torch.from_numpy(image), scene.sdf, scene.albedo, n_samples=20_000)
    psnr = json.loads((run_dir / "summary.json").read_text()).get("metrics", {}).get("psnr", float("nan"))
    return {
        "accuracy": dist.accuracy,
        "completeness": dist.completeness,
        "colour": colour.color_error,
        "triangles": mesh.num_faces,
        "psnr": psnr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenes", nargs="+", type=Path, default=sorted((REPO / "benchmarks/scenes").glob("*.yaml"))
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.25,
        help="re-export the DMTet at this fraction of the NeRF's faces (0: no)",
    )
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes:
            for method in args.methods:
                run_dir = Path(tmp) / f"{scene.stem}-{method}"
                seconds = run(METHODS[method], scene, run_dir, args.overrides)
                rows.append(
                    {"scene": scene.stem, "method": method, "wall_s": seconds, **measure(run_dir, scene)}
                )
                print(json.dumps(rows[-1]), flush=True)
            if set(args.methods) == set(METHODS) and args.fraction > 0:
                # The DMTet mesh again with a fraction of the NeRF export's triangles: the same error?
                nerf_faces = next(
                    r["triangles"] for r in rows if r["scene"] == scene.stem and r["method"] == "nerf"
                )
                run_dir = Path(tmp) / f"{scene.stem}-dmtet"
                reexport(run_dir, max(100, int(nerf_faces * args.fraction)))
                label = f"dmtet×{args.fraction:g}"
                rows.append({"scene": scene.stem, "method": label, "wall_s": 0.0, **measure(run_dir, scene)})
                print(json.dumps(rows[-1]), flush=True)
    header = f"{'scene':<10}{'method':<12}{'accuracy':>10}{'complete':>10}{'colour':>8}{'faces':>8}{'psnr':>7}{'wall s':>8}"
    print("\n" + header)
    for r in rows:
        print(
            f"{r['scene']:<10}{r['method']:<12}{r['accuracy']:>10.4f}{r['completeness']:>10.4f}{r['colour']:>8.3f}"
            f"{r['triangles']:>8d}{r['psnr']:>7.2f}{r['wall_s']:>8.0f}"
        )


if __name__ == "__main__":
    main()
