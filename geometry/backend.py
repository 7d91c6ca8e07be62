"""The one backend resolver: which implementation runs, the CUDA library or its pure-torch twin (DESIGN §4).

`backend: auto` uses the library when the tensors are on CUDA and it imports; `cuda` demands it (and says how to
get it); `torch` always uses the twin. Every renderer and encoding asks here instead of deciding itself.
"""

from __future__ import annotations

import functools
import importlib

import torch

BACKENDS = ("auto", "cuda", "torch")
# What to tell a user whose chosen library does not import.
_INSTALL_HINTS = {
    "tinycudann": "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
    "nerfacc": "pip install nerfacc",
    "gsplat": "pip install 'gsplat>=1.5'",
    "nvdiffrast": "pip install diffrp-nvdiffrast",
}


@functools.cache
def importable(library: str) -> bool:
    """Whether `library` imports (ImportError, or a CUDA/driver error raised while loading its extension)."""
    try:
        importlib.import_module(library)
    except Exception:
        return False
    return True


def check_backend(backend: str, where: str) -> None:
    """Refuse an unknown backend name in one line."""
    if backend not in BACKENDS:
        raise ValueError(f"{where}.backend={backend!r} is not supported: use one of {BACKENDS}")


def use_cuda_library(backend: str, device: torch.device, library: str, where: str) -> bool:
    """True when `library`'s CUDA path should run for tensors on `device` (backend "tcnn" means "cuda")."""
    backend = "cuda" if backend == "tcnn" else backend
    check_backend(backend, where)
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and importable(library)
    if device.type != "cuda":
        raise RuntimeError(
            f"{where}.backend=cuda needs CUDA tensors (got {device}): move the model to a GPU or use backend=auto"
        )
    if not importable(library):
        raise ImportError(
            f"{where}.backend=cuda but {library} is not importable: install it with "
            f"`{_INSTALL_HINTS.get(library, 'pip install ' + library)}` or use backend=auto / torch"
        )
    return True
