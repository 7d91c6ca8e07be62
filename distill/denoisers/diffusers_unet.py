"""DiffusersDenoiser: a frozen diffusers UNet2DConditionModel behind the Denoiser interface.

Two spaces:
- latent (Stable Diffusion): x0 = (VAE-encoder mean of images in [-1, 1] − shift_factor) × scaling_factor.
- pixel (DeepFloyd IF stage I): x0 = images in [-1, 1]; the UNet's learned-variance half is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxtyping import Float, Int
from torch import Tensor

from distill.conditions.base import Conditioning
from distill.denoisers.base import Denoiser
from distill.models import ModelLoadConfig
from distill.schedule import NoiseSchedule

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel


def latent_image_size(unet_sample_size: int, vae_block_out_channels: tuple[int, ...] | list[int]) -> int:
    """RGB side length for a latent UNet: unet.sample_size × 2^(number of VAE downsamplings).

    The same rule diffusers' Stable Diffusion pipelines use for their default height (512 for SD 1.x/2.x-base).
    """
    return int(unet_sample_size) * 2 ** (len(vae_block_out_channels) - 1)


class DiffusersDenoiser(Denoiser):
    """Frozen diffusers UNet (+ VAE in latent mode).

    Args:
        unet: the UNet; runs in its own dtype (fp16 on GPU), inputs are cast to it and outputs cast back.
        schedule: NoiseSchedule of the model (prediction type → conversion to eps).
        vae: AutoencoderKL for latent models; None means pixel space (DeepFloyd IF).
        image_size: RGB resolution the model expects; None = derived from the configs (see class attributes).

    Attributes:
        space: "latent" when a VAE is given, else "pixel".
        image_size: latent: unet.sample_size × 2^(len(vae.block_out_channels) − 1); pixel: unet.sample_size.
        latent_size: unet.sample_size for latent models.

    Config (`system.guidance.denoiser`): a distill.models.ModelLoadConfig (hub id / folder / single file,
    revision, dtype, device, local_files_only, offload, component_classes for custom UNet classes).
    """

    Config = ModelLoadConfig

    def __init__(
        self,
        unet: UNet2DConditionModel,
        schedule: NoiseSchedule,
        vae: AutoencoderKL | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet.requires_grad_(False).eval()
        self.vae = None if vae is None else vae.requires_grad_(False).eval()
        self.schedule = schedule
        self.space = "latent" if vae is not None else "pixel"
        sample_size = unet.config.sample_size
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        if image_size is None:
            if vae is not None:
                image_size = latent_image_size(sample_size, vae.config.block_out_channels)
            else:
                image_size = int(sample_size)
        self.image_size = image_size
        self.latent_size = int(sample_size) if vae is not None else None
        self.load_config: ModelLoadConfig | None = None
        self.offloaded = False
        # IF-style UNets predict [eps ‖ variance]: twice the input channels; only the first half is eps.
        self.learned_variance = unet.config.out_channels == 2 * unet.config.in_channels

    @classmethod
    def from_config(cls, cfg: ModelLoadConfig, run=None) -> DiffusersDenoiser:
        return cls.from_pretrained(cfg)

    @classmethod
    def from_pretrained(cls, cfg: ModelLoadConfig) -> DiffusersDenoiser:
        """Load unet (+ vae if the model has one) and scheduler through distill.models.load_components."""
        from distill.models import listed_components, load_components

        # A model whose index lists no VAE is a pixel-space model (DeepFloyd IF).
        names = ("unet", "vae", "scheduler") if "vae" in listed_components(cfg) else ("unet", "scheduler")
        parts = load_components(cfg, names)
        if parts.unet is None or parts.scheduler is None:
            raise ValueError(
                f"{cfg.pretrained_model_name_or_path!r} has no unet/ or scheduler/ folder; "
                "point pretrained_model_name_or_path at a diffusers text-to-image model"
            )
        denoiser = cls(parts.unet, NoiseSchedule.from_scheduler(parts.scheduler), vae=parts.vae)
        denoiser.load_config = cfg
        denoiser.offloaded = bool(parts.offload_hooks)
        return denoiser

    def _apply(self, fn, recurse: bool = True):
        # accelerate's offload hooks own device placement: a parent module's .to(device) must not move us.
        return self if self.offloaded else super()._apply(fn, recurse)

    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] → x0. Differentiable (gradients flow through the frozen VAE encoder).

        Latent mode uses the posterior MEAN, not a sample: the SD VAE's posterior std is tiny, and a sample
        would add a second, pointless noise source to the SDS gradient and make it non-deterministic.
        """
        x = images * 2.0 - 1.0
        if self.vae is None:
            return x
        cfg = self.vae.config
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return ((mean - shift) * cfg.scaling_factor).to(images.dtype)

    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """x0 → images in [0, 1] (the inverse of encode, up to the VAE's reconstruction error)."""
        if self.vae is not None:
            cfg = self.vae.config
            shift = getattr(cfg, "shift_factor", None) or 0.0
            x0 = self.vae.decode((x0 / cfg.scaling_factor + shift).to(self.vae.dtype)).sample.to(x0.dtype)
        return ((x0 + 1.0) * 0.5).clamp(0.0, 1.0)

    def predict_eps(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], cond: Conditioning
    ) -> Float[Tensor, "B C h w"]:
        """eps_hat(x_t, t, y) in x_t's dtype; v-/x0-predicting models are converted via the schedule."""
        dtype = self.unet.dtype
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=cond.embeddings.to(x_t.device, dtype)).sample
        if self.learned_variance:
            out = out[:, : x_t.shape[1]]
        # Convert in x_t's (usually fp32) precision: 1/sqrt(ab) factors amplify fp16 rounding at large t.
        return self.schedule.to_eps(out.to(x_t.dtype), x_t, t)
