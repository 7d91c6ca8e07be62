"""Optimizers with per-module learning rates and optional LR schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn


@dataclass
class OptimizerConfig:
    """`param_groups` maps a parameter-name prefix (e.g. "geometry.encoding") to its learning rate.

    Parameters matching no prefix use `lr`. The longest matching prefix wins.
    """

    name: str = "adam"  # adam | adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0
    param_groups: dict[str, float] = field(default_factory=dict)
    lr_scheduler: str = "none"  # none | exponential | cosine
    lr_final_ratio: float = 0.1  # lr at the last step / initial lr, for exponential and cosine
    fused: bool = False  # torch's fused Adam kernel (also on CPU): one kernel per tensor instead of a dozen

    def validate(self) -> None:
        if self.name not in ("adam", "adamw"):
            raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got '{self.name}'")
        if self.lr_scheduler not in ("none", "exponential", "cosine"):
            raise ValueError(
                f"optimizer.lr_scheduler must be none|exponential|cosine, got '{self.lr_scheduler}'"
            )
        if self.lr <= 0 or any(v <= 0 for v in self.param_groups.values()):
            raise ValueError("learning rates must be positive")
        if not 0 < self.lr_final_ratio <= 1:
            raise ValueError("optimizer.lr_final_ratio must be in (0, 1]")


def group_parameters(
    cfg: OptimizerConfig, named_parameters: Iterable[tuple[str, nn.Parameter]]
) -> list[dict]:
    prefixes = sorted(cfg.param_groups, key=len, reverse=True)
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        key = next((pre for pre in prefixes if name == pre or name.startswith(pre + ".")), "")
        groups.setdefault(key, []).append(p)
    unused = [pre for pre in cfg.param_groups if pre not in groups]
    if unused:
        raise ValueError(
            f"optimizer.param_groups names no parameters: {unused} (prefixes of parameter names)"
        )
    return [
        {"params": params, "lr": cfg.param_groups.get(key, cfg.lr), "name": key or "default"}
        for key, params in groups.items()
    ]


def build_optimizer(
    cfg: OptimizerConfig, named_parameters, extra_groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """Adam(W) over the named parameters grouped by prefix, plus `extra_groups` a component brings (a guidance's
    trainable parts: {"params", "lr", "name"}); `param_groups` may override an extra group's lr by its name."""
    extra = [dict(g, lr=cfg.param_groups.get(g["name"], g.get("lr", cfg.lr))) for g in extra_groups or []]
    own = {k: v for k, v in cfg.param_groups.items() if k not in {g["name"] for g in extra}}
    groups = group_parameters(replace(cfg, param_groups=own), named_parameters) + [
        g for g in extra if g["params"]
    ]
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    kwargs = {"fused": True} if cfg.fused else {}
    return cls(groups, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **kwargs)


def lr_factor(cfg: OptimizerConfig, step: int, max_steps: int) -> float:
    """The LR multiplier at `step`: 1 (none), lr_final_ratio^(step/max_steps) (exponential), or cosine."""
    r = min(1.0, step / max(1, max_steps))
    if cfg.lr_scheduler == "exponential":
        return cfg.lr_final_ratio**r
    if cfg.lr_scheduler == "cosine":
        return cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * r))
    return 1.0


def build_lr_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, max_steps: int):
    if cfg.lr_scheduler == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, max_steps))
