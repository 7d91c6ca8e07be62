"""Acceptance: the NeRF + volume renderer fit 30 ground-truth views to ≥ 30 dB held-out PSNR within 2 minutes."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.fit_nerf import FitConfig, fit_nerf


@pytest.mark.slow
def test_nerf_fits_builtin_scene_to_30db_in_two_minutes():
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    # training budget leaves room for ground-truth rendering and the final held-out evaluation
    result = fit_nerf(FitConfig(max_seconds=60.0, eval_every_s=1e9), verbose=False)
    wall = time.perf_counter() - t0
    assert wall <= 120.0, f"fit took {wall:.1f} s"
    assert result["psnr"] >= 30.0, f"held-out PSNR {result['psnr']:.2f} dB after {result['steps']} steps"
