"""Every RNG a training step draws from (torch, CUDA, numpy, Python), captured into a checkpoint and restored
at the first resumed step, so a resumed run continues the exact random stream of an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    """numpy's RNG state as tensors and Python numbers: checkpoints stay loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state_from_plain(plain: dict[str, Any]) -> tuple:
    keys = plain["keys"].numpy().astype(np.uint32)
    return plain["kind"], keys, plain["pos"], plain["has_gauss"], plain["cached"]


class RngState:
    """capture() for a checkpoint; set_pending(state) on load; restore_pending() at the first resumed step —
    not at load time, so nothing Lightning draws while starting up shifts the training stream."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def capture() -> dict[str, Any]:
        return {
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "rng_numpy": _numpy_state_to_plain(np.random.get_state()),
            "rng_python": random.getstate(),
        }

    def set_pending(self, state: dict[str, Any]) -> None:
        self._pending = state

    def restore_pending(self) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        np.random.set_state(_numpy_state_from_plain(state["rng_numpy"]))
        random.setstate(state["rng_python"])
