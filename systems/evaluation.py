"""Evaluation renders of any system: validation grids, the test turntable, PSNR against a known scene.

Used by BaseSystem's Lightning hooks; nothing here depends on the representation (only on its renderer's
RenderOutput), so every recipe gets the same evaluation.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.conditions.views import wrap_azimuth
from geometry.cameras import Cameras, rotate_about_up
from geometry.render_output import RenderOutput
from systems.metrics import psnr
from systems.visualize import save_image, save_video, to_uint8, turntable_frame, validation_row


def render_views(
    renderer: nn.Module, cameras: Cameras, device: torch.device, shading: str, chunk: int
) -> RenderOutput:
    """Deterministic renders of many views, a few at a time, in eval mode; the training RNG stream is not
    touched (fork_rng) and no autograd graph is kept beyond what analytic normals need."""
    chunks = []
    was_training = renderer.training
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        renderer.eval()
        for i in range(0, len(cameras), chunk):
            chunks.append(renderer(cameras[i : i + chunk].to(device), shading=shading).detach())
        renderer.train(was_training)
    cat = lambda name: torch.cat([getattr(c, name) for c in chunks])  # noqa: E731
    normal = None if chunks[0].normal is None else cat("normal")
    return RenderOutput(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"), normal=normal)


def validation_grid(render: RenderOutput) -> np.ndarray:
    """rgb | normal | opacity | depth per view, views stacked vertically, uint8."""
    rows = [validation_row(render, i) for i in range(render.batch_size)]
    return to_uint8(torch.cat(rows, dim=0))


def turntable_frames(render: RenderOutput) -> list[np.ndarray]:
    return [to_uint8(turntable_frame(render, i)) for i in range(render.batch_size)]


def scene_metrics(render: RenderOutput, truth: RenderOutput, seconds: float) -> dict[str, float]:
    """PSNR of unlit renders vs the ground truth's analytic renders (both over white)."""
    values = psnr(render.rgb.cpu(), truth.rgb.cpu())
    return {
        "psnr": float(values.mean()),
        "psnr_min": float(values.min()),
        "psnr_views": len(values),
        "eval_seconds": seconds,
    }


def evaluate_against_scene(
    renderer: nn.Module, scene: Any, cameras: Cameras, device: torch.device, chunk: int
) -> dict[str, float]:
    """PSNR of the renderer's unlit views over white vs the scene's exact renders, on held-out cameras, as is
    and after the best turn of the scene about the up axis (psnr_aligned, aligned_azimuth_deg)."""
    start = time.perf_counter()
    render = unlit_views(renderer, cameras, device, chunk)
    truth = scene.render(cameras, background=torch.ones(len(cameras), 3))
    metrics = scene_metrics(render, truth, time.perf_counter() - start)
    metrics.update(aligned_psnr(render.rgb.cpu(), scene, cameras.to("cpu")))
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics


def aligned_psnr(
    rgb: Tensor, scene: Any, cameras: Cameras, step_deg: float = 5.0, search_views: int = 8
) -> dict[str, float]:
    """PSNR after the best global azimuth phi: the model is compared with the scene turned by phi about the up
    axis (its front facing azimuth phi), i.e. its render at camera c with the scene's at c turned by −phi.

    A model that is the scene turned by any angle scores as the scene itself: the multi-view oracle may settle
    on any global azimuth. phi is searched every step_deg degrees on at most search_views of the views, then
    scored on all of them. Returns {"psnr_aligned", "aligned_azimuth_deg"} (phi in (−180, 180])."""
    white = torch.ones(len(cameras), 3)
    subset = torch.linspace(0, len(cameras) - 1, min(search_views, len(cameras))).round().long().unique()
    angles = torch.arange(0.0, 360.0, step_deg)

    def score(phi: float, index: Tensor) -> Tensor:
        cams = cameras[index]
        turned = replace(cams, c2w=rotate_about_up(cams.c2w, torch.full((len(cams),), -phi)))
        truth = scene.render(turned, background=white[index]).rgb
        return psnr(rgb[index], truth)

    best = max(angles.tolist(), key=lambda phi: float(score(phi, subset).mean()))
    values = score(best, torch.arange(len(cameras)))
    return {
        "psnr_aligned": float(values.mean()),
        "aligned_azimuth_deg": float(wrap_azimuth(torch.tensor(best))),
    }


def evaluate_particles(
    renderers: list[nn.Module], scenes: list[Any], cameras: Cameras, device: torch.device, chunk: int
) -> dict[str, Any]:
    """Each particle against its best-matching scene (highest mean PSNR on the held-out views).

    Returns psnr / psnr_min over the particles' best matches, `particles`: [{"index", "scene", "psnr",
    "psnr_min"}], and `modes_covered`: how many distinct scenes the particles matched (of `modes`)."""
    start = time.perf_counter()
    white = torch.ones(len(cameras), 3)
    truths = [scene.render(cameras, background=white).rgb.cpu() for scene in scenes]
    rows = []
    for index, renderer in enumerate(renderers):
        rgb = unlit_views(renderer, cameras, device, chunk).rgb.cpu()
        values = [psnr(rgb, truth) for truth in truths]
        best = max(range(len(scenes)), key=lambda k: float(values[k].mean()))
        rows.append(
            {
                "index": index,
                "scene": scenes[best].name,
                "psnr": float(values[best].mean()),
                "psnr_min": float(values[best].min()),
            }
        )
    return {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "psnr_min": min(r["psnr_min"] for r in rows),
        "psnr_views": len(cameras),
        "eval_seconds": time.perf_counter() - start,
        "particles": rows,
        "modes": len(scenes),
        "modes_covered": len({r["scene"] for r in rows}),
    }


def unlit_views(renderer: nn.Module, cameras: Cameras, device: torch.device, chunk: int) -> RenderOutput:
    """The renderer's unlit (albedo) views over white, in eval mode, outside the training RNG stream."""
    white = torch.ones(len(cameras), 3)
    was_training = renderer.training
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        renderer.eval()
        outs = [
            renderer(
                cameras[i : i + chunk].to(device),
                shading="albedo",
                background_color=white[i : i + chunk].to(device),
            ).detach()
            for i in range(0, len(cameras), chunk)
        ]
        renderer.train(was_training)
    return RenderOutput.cat(outs)


def write_validation(grid: np.ndarray, run_dir: Path, name: str) -> Path:
    return save_image(grid, run_dir / "save" / f"{name}-val.png")


def write_turntable(frames: list[np.ndarray], run_dir: Path) -> Path:
    return save_video(frames, run_dir / "video" / "test.mp4", fps=30)


def log_image(loggers: list, key: str, image: np.ndarray, step: int) -> None:
    for logger in loggers:
        if hasattr(logger, "log_image"):  # wandb
            logger.log_image(key=key, images=[image], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
            logger.experiment.add_image(key, image, step, dataformats="HWC")


def log_video(loggers: list, key: str, path: str) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            logger.experiment.log({key: wandb.Video(path, format="mp4")})


__all__ = [
    "Tensor",
    "evaluate_against_scene",
    "evaluate_particles",
    "log_image",
    "log_video",
    "render_views",
    "turntable_frames",
    "validation_grid",
    "write_turntable",
    "write_validation",
]
