"""Multi-view score distillation (MVDream, Shi et al. 2023) on any denoiser that denoises an object's views jointly.

The batch is object-major: V consecutive renders are views of one object (data.n_view = V, azimuths 360/V apart),
noised at ONE timestep per object and denoised together (MVDream's UNet, the multi-view oracle). MVDream's own
form of the gradient is the x0-reconstruction loss (§3.3): with x0_hat the guided one-step reconstruction, CFG-
rescaled toward the non-guided one (distill.functional.rescale_x0_std),

    loss = ½·||x0 − sg(x0_hat)||² / B,      so  ∂loss/∂x0 = (x0 − x0_hat) / B
         = sqrt(1 − ab)/sqrt(ab) · (eps_hat − eps) / B    (the SDS gradient with w(t) = sqrt((1 − ab)/ab)).

recon_loss=false gives the plain SDS gradient w(t)·(eps_hat − eps) on the same joint batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from distill.conditions.base import Condition, ConditionBatch
from distill.functional import (
    classifier_free_guidance,
    injected_loss,
    rescale_x0_std,
    sds_gradient,
    sds_weight,
)
from distill.guidance.base import GuidanceOutput
from distill.guidance.sds import SDSConfig, SDSGuidance
from geometry.cameras import Cameras
from geometry.render_output import RenderOutput


@dataclass
class MultiViewSDSConfig(SDSConfig):
    """guidance_scale: MVDream's 50 (diffusers convention). recon_loss: the x0-reconstruction form (MVDream's
    default) instead of eps-SDS. recon_std_rescale: how far the guided x0's std is pulled toward the non-guided
    x0's (0.5 published; 0 = off)."""

    guidance_scale: float = 50.0
    recon_loss: bool = True
    recon_std_rescale: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recon_std_rescale <= 1.0:
            raise ValueError(f"recon_std_rescale={self.recon_std_rescale} must lie in [0, 1]")
        if self.use_perp_neg:
            raise ValueError(
                "use_perp_neg is a fix for view-unaware 2D models; multi-view guidance does not take it: "
                "set system.guidance.use_perp_neg=false"
            )


class MultiViewSDSGuidance(SDSGuidance):
    """`_target_: distill.guidance.multiview.MultiViewSDSGuidance`; views per object = denoiser.num_views."""

    Config = MultiViewSDSConfig
    cfg: MultiViewSDSConfig

    @property
    def num_views(self) -> int:
        return int(self.denoiser.num_views)

    def sample_t_and_noise(self, x0: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """One t per object, shared by its views (drawn first), then the noise."""
        views = self.num_views
        if x0.shape[0] % views:
            raise ValueError(
                f"{x0.shape[0]} renders are not whole {views}-view objects: set data.n_view={views} and a "
                f"data.batch_size that is a multiple of it"
            )
        objects = x0.shape[0] // views
        t = self.timesteps.sample(objects, step, device=x0.device, generator=self.generator)
        gen_device = self.generator.device if self.generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=self.generator, device=gen_device).to(x0.device)
        return t.repeat_interleave(views), noise

    def guided(
        self, x_t: Tensor, t: Int[Tensor, "B"], batch: ConditionBatch
    ) -> tuple[Float[Tensor, "B C h w"], Float[Tensor, "B C h w"]]:
        """(eps_hat with CFG, the CFG-rescaled x0 reconstruction), both passes in one denoiser call."""
        schedule = self.denoiser.schedule
        if self.cfg.guidance_scale == 1.0:  # eps_u + 1·(eps_c − eps_u) = eps_c: no unconditional pass
            eps_hat = self.predict_passes(x_t, t, batch, which=1)[0]
            return eps_hat, schedule.eps_to_x0(x_t, eps_hat, t)
        eps = self.predict_passes(x_t, t, batch)
        eps_hat = classifier_free_guidance(eps[0], eps[1], self.cfg.guidance_scale)
        x0_cfg, x0_cond = schedule.eps_to_x0(x_t, eps_hat, t), schedule.eps_to_x0(x_t, eps[0], t)
        return eps_hat, rescale_x0_std(x0_cfg, x0_cond, self.num_views, self.cfg.recon_std_rescale)

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        condition: Condition,
        step: int,
        return_images: bool = False,
        num_particles: int = 1,
    ) -> GuidanceOutput:
        """One multi-view step on B = objects × V renders; loss.backward() puts grad / B on model_input(render)."""
        x0, t, noise, x_t, batch = self.noised(render, cameras, condition, step)
        eps_hat, x0_hat = self.guided(x_t, t, batch)
        if self.cfg.recon_loss:
            grad = torch.nan_to_num(x0.detach().float() - x0_hat, nan=0.0, posinf=0.0, neginf=0.0)
            if self.cfg.grad_clip is not None:
                grad = grad.clamp(-self.cfg.grad_clip, self.cfg.grad_clip)
        else:
            weight = sds_weight(self.cfg.weighting, self.denoiser.schedule.alpha_bar(t, x_t))
            grad = sds_gradient(eps_hat, noise, weight, self.cfg.grad_clip)
        return self.output(
            {"guidance": injected_loss(x0, grad.to(x0.dtype))}, grad, t, x_t, eps_hat, return_images
        )
