"""The DDPM/DDIM core shared by every guidance method and sampler, on diffusers' scheduler configs.

`NoiseSchedule` takes `alphas_cumprod` from a diffusers `DDPMScheduler` built from the model's scheduler config
(never re-deriving the beta schedule) and implements, for any timestep pair (t, t_prev):
the forward process, conversions between eps / x0 / v, the DDIM step (any eta), the DDPM posterior and step.
Unlike diffusers' `step()`, these take per-sample timesteps (B,) and arbitrary t_prev, and never clip or
threshold x0 (latent-space models do not; guidance needs the raw prediction).

Precision: `alphas_cumprod` stays float32 on CPU; every formula runs in (at least) float32 and casts the result
back to the input dtype, because in fp16 1 - alpha_bar loses most of its digits near t = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

Timestep = int | Int[Tensor, "..."]  # a Python int, or an integer tensor of shape () or (B,)
Sample = Float[Tensor, "B *shape"]  # x0, x_t, eps, v: any (B, ...) shape, e.g. latents (B, 4, 64, 64)
AlphaBar = Float[
    Tensor, "#B *#ones"
]  # alpha_bar_t in (0, 1], shaped (B, 1, ..., 1) to broadcast against Sample


# ----------------------------------------------------------------------------------------------------------------
# Stateless math. alpha_bar arguments are already broadcastable against the samples ((B,1,...,1) or scalars).
# ----------------------------------------------------------------------------------------------------------------
def q_sample(x0: Sample, eps: Sample, alpha_bar: AlphaBar) -> Sample:
    """x_t = sqrt(ab)·x0 + sqrt(1-ab)·eps (Ho et al. 2020, eq. 4)."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def x0_from_eps(x_t: Sample, eps: Sample, alpha_bar: AlphaBar) -> Sample:
    """Invert eq. 4 for x0 (DDIM, Song et al. 2021, the "predicted x0" of eq. 12)."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: Sample, x0: Sample, alpha_bar: AlphaBar) -> Sample:
    """Invert eq. 4 for eps; ill-conditioned near t = 0 where 1 - ab -> 0."""
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def velocity_from(x0: Sample, eps: Sample, alpha_bar: AlphaBar) -> Sample:
    """v = sqrt(ab)·eps - sqrt(1-ab)·x0 (Salimans & Ho 2022, progressive distillation, §4)."""
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def eps_from_v(x_t: Sample, v: Sample, alpha_bar: AlphaBar) -> Sample:
    """eps = sqrt(ab)·v + sqrt(1-ab)·x_t (follows from eq. 4 and the definition of v)."""
    return alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x_t


def x0_from_v(x_t: Sample, v: Sample, alpha_bar: AlphaBar) -> Sample:
    """x0 = sqrt(ab)·x_t - sqrt(1-ab)·v."""
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def ddim_sigma(alpha_bar_t: AlphaBar, alpha_bar_prev: AlphaBar, eta: float) -> AlphaBar:
    """sigma_t(eta) = eta·sqrt((1-ab_prev)/(1-ab_t))·sqrt(1-ab_t/ab_prev) (DDIM, Song et al. 2021, eq. 16)."""
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    return eta * variance.clamp_min(0).sqrt()


def ddim_update(
    x0: Sample, eps: Sample, alpha_bar_prev: AlphaBar, sigma: AlphaBar, noise: Sample | None
) -> Sample:
    """x_prev = sqrt(ab_prev)·x0 + sqrt(1-ab_prev-sigma²)·eps + sigma·z (DDIM, Song et al. 2021, eq. 12)."""
    # clamp: rounding can push 1 - ab_prev - sigma² a hair below 0 at eta = 1.
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).clamp_min(0).sqrt() * eps
    return x_prev if noise is None else x_prev + sigma * noise


def ddpm_posterior_math(
    x0: Sample, x_t: Sample, alpha_bar_t: AlphaBar, alpha_bar_prev: AlphaBar
) -> tuple[Sample, AlphaBar]:
    """Mean and variance of q(x_prev | x_t, x0) (Ho et al. 2020, eq. 7), for any earlier timestep.

    With alpha_t = ab_t/ab_prev and beta_t = 1 - alpha_t (the single step from t_prev to t):
    mean = sqrt(ab_prev)·beta_t/(1-ab_t)·x0 + sqrt(alpha_t)·(1-ab_prev)/(1-ab_t)·x_t,
    variance = (1-ab_prev)/(1-ab_t)·beta_t ("fixed_small", beta-tilde in the paper).
    """
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (alpha_bar_prev.sqrt() * beta_t * x0 + alpha_t.sqrt() * (1 - alpha_bar_prev) * x_t) / (
        1 - alpha_bar_t
    )
    variance = ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t).clamp_min(0)
    return mean, variance


# ----------------------------------------------------------------------------------------------------------------
# NoiseSchedule
# ----------------------------------------------------------------------------------------------------------------
class NoiseSchedule:
    """A diffusion model's discrete noise schedule, built from its diffusers scheduler config.

    Attributes:
        num_train_timesteps: T; valid timesteps are the integers 0..T-1.
        prediction_type:     what the model outputs: "epsilon" | "v_prediction" | "sample".
        alphas_cumprod:      (T,) float32 on CPU, alpha_bar_t, decreasing from ~1 towards 0.
        final_alpha_cumprod: alpha_bar used by DDIM when t_prev < 0: 1 if the config's `set_alpha_to_one`
                             (DDIMScheduler's default, True) else alphas_cumprod[0].
        config:              the scheduler config it was built from (a plain dict).

    Timesteps `t` are Python ints or integer tensors of shape () or (B,) (one per sample).
    """

    def __init__(self, config: Mapping[str, Any]):
        from diffusers import DDPMScheduler

        config = dict(config)
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type {prediction_type!r} is not supported: use one of {PREDICTION_TYPES}"
            )
        # DDPMScheduler knows every beta schedule diffusers ships (DDIM lacks "sigmoid"/"laplace").
        scheduler = DDPMScheduler.from_config(config)
        self.config = config
        self.prediction_type: str = prediction_type
        self.alphas_cumprod: Float[Tensor, "T"] = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
        self.num_train_timesteps: int = int(self.alphas_cumprod.shape[0])
        # DDIMScheduler semantics (and default) for the alpha_bar "before" the first timestep.
        self.final_alpha_cumprod: float = (
            1.0 if config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        )
        self._tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    # -- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_scheduler(cls, scheduler_or_config: Any) -> NoiseSchedule:
        """From a diffusers scheduler instance (any class) or its config (dict / FrozenDict)."""
        config = getattr(scheduler_or_config, "config", scheduler_or_config)
        if not isinstance(config, Mapping):
            raise TypeError(
                f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}"
            )
        return cls(config)

    @classmethod
    def from_pretrained(
        cls, path: str | PathLike, subfolder: str | None = "scheduler", local_files_only: bool | None = None
    ) -> NoiseSchedule:
        """From a diffusers model folder or hub id (reads <path>/<subfolder>/scheduler_config.json).

        local_files_only=None follows HF_HUB_OFFLINE. Missing files raise diffusers' own error.
        """
        from diffusers import DDPMScheduler

        kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
        return cls(DDPMScheduler.load_config(str(path), subfolder=subfolder, **kwargs))

    @classmethod
    def stable_diffusion(cls, prediction_type: str = "epsilon") -> NoiseSchedule:
        """The SD 1.x/2.x schedule: 1000 steps, scaled_linear betas 0.00085..0.012, set_alpha_to_one False."""
        return cls(
            {
                "num_train_timesteps": 1000,
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "prediction_type": prediction_type,
                "set_alpha_to_one": False,
                "steps_offset": 1,
                "clip_sample": False,
            }
        )

    # -- lookup ---------------------------------------------------------------------------------------------
    def _table(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = self.alphas_cumprod.to(device=device, dtype=dtype)
        return self._tables[key]

    def _lookup(
        self, t: Timestep, like: Tensor, dtype: torch.dtype, before_first: float | None = None
    ) -> Tensor:
        """alpha_bar at t as (B,1,...,1) (or (1,...,1) for a scalar t).

        before_first: the alpha_bar that t < 0 stands for; None means negative t is an error.
        """
        t = torch.as_tensor(t, device=like.device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}: pass t.long()")
        if t.dim() > 1:
            raise ValueError(f"timesteps must be a scalar or shape (B,), got shape {tuple(t.shape)}")
        low = 0 if before_first is None else -self.num_train_timesteps
        if t.numel() and (int(t.min()) < low or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(
                f"timestep out of range [{low}, {self.num_train_timesteps - 1}]: got min {int(t.min())}, "
                f"max {int(t.max())}"
            )
        table = self._table(like.device, dtype)
        ab = table[t.clamp_min(0)]
        if before_first is not None:
            ab = torch.where(t < 0, torch.full_like(ab, before_first), ab)
        return ab.reshape(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def _check_order(t: Timestep, t_prev: Timestep) -> None:
        t = torch.as_tensor(t)
        if bool((torch.as_tensor(t_prev, device=t.device) >= t).any()):
            raise ValueError(f"reverse steps need t_prev < t, got t={t}, t_prev={t_prev}")

    @staticmethod
    def _compute_dtype(x: Tensor) -> torch.dtype:
        return torch.promote_types(x.dtype, torch.float32)

    def alpha_bar(self, t: Timestep, like: Tensor) -> Tensor:
        """alpha_bar_t shaped (B,1,...,1) to broadcast against `like`, on like's device and dtype."""
        return self._lookup(t, like, self._compute_dtype(like)).to(like.dtype)

    def _apply(self, fn, a: Tensor, b: Tensor, t: Timestep) -> Tensor:
        """fn(a, b, alpha_bar_t) computed in float32 (or wider), returned in a's dtype."""
        dtype = self._compute_dtype(a)
        out = fn(a.to(dtype), b.to(dtype), self._lookup(t, a, dtype))
        return out.to(a.dtype)

    # -- forward process and conversions (all tensors (B, ...), t int or (B,)) --------------------------------
    def add_noise(self, x0: Tensor, eps: Tensor, t: Timestep) -> Tensor:
        """x_t = sqrt(ab)·x0 + sqrt(1-ab)·eps; equals diffusers' `add_noise`."""
        return self._apply(q_sample, x0, eps, t)

    def eps_to_x0(self, x_t: Tensor, eps: Tensor, t: Timestep) -> Tensor:
        return self._apply(x0_from_eps, x_t, eps, t)

    def x0_to_eps(self, x_t: Tensor, x0: Tensor, t: Timestep) -> Tensor:
        return self._apply(eps_from_x0, x_t, x0, t)

    def velocity(self, x0: Tensor, eps: Tensor, t: Timestep) -> Tensor:
        """The v-prediction target; equals diffusers' `get_velocity`."""
        return self._apply(velocity_from, x0, eps, t)

    def v_to_eps(self, x_t: Tensor, v: Tensor, t: Timestep) -> Tensor:
        return self._apply(eps_from_v, x_t, v, t)

    def v_to_x0(self, x_t: Tensor, v: Tensor, t: Timestep) -> Tensor:
        return self._apply(x0_from_v, x_t, v, t)

    def to_eps(self, model_output: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """The model's output (of type prediction_type) converted to a noise prediction eps_hat."""
        if self.prediction_type == "epsilon":
            return model_output
        if self.prediction_type == "v_prediction":
            return self.v_to_eps(x_t, model_output, t)
        return self.x0_to_eps(x_t, model_output, t)

    def to_x0(self, model_output: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """The model's output (of type prediction_type) converted to a clean-sample prediction x0_hat."""
        if self.prediction_type == "epsilon":
            return self.eps_to_x0(x_t, model_output, t)
        if self.prediction_type == "v_prediction":
            return self.v_to_x0(x_t, model_output, t)
        return model_output

    # -- reverse steps ------------------------------------------------------------------------------------------
    def ddim_step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep,
        x_t: Tensor,
        eta: float = 0.0,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12); returns (x_prev, x0_pred).

        t_prev < t is any earlier timestep (strided sampling); t_prev < 0 uses final_alpha_cumprod, as diffusers'
        DDIMScheduler does. eta = 0 is deterministic DDIM, eta = 1 matches DDPM's posterior variance.
        noise: the standard normal z (same shape as x_t), drawn with `generator` if None and eta > 0.
        Matches `DDIMScheduler.step(..., variance_noise=noise)` with clip_sample=False.
        """
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self._check_order(t, t_prev)
        dtype = self._compute_dtype(x_t)
        ab_t = self._lookup(t, x_t, dtype)
        ab_prev = self._lookup(t_prev, x_t, dtype, before_first=self.final_alpha_cumprod)
        out, x = model_output.to(dtype), x_t.to(dtype)
        if self.prediction_type == "epsilon":
            eps, x0 = out, x0_from_eps(x, out, ab_t)
        elif self.prediction_type == "v_prediction":
            eps, x0 = eps_from_v(x, out, ab_t), x0_from_v(x, out, ab_t)
        else:
            eps, x0 = eps_from_x0(x, out, ab_t), out
        sigma = ddim_sigma(ab_t, ab_prev, eta)
        if eta > 0 and noise is None:
            noise = _randn_like(x, generator)
        x_prev = ddim_update(x0, eps, ab_prev, sigma, noise.to(dtype) if eta > 0 else None)
        return x_prev.to(x_t.dtype), x0.to(x_t.dtype)

    def ddpm_posterior(
        self, x0: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean (like x_t) and variance ((B,1,...,1)) of q(x_{t_prev} | x_t, x0) (Ho et al. 2020, eq. 7).

        t_prev defaults to t - 1; t_prev < 0 means alpha_bar = 1 (the clean sample), as diffusers'
        DDPMScheduler does (it has no set_alpha_to_one), so the step from t = 0 returns x0 exactly.
        """
        dtype = self._compute_dtype(x_t)
        t_prev = t - 1 if t_prev is None else t_prev
        self._check_order(t, t_prev)
        ab_t = self._lookup(t, x_t, dtype)
        ab_prev = self._lookup(t_prev, x_t, dtype, before_first=1.0)
        mean, variance = ddpm_posterior_math(x0.to(dtype), x_t.to(dtype), ab_t, ab_prev)
        return mean.to(x_t.dtype), variance.to(x_t.dtype)

    def ddpm_step(
        self,
        model_output: Tensor,
        t: Timestep,
        x_t: Tensor,
        noise: Tensor | None = None,
        t_prev: Timestep | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One ancestral DDPM step x_t -> x_{t_prev} with "fixed_small" variance (Ho et al. 2020, Alg. 2).

        Matches `DDPMScheduler.step` (clip_sample=False, variance_type="fixed_small") given the same noise:
        x_prev = posterior mean(x0_pred, x_t) + sqrt(variance)·z, with no noise added where t == 0.
        noise: standard normal z like x_t, drawn with `generator` if None.
        """
        dtype = self._compute_dtype(x_t)  # upcast once so fp16 x0 / posterior keep float32 precision
        x = x_t.to(dtype)
        mean, variance = self.ddpm_posterior(self.to_x0(model_output.to(dtype), x, t), x, t, t_prev)
        if noise is None:
            noise = _randn_like(x_t, generator)
        # diffusers adds no noise on the final step (its variance is 0 there anyway when t_prev < 0).
        add = (torch.as_tensor(t, device=x_t.device) > 0).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (mean + add * variance.sqrt() * noise.to(dtype)).to(x_t.dtype)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal like x, drawn on the generator's device (so a CPU generator works for CUDA x)."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
