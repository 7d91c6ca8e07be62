"""The Janus benchmark (issue 13): score distillation from a view-unaware 2D prior vs multi-view guidance from a
multi-view prior, on asymmetric scenes whose front differs from their back, all measured against ground truth.

Four runs per scene, through the real `distill3d` command, in this one invocation:
- sds:       experiment=demo-janus (view-unaware 2D oracle: knows a view's elevation, not which side it sees)
- sds-vd:    the same with view-dependent prompts ("front/side/back view" restrict the side seen)
- perp-neg:  the same with Perp-Neg (negatives: the other sides' prompts)
- multiview: experiment=demo-mvdream (multi-view oracle: the 4 views denoised jointly, global azimuth shared)
Each row: psnr (as is), psnr_aligned and the aligned azimuth (after the best turn about the up axis: the
multi-view oracle may settle on any global azimuth), and the exported mesh's accuracy / completeness after the
same turn (mean distance to / from the true surface, world units). Target: multiview ≥ 26 dB aligned.
Default scenes are the held-out ones in benchmarks/scenes/janus/ (never tuned on; the recipes were tuned on
benchmarks/scenes/tuning/duck.yaml).

    python benchmarks/janus.py                                   # both held-out scenes, 8 runs (~50 min, 2 cores)
    python benchmarks/janus.py --scenes benchmarks/scenes/janus/mug.yaml   # one scene (~25 min; Perp-Neg is the slow one)
    python benchmarks/janus.py --scenes benchmarks/scenes/tuning/duck.yaml --methods sds multiview
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from cli_runs import REPO, run_distill3d  # benchmarks/, beside this script

from geometry.analytic.scene_io import load_scene
from geometry.mesh.io import read_glb
from geometry.mesh.metrics import surface_distances

METHODS = {
    "sds": ["experiment=demo-janus"],
    "sds-vd": ["experiment=demo-janus", "system.prompt_processor.view_dependent_prompting=true"],
    "perp-neg": ["experiment=demo-janus", "system.prompt_processor.use_perp_neg=true"],
    "multiview": ["experiment=demo-mvdream"],
}


def run(method: str, scene: Path, run_dir: Path, extra: list[str]) -> float:
    args = [*METHODS[method], f"scene={scene.resolve()}", f"run_dir={run_dir}", *extra]
    return run_distill3d(args, f"{method} on {scene.name}")


def turned_mesh(mesh, degrees: float):
    """The mesh turned by `degrees` about the up axis (z): a model facing azimuth phi, turned by −phi, faces 0."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)
    return replace(mesh, vertices=(mesh.vertices.astype(np.float64) @ rot.T).astype(np.float32))


def measure(run_dir: Path, scene_path: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "summary.json").read_text()).get("metrics", {})
    phi = metrics.get("aligned_azimuth_deg", 0.0)
    row = {
        "psnr": metrics.get("psnr", float("nan")),
        "psnr_aligned": metrics.get("psnr_aligned", float("nan")),
        "azimuth": phi,
        "accuracy": float("nan"),
        "completeness": float("nan"),
    }
    glb = run_dir / "export" / "model.glb"
    if glb.exists():
        mesh, _ = read_glb(glb)
        dist = surface_distances(turned_mesh(mesh, -phi), load_scene(scene_path).sdf, n_samples=20_000)
        row.update(accuracy=dist.accuracy, completeness=dist.completeness)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenes", nargs="+", type=Path, default=sorted((REPO / "benchmarks/scenes/janus").glob("*.yaml"))
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes:
            for method in args.methods:
                run_dir = Path(tmp) / f"{scene.stem}-{method}"
                seconds = run(method, scene, run_dir, args.overrides)
                rows.append(
                    {"scene": scene.stem, "method": method, "wall_s": seconds, **measure(run_dir, scene)}
                )
                print(json.dumps(rows[-1]), flush=True)
    header = f"{'scene':<10}{'method':<11}{'psnr':>7}{'aligned':>9}{'azimuth':>9}{'accuracy':>10}{'complete':>10}{'wall s':>8}"
    print("\n" + header)
    for r in rows:
        print(
            f"{r['scene']:<10}{r['method']:<11}{r['psnr']:>7.2f}{r['psnr_aligned']:>9.2f}{r['azimuth']:>9.0f}"
            f"{r['accuracy']:>10.4f}{r['completeness']:>10.4f}{r['wall_s']:>8.0f}"
        )


if __name__ == "__main__":
    main()
