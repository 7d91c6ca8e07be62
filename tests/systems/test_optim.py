"""Per-module learning rates by parameter-name prefix, and LR schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from systems.optim import OptimizerConfig, build_lr_scheduler, build_optimizer, lr_factor


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.geometry = nn.Module()
        self.geometry.encoding = nn.Linear(2, 2)
        self.geometry.mlp = nn.Linear(2, 2)
        self.background = nn.Linear(2, 2)


def test_longest_prefix_wins_and_default_lr_applies():
    cfg = OptimizerConfig(lr=1e-3, param_groups={"geometry": 5e-3, "geometry.encoding": 1e-2})
    opt = build_optimizer(cfg, Model().named_parameters())
    lrs = {g["name"]: (g["lr"], len(g["params"])) for g in opt.param_groups}
    assert lrs == {"geometry.encoding": (1e-2, 2), "geometry": (5e-3, 2), "default": (1e-3, 2)}


def test_prefix_matching_no_parameter_is_an_error():
    with pytest.raises(ValueError, match="geometry.fields.hash_grid"):
        build_optimizer(
            OptimizerConfig(param_groups={"geometry.fields.hash_grid": 1e-2}), Model().named_parameters()
        )


@pytest.mark.parametrize("kind", ["exponential", "cosine"])
def test_schedules_start_at_one_and_end_at_the_final_ratio(kind):
    cfg = OptimizerConfig(lr=1.0, lr_scheduler=kind, lr_final_ratio=0.05)
    assert lr_factor(cfg, 0, 200) == pytest.approx(1.0)
    assert lr_factor(cfg, 200, 200) == pytest.approx(0.05)
    mid = 0.05**0.5 if kind == "exponential" else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2))
    assert lr_factor(cfg, 100, 200) == pytest.approx(mid)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(cfg, opt, 200)
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(mid)
    assert build_lr_scheduler(OptimizerConfig(), opt, 200) is None
