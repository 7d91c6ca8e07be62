"""distill.schedule: NoiseSchedule and the stateless DDPM / DDIM math against diffusers' own schedulers."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from distill.schedule import NoiseSchedule

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


@pytest.mark.usefixtures("unchecked_types")  # ill-typed input on purpose: our own error message
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


# ------------------------------------------------------------------------------------------- forward process
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
    """DDPMScheduler.step uses our noise: replaces the randn_tensor it imported (robust to how it draws)."""
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
