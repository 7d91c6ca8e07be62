"""Turning renders into images and videos (validation grids, the test turntable)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from distill3d.files import atomic_target
from geometry.render_output import RenderOutput


def to_uint8(image: Float[Tensor, "H W 3"]) -> np.ndarray:
    return (image.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def normal_image(render: RenderOutput, i: int) -> Float[Tensor, "H W 3"]:
    """World normals mapped to [0, 1], over white where the render is empty.

    Composited normals are weighted sums (shorter than 1 at soft edges and inside thin shells): renormalized
    first, so a colour always means a direction."""
    if render.normal is None:
        return torch.ones_like(render.rgb[i])
    alpha = render.opacity[i]
    unit = torch.nn.functional.normalize(render.normal[i], dim=-1)
    return (unit * 0.5 + 0.5) * alpha + (1.0 - alpha)


def depth_image(render: RenderOutput, i: int) -> Float[Tensor, "H W 3"]:
    """Depth normalized over the covered pixels (near = bright), white where empty."""
    depth, alpha = render.depth[i, ..., 0], render.opacity[i, ..., 0]
    mask = alpha > 0.5
    if mask.any():
        lo, hi = depth[mask].min(), depth[mask].max()
        norm = 1.0 - (depth - lo) / (hi - lo).clamp_min(1e-6)
    else:
        norm = torch.zeros_like(depth)
    gray = norm * alpha + (1.0 - alpha)
    return gray[..., None].expand(*gray.shape, 3)


def validation_row(render: RenderOutput, i: int) -> Float[Tensor, "H W4 3"]:
    """rgb | normal | opacity | depth, side by side."""
    opacity = render.opacity[i].expand(*render.opacity.shape[1:3], 3)
    return torch.cat([render.rgb[i], normal_image(render, i), opacity, depth_image(render, i)], dim=1)


def turntable_frame(render: RenderOutput, i: int) -> Float[Tensor, "H W2 3"]:
    return torch.cat([render.rgb[i], normal_image(render, i)], dim=1)


def save_image(image: np.ndarray, path: Path) -> Path:
    with atomic_target(path) as tmp:
        imageio.imwrite(tmp, image)
    return path


def save_video(frames: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    """H.264 mp4 through imageio-ffmpeg's bundled ffmpeg; frames must share one size."""
    # macro_block_size=1 keeps odd sizes as they are; yuv420p needs even sizes, so pad by one if needed.
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with (
        atomic_target(path) as tmp,
        imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1, pixelformat="yuv420p"
        ) as writer,
    ):
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))
    return path
