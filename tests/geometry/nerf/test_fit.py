"""Acceptance: the NeRF + volume renderer fit 30 ground-truth views to ≥ 30 dB held-out PSNR in 1000 steps."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_nerf_fits_builtin_scene_to_30db():
    """A step budget, not a time budget: the old 60-second budget made the result depend on how busy the
    machine was (the suite's one flaky test: fewer steps, and a faster LR decay, under load)."""
    # Imported here: the benchmark script is not part of the package, and a problem in it should fail this
    # test, not the collection of every other test in the folder.
    from benchmarks.fit_nerf import FitConfig, fit_nerf

    torch.set_num_threads(2)
    result = fit_nerf(FitConfig(max_seconds=float("inf"), max_steps=1000, eval_every_s=1e9), verbose=False)
    assert result["steps"] == 1000
    assert result["psnr"] >= 30.0, f"held-out PSNR {result['psnr']:.2f} dB after {result['steps']} steps"
