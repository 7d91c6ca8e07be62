"""NoiseSchedule against diffusers' own schedulers, and the distillation timestep schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from distill.schedule import NoiseSchedule, TimestepSampler, TimestepScheduleConfig, sds_weight

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SHAPE = (3, 4, 8, 8)


def _tensors(seed: int, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


# --------------------------------------------------------------------------------------------- construction
def test_constructors_agree_with_diffusers_alphas_cumprod(tmp_path):
    ddim = DDIMScheduler(**SD_BETAS, set_alpha_to_one=False, prediction_type="v_prediction")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(ddim.config)))
    for schedule in (
        NoiseSchedule.from_scheduler(ddim),
        NoiseSchedule.from_scheduler(dict(ddim.config)),
        NoiseSchedule.from_pretrained(tmp_path, local_files_only=True),
        NoiseSchedule.stable_diffusion("v_prediction"),
    ):
        assert schedule.num_train_timesteps == 1000
        assert schedule.prediction_type == "v_prediction"
        assert schedule.alphas_cumprod.dtype == torch.float32 and schedule.alphas_cumprod.device.type == "cpu"
        torch.testing.assert_close(schedule.alphas_cumprod, ddim.alphas_cumprod, rtol=0, atol=0)
        assert schedule.final_alpha_cumprod == pytest.approx(float(ddim.final_alpha_cumprod))
    # Without set_alpha_to_one in the config (a DDPM config), DDIM's default applies.
    ddpm_config = dict(DDPMScheduler(**SD_BETAS).config)
    assert "set_alpha_to_one" not in ddpm_config
    expected_final = float(DDIMScheduler.from_config(ddpm_config).final_alpha_cumprod)
    assert NoiseSchedule.from_scheduler(ddpm_config).final_alpha_cumprod == expected_final == 1.0
    # Independent check of the scaled_linear formula: betas = linspace(sqrt(b0), sqrt(b1), T)².
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0).float()
    torch.testing.assert_close(NoiseSchedule.stable_diffusion().alphas_cumprod, expected, rtol=1e-5, atol=0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule.from_scheduler({**SD_BETAS, "prediction_type": "flow"})
    with pytest.raises(TypeError, match="scheduler or its config"):
        NoiseSchedule.from_scheduler(42)
    schedule = NoiseSchedule.stable_diffusion()
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="out of range"):
        schedule.add_noise(x, x, torch.tensor([0, 1000]))
    with pytest.raises(TypeError, match="integers"):
        schedule.add_noise(x, x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="t_prev < t"):
        schedule.ddim_step(x, 10, 20, x)
    with pytest.raises(ValueError, match="eta"):
        schedule.ddim_step(x, 20, 10, x, eta=-1.0)


# --------------------------------------------------------------------------------------------- forward process
def test_add_noise_and_velocity_equal_diffusers():
    x0, eps, _ = _tensors(0)
    t = torch.tensor([0, 499, 999])
    ddpm = DDPMScheduler(**SD_BETAS)
    schedule = NoiseSchedule.from_scheduler(ddpm)
    torch.testing.assert_close(
        schedule.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        schedule.velocity(x0, eps, t), ddpm.get_velocity(x0, eps, t), rtol=1e-6, atol=1e-6
    )
    # A scalar int t broadcasts over the batch.
    torch.testing.assert_close(
        schedule.add_noise(x0, eps, 250), ddpm.add_noise(x0, eps, torch.full((3,), 250))
    )


def test_conversions_round_trip():
    schedule = NoiseSchedule.stable_diffusion()
    x0, eps, _ = _tensors(1)
    t = torch.tensor([1, 500, 999])
    x_t = schedule.add_noise(x0, eps, t)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedule.eps_to_x0(x_t, eps, t), x0, **tol)
    torch.testing.assert_close(schedule.x0_to_eps(x_t, schedule.eps_to_x0(x_t, eps, t), t), eps, **tol)
    v = schedule.velocity(x0, eps, t)
    torch.testing.assert_close(schedule.v_to_eps(x_t, v, t), eps, **tol)
    torch.testing.assert_close(schedule.v_to_x0(x_t, v, t), x0, **tol)
    # to_eps / to_x0 dispatch on prediction_type.
    for prediction_type, output in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        typed = NoiseSchedule.stable_diffusion(prediction_type)
        torch.testing.assert_close(typed.to_eps(output, x_t, t), eps, **tol)
        torch.testing.assert_close(typed.to_x0(output, x_t, t), x0, **tol)


def test_alpha_bar_device_dtype_and_half_precision():
    schedule = NoiseSchedule.stable_diffusion()
    like = torch.zeros(2, 4, 8, 8, dtype=torch.float16)
    ab = schedule.alpha_bar(torch.tensor([3, 7]), like)
    assert ab.shape == (2, 1, 1, 1) and ab.dtype == torch.float16
    torch.testing.assert_close(ab.flatten(), schedule.alphas_cumprod[[3, 7]].half())
    # Near t = 0, x0_to_eps divides by sqrt(1 - ab) ~ 0.03: float32 internals keep fp16 inputs accurate.
    x0, eps, _ = _tensors(2)
    x_t = schedule.add_noise(x0, eps, 0)
    eps16 = schedule.x0_to_eps(x_t.half(), x0.half(), 0)
    assert eps16.dtype == torch.float16
    naive = (x_t.half() - schedule.alpha_bar(0, like).sqrt() * x0.half()) / (
        1 - schedule.alpha_bar(0, like)
    ).sqrt()
    err, naive_err = (eps16.float() - eps).abs().max(), (naive.float() - eps).abs().max()
    assert err < 0.1 and err < naive_err
    # Reverse steps on fp16 inputs agree with the float32 computation to fp16 resolution.
    out = eps.half()
    ref32 = schedule.ddpm_step(eps, 1, x_t, noise=x0)
    torch.testing.assert_close(
        schedule.ddpm_step(out, 1, x_t.half(), noise=x0.half()).float(), ref32, rtol=0, atol=1e-2
    )
    ref32, _ = schedule.ddim_step(eps, 21, 1, x_t, eta=0.5, noise=x0)
    got, _ = schedule.ddim_step(out, 21, 1, x_t.half(), eta=0.5, noise=x0.half())
    torch.testing.assert_close(got.float(), ref32, rtol=0, atol=1e-2)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_cpu_generator_works():
    schedule = NoiseSchedule.stable_diffusion("v_prediction")
    x_t, out, noise = _tensors(9)
    t, t_prev = torch.tensor([900, 400, 5]), torch.tensor([880, 380, -15])
    cpu = schedule.ddim_step(out, t, t_prev, x_t, eta=0.3, noise=noise)[0]
    gpu = schedule.ddim_step(out.cuda(), t.cuda(), t_prev, x_t.cuda(), eta=0.3, noise=noise.cuda())[0]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    g_cpu, g_gpu = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = schedule.ddpm_step(out, t, x_t, generator=g_cpu)
    b = schedule.ddpm_step(out.cuda(), t.cuda(), x_t.cuda(), generator=g_gpu)
    torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-5)
    sampler = TimestepSampler(TimestepScheduleConfig(per_sample=True), 1000, 10)
    s = sampler.sample(8, 0, device="cuda", generator=torch.Generator().manual_seed(2))
    assert s.device.type == "cuda" and torch.equal(
        s.cpu(), sampler.sample(8, 0, generator=torch.Generator().manual_seed(2))
    )


# --------------------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_equals_diffusers(prediction_type, set_alpha_to_one, eta):
    ddim = DDIMScheduler(
        **SD_BETAS,
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    ddim.set_timesteps(50)
    schedule = NoiseSchedule.from_scheduler(ddim)
    stride = 1000 // 50
    x_t, out, noise = _tensors(3)
    for t in (int(ddim.timesteps[0]), int(ddim.timesteps[25]), int(ddim.timesteps[-1])):  # last: t_prev < 0
        ref = ddim.step(out, t, x_t, eta=eta, variance_noise=noise if eta > 0 else None)
        x_prev, x0 = schedule.ddim_step(out, t, t - stride, x_t, eta=eta, noise=noise)
        torch.testing.assert_close(x_prev, ref.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, ref.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_ddim_per_sample_timesteps_and_generator():
    schedule = NoiseSchedule.stable_diffusion()
    x_t, out, _ = _tensors(4)
    t, t_prev = torch.tensor([981, 501, 1]), torch.tensor([961, 481, -19])
    batched, _ = schedule.ddim_step(out, t, t_prev, x_t)
    for i in range(3):
        single, _ = schedule.ddim_step(out[i : i + 1], int(t[i]), int(t_prev[i]), x_t[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)
    a, _ = schedule.ddim_step(out, t, t_prev, x_t, eta=1.0, generator=torch.Generator().manual_seed(5))
    b, _ = schedule.ddim_step(out, t, t_prev, x_t, eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, batched)


# --------------------------------------------------------------------------------------------- DDPM
@pytest.fixture
def fixed_ddpm_noise(monkeypatch):
    """Make DDPMScheduler.step use our noise: replaces the randn_tensor it imported (robust to how it draws)."""
    box = {}

    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, **_):
        assert tuple(shape) == tuple(box["noise"].shape)
        box["calls"] = box.get("calls", 0) + 1
        return box["noise"].to(device=device, dtype=dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", fake_randn_tensor)
    return box


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_step_equals_diffusers(prediction_type, fixed_ddpm_noise):
    ddpm = DDPMScheduler(**SD_BETAS, clip_sample=False, prediction_type=prediction_type)
    # set_alpha_to_one is DDIM-only: DDPM's step below t = 0 still targets alpha_bar = 1, as in diffusers.
    schedule = NoiseSchedule.from_scheduler({**ddpm.config, "set_alpha_to_one": False})
    x_t, out, noise = _tensors(6)
    fixed_ddpm_noise["noise"] = noise
    for t in (999, 500, 1, 0):  # t = 0 is the last step: no noise, returns the x0 prediction
        ref = ddpm.step(out, t, x_t).prev_sample
        torch.testing.assert_close(schedule.ddpm_step(out, t, x_t, noise=noise), ref, rtol=1e-5, atol=1e-5)
    assert fixed_ddpm_noise["calls"] == 3  # diffusers drew noise for every t > 0: the comparison used it
    torch.testing.assert_close(schedule.ddpm_step(out, 0, x_t, noise=noise), schedule.to_x0(out, x_t, 0))


def test_ddpm_strided_and_per_sample_equal_diffusers(fixed_ddpm_noise):
    ddpm = DDPMScheduler(**SD_BETAS, clip_sample=False, timestep_spacing="trailing")
    ddpm.set_timesteps(10)  # strided: previous_timestep jumps 100 steps; the last goes to -1
    schedule = NoiseSchedule.from_scheduler(ddpm)
    x_t, out, noise = _tensors(7)
    fixed_ddpm_noise["noise"] = noise[:1]
    ts = [int(ddpm.timesteps[0]), int(ddpm.timesteps[4]), int(ddpm.timesteps[-1])]
    t_prevs = [int(ddpm.previous_timestep(t)) for t in ts]
    assert t_prevs[-1] == -1
    refs = [ddpm.step(out[i : i + 1], t, x_t[i : i + 1]).prev_sample for i, t in enumerate(ts)]
    ours = schedule.ddpm_step(
        out, torch.tensor(ts), x_t, noise=noise[:1].expand(SHAPE), t_prev=torch.tensor(t_prevs)
    )
    torch.testing.assert_close(ours, torch.cat(refs), rtol=1e-5, atol=1e-5)


def test_ddpm_posterior_matches_closed_form_and_eta_one_ddim():
    schedule = NoiseSchedule.stable_diffusion()
    x0, x_t, noise = _tensors(8)
    t, t_prev = 700, 650
    ab_t, ab_p = schedule.alphas_cumprod[t].double(), schedule.alphas_cumprod[t_prev].double()
    mean, var = schedule.ddpm_posterior(x0, x_t, t, t_prev)
    # Independent form: q(x_prev | x_t, x0) from Gaussian conditioning of the joint forward process.
    a = ab_t / ab_p
    expected_var = (1 - a) * (1 - ab_p) / (1 - ab_t)
    expected_mean = (ab_p.sqrt() * (1 - a) * x0.double() + a.sqrt() * (1 - ab_p) * x_t.double()) / (1 - ab_t)
    torch.testing.assert_close(var.flatten().double(), expected_var.expand(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
    # DDIM with eta = 1 has the DDPM posterior's variance and mean (Song et al. 2021, §4.1).
    eps = schedule.x0_to_eps(x_t, x0, t)
    ddim, _ = schedule.ddim_step(eps, t, t_prev, x_t, eta=1.0, noise=noise)
    torch.testing.assert_close(ddim, mean + var.sqrt() * noise, rtol=1e-4, atol=1e-4)


def test_sds_weight_values():
    ab = torch.tensor([0.0, 0.25, 0.81, 1.0])
    torch.testing.assert_close(sds_weight("sds", ab), torch.tensor([1.0, 0.75, 0.19, 0.0]))
    torch.testing.assert_close(sds_weight("uniform", ab), torch.ones(4))
    torch.testing.assert_close(sds_weight("fantasia3d", ab), torch.tensor([0.0, 0.375, 0.9 * 0.19, 0.0]))
    with pytest.raises(ValueError, match="sds, uniform, fantasia3d"):
        sds_weight("dreamfusion", ab)


# --------------------------------------------------------------------------------------------- timestep schedules
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
