"""MVDreamDenoiser: MVDream (Shi et al. 2023) behind the Denoiser interface — four views of one object denoised
jointly, each conditioned on its camera.

The UNet is a plain diffusers UNet2DConditionModel (SD 2.1-base + `class_embed_type="projection"` with a
16-dim input: MVDream's camera MLP, see mvdream_convert.py) with MultiViewAttnProcessor on its self-attention
layers; the camera goes in as `class_labels`. Batches are object-major: entries [o·V, (o+1)·V) are the V views
of object o, all at one t.

Camera convention (verified): threestudio's MVDream guidance (bytedance/MVDream-threestudio and
hanwenzhu/MVDream-threestudio, threestudio/models/guidance/multiview_diffusion_guidance.py,
`MultiviewDiffusionGuidance.get_camera_cond`, camera_condition_type "rotation") feeds threestudio's c2w
(world z-up, OpenGL camera axes — ours, geometry/cameras.py) UNCHANGED ("the input of threestudio is already
blender coordinate system"; its convert_opengl_to_blender call is commented out) through
bytedance/MVDream mvdream/camera_utils.py `normalize_camera`: translation / (‖translation‖ + 1e-8), then the
4×4 flattened row-major to 16 numbers. MVDream's own sampler builds the same thing: a y-up look-at c2w turned
z-up by `convert_opengl_to_blender` (camera_utils.py `get_camera`, blender_coord=True).

Weights (`pretrained_model_name_or_path`):
(a) a diffusers folder / hub id whose unet/ is a UNet2DConditionModel (what mvdream_convert writes);
(b) the port layout (ashawkey/mvdream-sd2.1-diffusers, the default): unet/ is the custom MultiViewUNetModel,
    converted on load; vae/ scheduler/ tokenizer/ text_encoder/ are standard;
(c) an original single file (sd-v2.1-base-4view.pt, .ckpt, .safetensors): UNet and VAE converted from it, the
    schedule is MVDream's (sd-v2-base.yaml). A file holds no tokenizer, so the text prompt follows
    `single_file_config` (also the UNet's architecture, when not the published one) or else
    stabilityai/stable-diffusion-2-1-base — MVDream's text encoder is SD 2.1's frozen OpenCLIP ViT-H
    (cond_stage_config freeze: True; ashawkey's converter takes it from stabilityai/stable-diffusion-2-1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from jaxtyping import Float, Int
from torch import Tensor

from distill.conditions.base import Conditioning
from distill.denoisers.diffusers_unet import DiffusersDenoiser
from distill.denoisers.mv_attention import use_multiview_attention
from distill.denoisers.mvdream_convert import PORT_CLASS_NAME, load_original, load_port_unet
from distill.models import (
    MISSING_ERRORS,
    ModelLoadConfig,
    apply_memory_options,
    check_source,
    freeze,
    load_components,
    not_found_error,
)
from distill.schedule import NoiseSchedule
from distill3d.errors import ConfigError

MVDREAM_TEXT_ENCODER = "stabilityai/stable-diffusion-2-1-base"
_CAMERA_DIM = 16


def mvdream_camera(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 16"]:
    """MVDream's camera input: c2w with its translation scaled to unit length, flattened row-major.

    Takes our (= threestudio's) c2w as is; see the module docstring for where the convention comes from.
    """
    translation = c2w[:, :3, 3]
    unit = translation / (translation.norm(dim=-1, keepdim=True) + 1e-8)
    normalized = torch.cat([torch.cat([c2w[:, :3, :3], unit[:, :, None]], dim=2), c2w[:, 3:]], dim=1)
    return normalized.reshape(-1, 16)


@dataclass
class MVDreamConfig(ModelLoadConfig):
    """ModelLoadConfig (where the weights are, dtype, device, ...) + how many views form one object.

    pretrained_model_name_or_path: layouts (a) (b) (c) of the module docstring.
    single_file_config: for a single file, a folder (either layout) giving the UNet architecture and the text
        encoder; None = the published sd-v2.1-base-4view architecture and SD 2.1-base's text encoder.
    num_views: consecutive batch entries denoised jointly (MVDream was trained with 4).
    """

    pretrained_model_name_or_path: str = "ashawkey/mvdream-sd2.1-diffusers"
    num_views: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_views < 1:
            raise ConfigError(f"num_views={self.num_views}: it must be at least 1 (MVDream uses 4).")


def _local_folder(cfg: ModelLoadConfig) -> Path:
    """The model folder on disk: the path itself, or the hub snapshot of its json configs (no weights yet)."""
    source = cfg.pretrained_model_name_or_path
    if os.path.isdir(source):
        return Path(source)
    try:
        return Path(
            snapshot_download(
                source,
                revision=cfg.revision,
                local_files_only=cfg.offline,
                allow_patterns=["*.json", "*.txt"],
            )
        )
    except MISSING_ERRORS as exc:
        raise not_found_error(cfg, "unet config", exc) from None


def _port_unet_dir(cfg: ModelLoadConfig, folder: Path) -> Path:
    """The port's unet/ folder with its weights (downloaded for a hub id)."""
    if os.path.isdir(cfg.pretrained_model_name_or_path):
        return folder
    try:
        return Path(
            snapshot_download(
                cfg.pretrained_model_name_or_path,
                revision=cfg.revision,
                local_files_only=cfg.offline,
                allow_patterns=["unet/*", "model_index.json"],
            )
        )
    except MISSING_ERRORS as exc:
        raise not_found_error(cfg, "unet", exc) from None


class MVDreamDenoiser(DiffusersDenoiser):
    """Frozen MVDream: `_target_: distill.denoisers.mvdream.MVDreamDenoiser` with an MVDreamConfig.

    predict_eps reads the camera from `cond.extras["camera"]` (B, 16) when a condition supplies it, else
    computes it from `cond.cameras.c2w` with `mvdream_camera`.
    """

    Config = MVDreamConfig

    def __init__(self, unet, schedule: NoiseSchedule, vae=None, num_views: int = 4) -> None:
        super().__init__(unet, schedule, vae=vae)
        if unet.config.class_embed_type != "projection" or (
            unet.config.projection_class_embeddings_input_dim != _CAMERA_DIM
        ):
            raise ConfigError(
                "this UNet has no 16-dim camera embedding (class_embed_type 'projection'), so it is not MVDream. "
                "Fix: load an MVDream model (ashawkey/mvdream-sd2.1-diffusers, sd-v2.1-base-4view.pt, or a "
                "folder written by `python -m distill.denoisers.mvdream_convert`)."
            )
        self.num_views = num_views
        use_multiview_attention(self.unet, num_views)

    @classmethod
    def from_config(cls, cfg: MVDreamConfig, run=None) -> MVDreamDenoiser:
        return cls.from_pretrained(cfg)

    @classmethod
    def from_pretrained(cls, cfg: ModelLoadConfig) -> MVDreamDenoiser:
        """Load layout (a), (b) or (c); the parts are frozen, in cfg's dtype, on cfg's device."""
        num_views = getattr(cfg, "num_views", 4)
        check_source(cfg)
        source = cfg.pretrained_model_name_or_path
        if os.path.isfile(source):  # (c) an original checkpoint
            unet, vae, scheduler = load_original(source, cfg.single_file_config)
            # The file has no tokenizer: text prompts follow the config folder or SD 2.1-base (same encoder).
            text_cfg = dataclasses.replace(
                cfg, pretrained_model_name_or_path=cfg.single_file_config or MVDREAM_TEXT_ENCODER
            )
        else:
            folder = _local_folder(cfg)
            unet_json = folder / "unet" / "config.json"
            class_name = json.loads(unet_json.read_text()).get("_class_name") if unet_json.is_file() else None
            if class_name != PORT_CLASS_NAME:  # (a) a standard diffusers folder: the usual loader does it all
                parts = load_components(cfg, ("unet", "vae", "scheduler"))
                denoiser = cls(
                    parts.unet, NoiseSchedule.from_scheduler(parts.scheduler), parts.vae, num_views
                )
                denoiser.load_config = cfg
                denoiser.offloaded = bool(parts.offload_hooks)
                return denoiser
            # (b) ashawkey's port: its custom UNet converted on the fly; vae/scheduler loaded on the CPU here,
            # placed below together with the UNet (so offload hooks are chained once, over both).
            unet = load_port_unet(_port_unet_dir(cfg, folder), cfg.variant)
            cpu_cfg = dataclasses.replace(
                cfg, device="cpu", cpu_offload=False, enable_attention_slicing=False, enable_vae_slicing=False
            )
            parts = load_components(cpu_cfg, ("vae", "scheduler"))
            vae, scheduler, text_cfg = parts.vae, parts.scheduler, cfg
        placed = {"unet": freeze(unet.to(cfg.dtype)), "vae": freeze(vae.to(cfg.dtype))}
        # Device placement / slicing / offload exactly as distill.models does for the parts it loads itself.
        hooks = apply_memory_options(cfg, placed)
        denoiser = cls(placed["unet"], NoiseSchedule.from_scheduler(scheduler), placed["vae"], num_views)
        denoiser.load_config = text_cfg
        denoiser.offloaded = bool(hooks)
        return denoiser

    def predict_eps(
        self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], cond: Conditioning
    ) -> Float[Tensor, "B C h w"]:
        """eps_hat for B = objects × num_views views (object-major), each view conditioned on its camera."""
        batch = x_t.shape[0]
        if batch % self.num_views:
            raise ConfigError(
                f"MVDream denoises {self.num_views} views of an object together, but got a batch of {batch}. "
                f"Fix: make the camera batch size a multiple of {self.num_views} (data.batch_size / n_view)."
            )
        camera = cond.extras.get("camera")
        if camera is None:
            if cond.cameras is None:
                raise ConfigError(
                    "MVDream needs each view's camera, but the conditioning carries none. Fix: use a condition "
                    "that passes cameras (TextPrompt does) or extras['camera']."
                )
            camera = mvdream_camera(cond.cameras.c2w)
        dtype = self.unet.dtype
        out = self.unet(
            x_t.to(dtype),
            t,
            encoder_hidden_states=cond.embeddings.to(x_t.device, dtype),
            class_labels=camera.to(x_t.device, dtype),
        ).sample
        return self.schedule.to_eps(out.to(x_t.dtype), x_t, t)
