"""Score Distillation Sampling (DreamFusion, Poole et al. 2022) on any Denoiser.

A render is mapped into the denoiser's x0 space, noised at a random timestep, denoised with classifier-free
guidance (optionally Perp-Neg), and the difference between predicted and true noise is injected as a gradient
on x0 (the U-Net Jacobian omitted, DreamFusion eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from distill.conditions.base import Condition, ConditionBatch
from distill.functional import (
    SDS_WEIGHTINGS,
    classifier_free_guidance,
    injected_loss,
    perp_neg_guidance,
    sds_gradient,
    sds_weight,
)
from distill.guidance.base import Guidance, GuidanceConfig, GuidanceOutput
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput

INPUTS = ("rgb", "latent")


@dataclass
class SDSConfig(GuidanceConfig):
    """Score distillation settings (validated on construction, before any weights load).

    weighting: w(t): "sds" = 1 − ab_t (DreamFusion), "uniform" = 1, "fantasia3d" = sqrt(ab_t)·(1 − ab_t).
    input: "rgb" = the render's RGB, resized to the model's image size and encoded (VAE for latent models);
        "latent" = render-as-latent (Latent-NeRF / Fantasia3D): [rgb ‖ opacity] mapped from [0, 1] to [-1, 1]
        is the 4-channel x0, resized to the model's latent size (no VAE).
    grad_clip: clamp each element of the SDS gradient to [−grad_clip, grad_clip] (None = no clipping).
        Elementwise rather than by norm so one outlier pixel cannot rescale the whole image's gradient.
    use_perp_neg: Perp-Neg view guidance (Armandpour et al. 2023): 4 U-Net passes per sample (also on when
        the prompt processor's use_perp_neg is).
    """

    weighting: str = "sds"
    input: str = "rgb"
    grad_clip: float | None = None
    use_perp_neg: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in SDS_WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r} is unknown; use one of {SDS_WEIGHTINGS}")
        if self.input not in INPUTS:
            raise ValueError(f"input={self.input!r} is unknown; use one of {INPUTS}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be positive, or None to disable it")


class SDSGuidance(Guidance):
    """SDS: `guidance(render, cameras, condition, step) -> GuidanceOutput` with losses {"guidance": ...}.

    Per call, t is drawn first (TimestepSampler.sample), then the noise (torch.randn of x0's shape, float32).
    """

    Config = SDSConfig
    cfg: SDSConfig

    def model_input(self, render: RenderOutput) -> Float[Tensor, "B C h w"]:
        """The render in the denoiser's x0 space (differentiable w.r.t. the render)."""
        den = self.denoiser
        if self.cfg.input == "latent":
            if den.space != "latent":
                raise ValueError("SDSConfig.input='latent' needs a latent-space denoiser; use input='rgb'")
            # Render-as-latent: [rgb ‖ opacity] in [-1, 1], at the model's latent size.
            x = torch.cat([render.rgb, render.opacity], dim=-1).permute(0, 3, 1, 2) * 2.0 - 1.0
            size = den.latent_size
        else:
            x = render.rgb.permute(0, 3, 1, 2)
            size = den.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x if self.cfg.input == "latent" else den.encode(x)

    def guided_eps(self, x_t: Tensor, t: Int[Tensor, "B"], batch: ConditionBatch) -> Float[Tensor, "B C h w"]:
        """eps_hat with CFG (2 passes) or Perp-Neg (4 passes), batched into ONE denoiser call, no grad."""
        if batch.negatives:
            eps = self.predict_passes(x_t, t, batch)  # [positive, uncond, neg_a, neg_b]
            return perp_neg_guidance(
                eps[0],
                eps[1],
                eps[2:].transpose(0, 1),
                batch.negative_weights.to(x_t.device),
                self.cfg.guidance_scale,
            )
        if self.cfg.guidance_scale == 1.0:
            # eps_u + 1·(eps_c − eps_u) = eps_c exactly: the unconditional pass would be wasted work.
            return self.predict_passes(x_t, t, batch, which=1)[0]
        eps = self.predict_passes(x_t, t, batch)
        return classifier_free_guidance(eps[0], eps[1], self.cfg.guidance_scale)

    @torch.no_grad()
    def preview(self, x_t: Tensor, eps_hat: Tensor, t: Tensor, dtype) -> dict[str, Tensor]:
        """{"x0": the one-step prediction from eps_hat as (B, H, W, 3) images in [0, 1]}, for logging."""
        x0_pred = self.denoiser.schedule.eps_to_x0(x_t, eps_hat, t)
        return {"x0": self.denoiser.decode(x0_pred.to(dtype)).clamp(0.0, 1.0).permute(0, 2, 3, 1)}

    def noised(self, render: RenderOutput, cameras: Cameras, condition: Condition, step: int):
        """(x0 = model_input(render), t, noise, x_t (detached), the ConditionBatch) for one step."""
        if len(cameras) != render.batch_size:
            raise ValueError(
                f"{len(cameras)} cameras for {render.batch_size} renders; pass one camera per render"
            )
        x0 = self.model_input(render)
        t, noise = self.sample_t_and_noise(x0, step)
        x_t = self.denoiser.schedule.add_noise(x0.detach().float(), noise, t)
        batch = condition(cameras, negatives=self.cfg.use_perp_neg).with_background(
            self.background_for(render, x0)
        )
        return x0, t, noise, x_t, batch

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        condition: Condition,
        step: int,
        return_images: bool = False,
        num_particles: int = 1,
    ) -> GuidanceOutput:
        """One SDS step on a batch of B renders; loss.backward() puts grad / B on x0 = model_input(render).

        num_particles: how many 3D models the renders come from; SDS treats every render on its own."""
        x0, t, noise, x_t, batch = self.noised(render, cameras, condition, step)
        schedule = self.denoiser.schedule
        eps_hat = self.guided_eps(x_t, t, batch)
        weight = sds_weight(self.cfg.weighting, schedule.alpha_bar(t, x_t))
        grad = sds_gradient(eps_hat, noise, weight, self.cfg.grad_clip)
        return self.output(
            {"guidance": injected_loss(x0, grad.to(x0.dtype))}, grad, t, x_t, eps_hat, return_images
        )

    def output(
        self,
        losses: dict[str, Tensor],
        grad: Tensor,
        t: Tensor,
        x_t: Tensor,
        eps_hat: Tensor,
        return_images: bool,
    ) -> GuidanceOutput:
        """The GuidanceOutput of a step: its losses, the injected gradient's mean norm, the x0 preview if asked."""
        images = {}
        if return_images or self.cfg.return_images:
            images = self.preview(x_t, eps_hat, t, x_t.dtype)
        grad_norm = grad.detach().flatten(1).norm(dim=-1).mean()
        return GuidanceOutput(losses=losses, grad_norm=grad_norm, t=t, images=images)
