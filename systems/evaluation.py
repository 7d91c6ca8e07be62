"""Evaluation renders of any system: validation grids, the test turntable, PSNR against a known scene.

Used by BaseSystem's Lightning hooks; nothing here depends on the representation (only on its renderer's
RenderOutput), so every recipe gets the same evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geometry.cameras import Cameras
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
    """PSNR of the renderer's unlit views over white vs the scene's exact renders, on held-out cameras."""
    start = time.perf_counter()
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
    render = RenderOutput(
        rgb=torch.cat([o.rgb for o in outs]),
        opacity=torch.cat([o.opacity for o in outs]),
        depth=torch.cat([o.depth for o in outs]),
    )
    truth = scene.render(cameras, background=white)
    return scene_metrics(render, truth, time.perf_counter() - start)


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
    "log_image",
    "log_video",
    "render_views",
    "turntable_frames",
    "validation_grid",
    "write_turntable",
    "write_validation",
]
