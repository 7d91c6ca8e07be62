"""distill.timesteps: the timestep ranges (constant, milestone, linear, HiFA, DreamGaussian) and the draws."""

from __future__ import annotations

import math

import pytest
import torch

from distill.timesteps import TimestepSampler, TimestepScheduleConfig


def _expected_round(p: float) -> int:
    return min(int(math.floor(p * 1000 + 0.5)), 999)


def test_constant_and_milestone_ranges():
    constant = TimestepSampler(TimestepScheduleConfig(), 1000, 10000)
    assert constant.range_at(0) == constant.range_at(9000) == (20, 980)
    full = TimestepSampler(TimestepScheduleConfig(min_step_percent=0.0, max_step_percent=1.0), 1000, 100)
    assert full.range_at(0) == (0, 999)  # t_max capped at T - 1
    cfg = TimestepScheduleConfig(kind="milestone", max_step_percent_end=0.5, end_step=5000)  # ProlificDreamer
    milestone = TimestepSampler(cfg, 1000, 25000)
    assert [milestone.range_at(s) for s in (0, 4999, 5000, 20000)] == [
        (20, 980),
        (20, 980),
        (20, 500),
        (20, 500),
    ]


def test_linear_ranges_mvdream():
    cfg = TimestepScheduleConfig(
        kind="linear",
        min_step_percent=0.98,
        max_step_percent=0.98,
        min_step_percent_end=0.02,
        max_step_percent_end=0.5,
        start_step=0,
        end_step=8000,
    )
    sampler = TimestepSampler(cfg, 1000, 10000)
    for step in (0, 1000, 3333, 4000, 8000, 9000):
        f = min(step / 8000, 1.0)
        expected = (_expected_round(0.98 - 0.96 * f), _expected_round(0.98 - 0.48 * f))
        assert sampler.range_at(step) == expected, step
    assert sampler.range_at(4000) == (500, 740)


def test_deterministic_schedules():
    hifa = TimestepSampler(TimestepScheduleConfig(kind="hifa_sqrt"), 1000, 10000)
    for step in (0, 2500, 10000, 20000):
        expected = round(980 - 960 * math.sqrt(min(step / 10000, 1.0)))
        assert hifa.range_at(step) == (expected, expected)
        assert hifa.sample(4, step).tolist() == [expected] * 4
    assert hifa.range_at(2500)[0] == 500
    dg = TimestepSampler(TimestepScheduleConfig(kind="dreamgaussian"), 1000, 500)
    assert [dg.range_at(s)[0] for s in (0, 1, 250, 499, 500)] == [980, 980, 500, 20, 20]
    assert dg.sample(2, 250).tolist() == [500, 500]


def test_sampling_bounds_per_sample_and_reproducibility():
    cfg = TimestepScheduleConfig(min_step_percent=0.1, max_step_percent=0.12, per_sample=True)
    sampler = TimestepSampler(cfg, 1000, 100)
    t = sampler.sample(4000, 0, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (4000,)
    assert int(t.min()) == 100 and int(t.max()) == 120  # both ends reached, nothing outside
    assert len(set(t[:8].tolist())) > 1  # per-sample: elements differ
    shared = TimestepSampler(TimestepScheduleConfig(per_sample=False), 1000, 100)
    for seed in range(5):
        s = shared.sample(6, 0, generator=torch.Generator().manual_seed(seed))
        assert (s == s[0]).all() and 20 <= int(s[0]) <= 980
    a = sampler.sample(16, 0, generator=torch.Generator().manual_seed(3))
    b = sampler.sample(16, 0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="cosine"), "kind"),
        (dict(min_step_percent=-0.1), "min_step_percent"),
        (dict(max_step_percent=1.5), "max_step_percent"),
        (dict(min_step_percent=0.6, max_step_percent=0.5), "min_step_percent <= max_step_percent"),
        (dict(kind="milestone", max_step_percent_end=0.01), "_end"),
        (dict(kind="linear", start_step=100, end_step=100), "end_step > start_step"),
    ],
)
def test_bad_timestep_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimestepScheduleConfig(**kwargs)


def test_deterministic_kinds_need_max_steps():
    with pytest.raises(ValueError, match="max_steps"):
        TimestepSampler(TimestepScheduleConfig(kind="hifa_sqrt"), 1000, 0)


@pytest.mark.gpu
def test_cuda_draw_equals_cpu_draw_with_a_cpu_generator():
    sampler = TimestepSampler(TimestepScheduleConfig(per_sample=True), 1000, 10)
    s = sampler.sample(8, 0, device="cuda", generator=torch.Generator().manual_seed(2))
    assert s.device.type == "cuda" and torch.equal(
        s.cpu(), sampler.sample(8, 0, generator=torch.Generator().manual_seed(2))
    )
