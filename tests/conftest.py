"""Shared test configuration: markers, an isolated user cache, tiny-model fixtures."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the prompt-embedding cache (and hub lookups) out of the user's real cache directory."""
    cache = tmp_path_factory.getbasetemp() / "distill3d-cache"
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random Stable Diffusion folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/), built once."""
    from tests.fixtures.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_if_path(tmp_path_factory):
    """A tiny random DeepFloyd-IF-stage-I-style pixel model folder (T5 text encoder, 6-channel UNet), built once."""
    from tests.fixtures.tiny_models import build_tiny_if

    return build_tiny_if(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture
def unchecked_types():
    """Turn off the test-time type checker (pyproject addopts) for a test that passes ill-typed values on
    purpose, to check the project's own one-line error for users, who run without a type checker."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture(scope="session")
def tiny_mvdream_path(tmp_path_factory):
    """A tiny random MVDream in the diffusers port layout (unet/ = MultiViewUNetModel config + LDM keys)."""
    from tests.fixtures.tiny_mvdream import build_tiny_mvdream

    return build_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream"))


@pytest.fixture(scope="session")
def tiny_mvdream_ckpt(tmp_path_factory, tiny_mvdream_path):
    """The same tiny MVDream weights as an original-LDM-layout single .pt file (sd-v2.1-base-4view.pt style)."""
    from tests.fixtures.tiny_mvdream import build_tiny_mvdream_ckpt

    return build_tiny_mvdream_ckpt(
        tmp_path_factory.mktemp("tiny-mvdream-ckpt") / "tiny-4view.pt", tiny_mvdream_path
    )
