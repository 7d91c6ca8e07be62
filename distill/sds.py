"""Score Distillation Sampling (DreamFusion, Poole et al. 2022) on any Denoiser.

A render is mapped into the denoiser's x0 space, noised at a random timestep, denoised with classifier-free
guidance (optionally Perp-Neg), and the difference between predicted and true noise is injected as a gradient
on x0 (the U-Net Jacobian omitted, DreamFusion eq. 3). The denoiser is frozen and kept out of the module tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from distill.denoiser import Denoiser, DenoiserContext
from distill.schedule import TimestepSampler, TimestepScheduleConfig, sds_weight
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
INPUTS = ("rgb", "latent")


@dataclass
class SDSConfig:
    """Score distillation settings (validated on construction, before any weights load).

    pretrained_model_name_or_path: hub id or folder of the diffusion model; None when a denoiser is passed in.
    torch_dtype: dtype the model runs in ("fp16" on GPU is the usual choice; "fp32" on CPU).
    guidance_scale: s in the diffusers CFG convention eps_u + s·(eps_c − eps_u). threestudio's SD/IF
        guidances use eps_c + s_ts·(eps_c − eps_u), so their s_ts equals s = s_ts + 1 here (their 100 → 101).
    weighting: w(t): "sds" = 1 − ab_t (DreamFusion), "uniform" = 1, "fantasia3d" = sqrt(ab_t)·(1 − ab_t).
    timestep: the annealed range t is drawn from (see distill.schedule.TimestepSampler).
    input: "rgb" = the render's RGB, resized to the model's image size and encoded (VAE for latent models);
        "latent" = render-as-latent (Latent-NeRF / Fantasia3D): [rgb ‖ opacity] mapped from [0, 1] to [-1, 1]
        is used directly as the 4-channel x0 at the render's own resolution (no resize, no VAE).
    grad_clip: clamp each element of the SDS gradient to [−grad_clip, grad_clip] (None = no clipping).
        Elementwise rather than by norm so one outlier pixel cannot rescale the whole image's gradient.
    use_perp_neg: Perp-Neg view guidance (Armandpour et al. 2023): 4 U-Net passes per sample.
    return_images: also return the one-step x0 prediction for logging (images["x0"]).
    """

    pretrained_model_name_or_path: str | None = None
    torch_dtype: str = "fp32"
    device: str = "auto"
    guidance_scale: float = 100.0
    weighting: str = "sds"
    timestep: TimestepScheduleConfig = field(default_factory=TimestepScheduleConfig)
    input: str = "rgb"
    grad_clip: float | None = None
    use_perp_neg: bool = False
    return_images: bool = False

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"SDSConfig.weighting={self.weighting!r} is unknown; use one of {WEIGHTINGS}")
        if self.input not in INPUTS:
            raise ValueError(f"SDSConfig.input={self.input!r} is unknown; use one of {INPUTS}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"SDSConfig.grad_clip={self.grad_clip} must be positive, or None to disable it")
        if not torch.isfinite(torch.tensor(float(self.guidance_scale))):
            raise ValueError(f"SDSConfig.guidance_scale={self.guidance_scale} must be a finite number")
        if self.pretrained_model_name_or_path is not None:
            self.model_config()  # validates torch_dtype / device now, before any weights load

    def model_config(self):
        """The distill.models.ModelLoadConfig of the diffusion model (imported lazily)."""
        from distill.models import ModelLoadConfig

        return ModelLoadConfig(
            pretrained_model_name_or_path=self.pretrained_model_name_or_path,
            torch_dtype=self.torch_dtype,
            device=self.device,
        )


@dataclass
class GuidanceOutput:
    """What every guidance returns (DESIGN.md §3).

    loss:      scalar to backpropagate; its value has no meaning (gradient injection), log grad_norm instead.
    grad_norm: scalar, mean over the batch of the per-sample L2 norm of the injected gradient (detached).
    t:         (B,) integer timesteps used.
    images:    logging images, each (B, H, W, 3) in [0, 1] (empty unless requested).
    """

    loss: Float[Tensor, ""]
    grad_norm: Float[Tensor, ""]
    t: Int[Tensor, "B"]
    images: dict[str, Tensor] = field(default_factory=dict)


# ---- stateless math ------------------------------------------------------------------------------------


def classifier_free_guidance(
    eps_cond: Float[Tensor, "B C H W"], eps_uncond: Float[Tensor, "B C H W"], scale: float
) -> Float[Tensor, "B C H W"]:
    """CFG (Ho & Salimans 2022), diffusers convention: eps_u + s·(eps_c − eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def perpendicular_component(
    x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]
) -> Float[Tensor, "B C H W"]:
    """Per-sample component of x orthogonal to y: x − (<x, y> / ||y||²)·y (Perp-Neg, Armandpour et al. 2023)."""
    dot = (x * y).flatten(1).sum(-1)
    norm_sq = y.pow(2).flatten(1).sum(-1).clamp_min(1e-12)  # y = 0: nothing to project out
    return x - (dot / norm_sq).view(-1, *([1] * (x.dim() - 1))) * y


def perp_neg_guidance(
    eps_pos: Float[Tensor, "B C H W"],
    eps_uncond: Float[Tensor, "B C H W"],
    eps_neg: Float[Tensor, "B K C H W"],
    neg_weights: Float[Tensor, "B K"],
    scale: float,
) -> Float[Tensor, "B C H W"]:
    """Perp-Neg CFG: eps_u + s·(Δ_pos + Σ_k w_k·perp(Δ_neg_k, Δ_pos)), Δ = eps − eps_u.

    The weights follow REFERENCE.md / threestudio and are already negative (−(a·exp(−b·r) + c) ≤ 0), so this is
    the paper's eq. Δ_pos − Σ_k |w_k|·perp(Δ_neg_k, Δ_pos): each negative view is pushed away from, only along
    the direction orthogonal to the positive one.
    """
    delta_pos = eps_pos - eps_uncond
    combined = delta_pos
    for k in range(eps_neg.shape[1]):
        perp = perpendicular_component(eps_neg[:, k] - eps_uncond, delta_pos)
        combined = combined + neg_weights[:, k].view(-1, 1, 1, 1).to(perp) * perp
    return eps_uncond + scale * combined


def sds_gradient(
    eps_hat: Float[Tensor, "B C H W"],
    eps: Float[Tensor, "B C H W"],
    weight: Float[Tensor, "B 1 1 1"],
    clip: float | None = None,
) -> Float[Tensor, "B C H W"]:
    """DreamFusion eq. 3 without the U-Net Jacobian: w(t)·(eps_hat − eps), elementwise-clamped, NaN → 0."""
    grad = weight * (eps_hat - eps)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def injected_loss(x: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"]) -> Float[Tensor, ""]:
    """loss = 0.5·||x − sg(x − grad)||² / B, so that d loss / d x = grad / B (REFERENCE.md, "injection")."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


# ---- the guidance --------------------------------------------------------------------------------------


class SDSGuidance(nn.Module):
    """SDS guidance: `guidance(render, cameras, prompt_embeddings, step) -> GuidanceOutput`.

    The frozen denoiser is held in a one-element tuple (`self._frozen`), not as a registered submodule, so it
    never appears in the state_dict / parameters() of a system that owns this guidance (checkpoints stay small
    and optimizers never see it). It stays on the device it was loaded on (`cfg.device`); `.to()` on a parent
    module does not move it.

    Args:
        cfg: SDSConfig.
        denoiser: a ready Denoiser (the oracle, a test model); None = load cfg.pretrained_model_name_or_path.
        max_steps: the run's training steps (for annealed timestep schedules).
        generator: optional torch.Generator for t and noise (reproducible runs and tests). Per call, t is drawn
            first (TimestepSampler.sample), then the noise (torch.randn of x0's shape, float32).
    """

    def __init__(
        self,
        cfg: SDSConfig,
        denoiser: Denoiser | None = None,
        max_steps: int = 10000,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if denoiser is None:
            denoiser = _load_denoiser(cfg)
        self._frozen: tuple[Denoiser] = (denoiser.requires_grad_(False).eval(),)
        self.timesteps = TimestepSampler(cfg.timestep, denoiser.schedule.num_train_timesteps, max_steps)
        self.generator = generator

    @property
    def denoiser(self) -> Denoiser:
        return self._frozen[0]

    def model_input(self, render: RenderOutput) -> Float[Tensor, "B C h w"]:
        """The render in the denoiser's x0 space (differentiable w.r.t. the render)."""
        if self.cfg.input == "latent":
            if self.denoiser.space != "latent":
                raise ValueError("SDSConfig.input='latent' needs a latent-space denoiser; use input='rgb'")
            # Render-as-latent: [rgb ‖ opacity] in [-1, 1] at the render's own resolution.
            return torch.cat([render.rgb, render.opacity], dim=-1).permute(0, 3, 1, 2) * 2.0 - 1.0
        images = render.rgb.permute(0, 3, 1, 2)
        size = self.denoiser.image_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return self.denoiser.encode(images)

    def _background(self, render: RenderOutput, x0: Tensor) -> Tensor | None:
        """The renderer's background, resized like the render when the denoiser works on pixels."""
        background = render.extras.get("background")
        if background is None or self.denoiser.space != "pixel" or background.shape[1:3] == x0.shape[-2:]:
            return background
        resized = F.interpolate(background.permute(0, 3, 1, 2), size=x0.shape[-2:], mode="bilinear")
        return resized.permute(0, 2, 3, 1)

    def predict_guided_eps(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        cameras: Cameras,
        prompt_embeddings,
        context: DenoiserContext,
    ) -> Float[Tensor, "B C h w"]:
        """eps_hat with CFG (2 passes) or Perp-Neg (4 passes), batched into ONE denoiser call, no grad."""
        den = self.denoiser
        if self.cfg.use_perp_neg:
            embeddings, neg_weights = prompt_embeddings.perp_neg_embeddings(
                cameras.elevation, cameras.azimuth
            )
            passes = embeddings.shape[1]  # [positive, uncond, neg_a, neg_b]
            hidden = embeddings.transpose(0, 1).flatten(0, 1)  # pass-major: (4B, L, D)
        else:
            cond, uncond = prompt_embeddings.text_embeddings(cameras.elevation, cameras.azimuth)
            if self.cfg.guidance_scale == 1.0:
                # eps_u + 1·(eps_c − eps_u) = eps_c exactly: the unconditional pass would be wasted work.
                with torch.no_grad():
                    return den.predict_eps(x_t, t, cond.to(x_t.device), context).float()
            passes, hidden = 2, torch.cat([cond, uncond], dim=0)
        with torch.no_grad():
            eps_all = den.predict_eps(
                x_t.repeat(passes, 1, 1, 1), t.repeat(passes), hidden.to(x_t.device), context.repeat(passes)
            )
        eps_all = eps_all.float().unflatten(0, (passes, x_t.shape[0]))
        if self.cfg.use_perp_neg:
            return perp_neg_guidance(
                eps_all[0],
                eps_all[1],
                eps_all[2:].transpose(0, 1),
                neg_weights.to(x_t.device),
                self.cfg.guidance_scale,
            )
        return classifier_free_guidance(eps_all[0], eps_all[1], self.cfg.guidance_scale)

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        prompt_embeddings,
        step: int,
        return_images: bool = False,
    ) -> GuidanceOutput:
        """One SDS step on a batch of B renders.

        Args:
            render: rgb (B, H, W, 3) in [0, 1] (opacity too for input="latent"); gradients flow back into it.
            cameras: the B cameras (their elevation/azimuth pick the view-dependent embeddings).
            prompt_embeddings: distill.prompts.PromptEmbeddings (or anything with text_embeddings /
                perp_neg_embeddings of the same signatures).
            step: global training step (timestep annealing).
        Returns:
            GuidanceOutput; loss.backward() puts grad / B on x0 = model_input(render) (see injected_loss).
        """
        if len(cameras) != render.batch_size:
            raise ValueError(
                f"{len(cameras)} cameras for {render.batch_size} renders; pass one camera per render"
            )
        x0 = self.model_input(render)
        batch, device = x0.shape[0], x0.device
        t = self.timesteps.sample(batch, step, device=device, generator=self.generator)
        gen_device = self.generator.device if self.generator is not None else device
        noise = torch.randn(x0.shape, generator=self.generator, device=gen_device).to(device)
        schedule = self.denoiser.schedule
        x0_detached = x0.detach().float()
        x_t = schedule.add_noise(x0_detached, noise, t)
        context = DenoiserContext(cameras=cameras, background=self._background(render, x0))
        eps_hat = self.predict_guided_eps(x_t, t, cameras, prompt_embeddings, context)
        weight = sds_weight(self.cfg.weighting, schedule.alpha_bar(t, x_t))
        grad = sds_gradient(eps_hat, noise, weight, self.cfg.grad_clip)
        loss = injected_loss(x0, grad.to(x0.dtype))
        images = {}
        if return_images or self.cfg.return_images:
            with torch.no_grad():
                x0_pred = schedule.eps_to_x0(x_t, eps_hat, t)
                images["x0"] = self.denoiser.decode(x0_pred.to(x0.dtype)).clamp(0.0, 1.0).permute(0, 2, 3, 1)
        grad_norm = grad.detach().flatten(1).norm(dim=-1).mean()
        return GuidanceOutput(loss=loss, grad_norm=grad_norm, t=t, images=images)


def _load_denoiser(cfg: SDSConfig) -> Denoiser:
    """The diffusers denoiser named by cfg (imported lazily: the oracle path needs no diffusers weights)."""
    if cfg.pretrained_model_name_or_path is None:
        raise ValueError(
            "SDSGuidance needs a denoiser: set SDSConfig.pretrained_model_name_or_path or pass one"
        )
    from distill.unet_denoiser import DiffusersDenoiser

    return DiffusersDenoiser.from_pretrained(cfg.model_config())
