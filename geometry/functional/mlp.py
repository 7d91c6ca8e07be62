"""The small fully connected network every field and learned background uses."""

from __future__ import annotations

from torch import nn


def mlp(n_in: int, n_hidden: int, n_hidden_layers: int, n_out: int) -> nn.Sequential:
    """Linear → ReLU, n_hidden_layers times, then a Linear to n_out (no output activation)."""
    dims = [n_in] + [n_hidden] * n_hidden_layers
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], n_out))
