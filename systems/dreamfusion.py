"""DreamFusion-style system: render a NeRF from random cameras, score it with SDS, regularize.

Validation renders a few fixed orbit views into `save/`; the test pass renders the turntable into
`video/test.mp4` (rgb | normal); when the prior is the analytic oracle, held-out orbit views are compared
with the ground-truth scene (PSNR).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.render_output import RenderOutput
from systems.base import BaseSystem
from systems.metrics import psnr
from systems.visualize import save_image, save_video, to_uint8, turntable_frame, validation_row


class DreamFusion(BaseSystem):
    """The NeRF + SDS recipe (DreamFusion; also the offline demo with the oracle prior)."""

    run_dir: Path | None = None
    scene = None  # geometry.scene.Scene ground truth when the prior is the oracle

    # ---- evaluation rendering ---------------------------------------------------------------------------
    def eval_shading(self) -> str:
        return "albedo" if self.cfg.shading.mode == "albedo" else "lambertian"

    def render_views(self, cameras: Cameras, shading: str | None = None) -> RenderOutput:
        """Deterministic renders of many views, a few at a time; the training RNG stream is not touched."""
        chunks = []
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            was_training = self.training
            self.eval()
            for i in range(0, len(cameras), self.cfg.eval_chunk_views):
                cams = cameras[i : i + self.cfg.eval_chunk_views].to(self.device)
                chunks.append(self.renderer(cams, shading=shading or self.eval_shading()).detach())
            self.train(was_training)
        return RenderOutput(
            rgb=torch.cat([c.rgb for c in chunks]),
            opacity=torch.cat([c.opacity for c in chunks]),
            depth=torch.cat([c.depth for c in chunks]),
            normal=None if chunks[0].normal is None else torch.cat([c.normal for c in chunks]),
        )

    # ---- validation: a grid image per check --------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_rows: list[Tensor] = []

    def validation_step(self, batch: Cameras, batch_idx: int) -> None:
        render = self.render_views(batch)
        self._val_rows.extend(validation_row(render, i) for i in range(render.batch_size))

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows or self.run_dir is None:
            return
        grid = to_uint8(torch.cat(self._val_rows, dim=0))
        path = save_image(grid, self.run_dir / "save" / f"it{self.global_step:06d}-val.png")
        self.artifacts.setdefault("validation", []).append(str(path))
        self.log_image("validation", grid)

    # ---- test: the turntable video -------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._frames: list = []

    def test_step(self, batch: Cameras, batch_idx: int) -> None:
        render = self.render_views(batch)
        self._frames.extend(to_uint8(turntable_frame(render, i)) for i in range(render.batch_size))

    def on_test_epoch_end(self) -> None:
        if not self._frames or self.run_dir is None:
            return
        path = save_video(self._frames, self.run_dir / "video" / "test.mp4", fps=30)
        self.artifacts["video"] = str(path)
        self.log_video("turntable", str(path))

    # ---- metrics against the analytic ground truth -----------------------------------------------------
    def evaluate_against_scene(self, cameras: Cameras) -> dict[str, float]:
        """PSNR of unlit renders over white vs the scene's analytic render, on held-out views."""
        if self.scene is None:
            return {}
        start = time.perf_counter()
        render = self.render_views(cameras, shading="albedo")
        white = torch.ones(len(cameras), 3)
        truth = self.scene.render(cameras, background=white)
        values = psnr(render.rgb.cpu(), truth.rgb.cpu())
        return {
            "psnr": float(values.mean()),
            "psnr_min": float(values.min()),
            "psnr_views": len(cameras),
            "eval_seconds": time.perf_counter() - start,
        }

    # ---- loggers -----------------------------------------------------------------------------------------
    @property
    def artifacts(self) -> dict:
        if not hasattr(self, "_artifacts"):
            self._artifacts = {}
        return self._artifacts

    def log_image(self, key: str, image) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image(key=key, images=[image], step=self.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
                logger.experiment.add_image(key, image, self.global_step, dataformats="HWC")

    def log_video(self, key: str, path: str) -> None:
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({key: wandb.Video(path, format="mp4")})
