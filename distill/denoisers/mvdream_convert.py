"""MVDream's weights in diffusers' layout: key conversion, the UNet config, and a command that writes a folder.

MVDream's UNet (bytedance/MVDream, `MultiViewUNetModel` in mvdream/ldm/modules/diffusionmodules/openaimodel.py)
is the SD 2.1-base UNet plus `camera_embed` = Linear(16, 1280) → SiLU → Linear(1280, 1280), whose output is
ADDED to the time embedding, plus self-attention across the views. diffusers' plain `UNet2DConditionModel`
with `class_embed_type="projection"` and `projection_class_embeddings_input_dim=16` has exactly that layer
(`class_embedding = TimestepEmbedding(16, 1280)`, fed raw — not through `time_proj` — from `class_labels` and
added to the time embedding: `get_class_embed` and `forward` in diffusers 0.42.1's unet_2d_condition.py), so no
custom UNet class is needed: `camera_embed.0/2.*` → `class_embedding.linear_1/2.*`, and the rest of the keys
go through diffusers' own `convert_ldm_unet_checkpoint`. The cross-view attention is a processor
(mv_attention.py), it has no weights.

Two sources hold MVDream's UNet in the original (LDM) key names:
- the original checkpoint `sd-v2.1-base-4view.pt`: a bare state dict (bytedance/MVDream mvdream/model_zoo.py
  `build_model` calls `model.load_state_dict(torch.load(ckpt))`) with `model.diffusion_model.*` (UNet),
  `first_stage_model.*` (VAE), `cond_stage_model.*` (OpenCLIP) and the schedule buffers;
- the diffusers port `ashawkey/mvdream-sd2.1-diffusers`: `unet/` holds the custom `MultiViewUNetModel` of
  ashawkey/mvdream_diffusers (mvdream/models.py; model_index.json names it ["mv_unet", "MultiViewUNetModel"]),
  whose config.json holds the LDM constructor arguments (model_channels, channel_mult, attention_resolutions,
  num_res_blocks, num_head_channels, transformer_depth, context_dim, camera_dim, ...) and whose weights carry
  the LDM names without the `model.diffusion_model.` prefix (its convert_mvdream_to_diffusers.py strips it).

Command (SRC: an original .pt/.ckpt/.safetensors, or the port folder; the output is a diffusers folder that
`MVDreamDenoiser` loads like any other):

    python -m distill.denoisers.mvdream_convert SRC OUT_DIR [--config FOLDER] [--text-encoder FOLDER_OR_ID]

The key mapping is hand-written only for the camera embedding; everything else is diffusers' converters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    LDM_UNET_KEY,
    LDM_VAE_DEFAULT_SCALING_FACTOR,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from torch import Tensor

from distill.models import WeightsNotFoundError
from distill3d.errors import UserError

PORT_CLASS_NAME = "MultiViewUNetModel"
LDM_VAE_KEY = "first_stage_model."
# The constructor arguments of the published 4-view model (bytedance/MVDream mvdream/configs/sd-v2-base.yaml,
# unet_config.params; the port's unet/config.json holds the same minus legacy/use_*_transformer).
MVDREAM_SD21_PARAMS: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "use_checkpoint": False,
    "camera_dim": 16,
}
# sd-v2-base.yaml: linear_start/linear_end/timesteps, parameterization eps. LDM's "linear" schedule
# (linspace of sqrt(beta), squared) is diffusers' "scaled_linear".
MVDREAM_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose keys or shapes are not those of the MVDream architecture it is loaded into."""


def unet_config_from_mvdream(params: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config for MultiViewUNetModel constructor arguments (LDM names).

    Written here rather than with diffusers' create_unet_diffusers_config_from_ldm: that one infers the sample
    size from the checkpoint's model type (MVDream is none it knows) and has no camera embedding.
    """
    mult, width = list(params["channel_mult"]), int(params["model_channels"])
    head_channels = int(params.get("num_head_channels", -1))
    if head_channels <= 0:
        raise CheckpointMismatchError(
            "the MVDream UNet config has no num_head_channels; Fix: use MVDream's config.json (num_head_channels: 64)"
        )
    attn = set(params["attention_resolutions"])
    down, up, res = [], [], 1
    for level in range(len(mult)):  # LDM's ds doubles after every level but the last
        down.append("CrossAttnDownBlock2D" if res in attn else "DownBlock2D")
        res = res * 2 if level < len(mult) - 1 else res
    for _level in range(len(mult)):
        up.append("CrossAttnUpBlock2D" if res in attn else "UpBlock2D")
        res //= 2
    config: dict[str, Any] = {
        "sample_size": int(params.get("image_size", 32)),
        "in_channels": int(params["in_channels"]),
        "out_channels": int(params["out_channels"]),
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [width * m for m in mult],
        "layers_per_block": int(params["num_res_blocks"]),
        "cross_attention_dim": int(params["context_dim"]),
        # diffusers' legacy name: for SD 2.x this field holds the number of HEADS per level (channels / 64).
        "attention_head_dim": [width * m // head_channels for m in mult],
        "use_linear_projection": True,  # SpatialTransformer3D's proj_in/proj_out are nn.Linear
        "transformer_layers_per_block": int(params.get("transformer_depth", 1)),
    }
    if params.get("camera_dim"):
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(params["camera_dim"])
    return config


MVDREAM_UNET_CONFIG = unet_config_from_mvdream(MVDREAM_SD21_PARAMS)


def _expected(model_cls: type, config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """Key → shape of a freshly built model, on the meta device (no memory for the weights)."""
    with torch.device("meta"):
        model = model_cls.from_config(dict(config))
    return {k: v.shape for k, v in model.state_dict().items()}


def _check(
    what: str, got: Mapping[str, Tensor], expected: Mapping[str, torch.Size], leftover: list[str]
) -> None:
    """Strict: every expected key present with its shape, nothing of the source left unmapped."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if tuple(got[k].shape) != tuple(expected[k]))
    problems = [
        f"{name} {len(keys)} (e.g. {', '.join(keys[:3])})"
        for name, keys in (
            ("missing", missing),
            ("unexpected", unexpected + leftover),
            ("wrong shape", wrong),
        )
        if keys
    ]
    if problems:
        raise CheckpointMismatchError(
            f"the {what} does not match the MVDream architecture: {'; '.join(problems)}. Fix: use MVDream's "
            "original sd-v2.1-base-4view checkpoint or its diffusers port, with the matching config "
            "(single_file_config / --config naming a folder of the same architecture)."
        )


def convert_mvdream_unet(
    ldm_state: Mapping[str, Tensor], config: Mapping[str, Any], prefix: str = LDM_UNET_KEY
) -> dict[str, Tensor]:
    """MVDream UNet weights in LDM names (keys starting with `prefix`) → UNet2DConditionModel keys, strictly.

    Raises CheckpointMismatchError when a key is missing, left over or of the wrong shape for `config`.
    """
    unet_state = {LDM_UNET_KEY + k[len(prefix) :]: v for k, v in ldm_state.items() if k.startswith(prefix)}
    if not unet_state:
        raise CheckpointMismatchError(
            f"no MVDream UNet weights (keys '{prefix}*') in the checkpoint. Fix: pass MVDream's "
            "sd-v2.1-base-4view.pt or the unet/ weights of its diffusers port."
        )
    # diffusers' converter, told nothing of a class embedding; the camera MLP is mapped below.
    plain = {k: v for k, v in config.items() if k not in ("class_embed_type",)}
    out = convert_ldm_unet_checkpoint(unet_state, plain)
    camera = LDM_UNET_KEY + "camera_embed."
    for ldm_idx, linear in (("0", "linear_1"), ("2", "linear_2")):
        for kind in ("weight", "bias"):
            if camera + f"{ldm_idx}.{kind}" in unet_state:
                out[f"class_embedding.{linear}.{kind}"] = unet_state[camera + f"{ldm_idx}.{kind}"]
    # The converters only rename, so a source tensor that no output entry holds was not mapped.
    used = {id(v) for v in out.values()}
    leftover = sorted(k[len(LDM_UNET_KEY) :] for k, v in unet_state.items() if id(v) not in used)
    _check("UNet checkpoint", out, _expected(UNet2DConditionModel, config), leftover)
    return out


def vae_config_from_ldm(vae_state: Mapping[str, Tensor]) -> dict[str, Any]:
    """AutoencoderKL config read off the LDM VAE's weight shapes (ch, ch_mult, num_res_blocks, z_channels)."""
    try:
        levels = 1 + max(int(k.split(".")[2]) for k in vae_state if k.startswith("encoder.down."))
        blocks = 1 + max(int(k.split(".")[4]) for k in vae_state if k.startswith("encoder.down.0.block."))
        widths = [int(vae_state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)]
        in_ch = int(vae_state["encoder.conv_in.weight"].shape[1])
        out_ch = int(vae_state["decoder.conv_out.weight"].shape[0])
        latent = int(vae_state["decoder.conv_in.weight"].shape[1])
    except (KeyError, ValueError, IndexError):
        raise CheckpointMismatchError(
            f"the checkpoint has no complete VAE ('{LDM_VAE_KEY}*' keys). Fix: pass MVDream's full "
            "sd-v2.1-base-4view checkpoint (it holds the SD 2.1 VAE)."
        ) from None
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "latent_channels": latent,
        "block_out_channels": widths,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": blocks,
        "sample_size": 256,  # MVDream renders 256² views (sd-v2-base.yaml: ddconfig.resolution)
        "scaling_factor": LDM_VAE_DEFAULT_SCALING_FACTOR,  # sd-v2-base.yaml: scale_factor 0.18215
    }


def convert_mvdream_vae(checkpoint: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The `first_stage_model.*` VAE of an original checkpoint → (AutoencoderKL state dict, its config)."""
    vae_state = {k[len(LDM_VAE_KEY) :]: v for k, v in checkpoint.items() if k.startswith(LDM_VAE_KEY)}
    config = vae_config_from_ldm(vae_state)
    out = convert_ldm_vae_checkpoint({LDM_VAE_KEY + k: v for k, v in vae_state.items()}, config)
    # The VAE converter reshapes attention weights (new tensors), so count instead: renaming is one-to-one.
    leftover = [f"{len(vae_state) - len(out)} source keys"] if len(out) < len(vae_state) else []
    _check("VAE checkpoint", out, _expected(AutoencoderKL, config), leftover)
    return out, config


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """An original .pt/.ckpt (torch, weights only) or .safetensors file as a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Could not load '{path}': no such checkpoint file. Fix: download sd-v2.1-base-4view.pt "
            "(`hf download MVDream/MVDream sd-v2.1-base-4view.pt`) or pass the diffusers port folder."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # mmap: the 5 GB original is paged in on use rather than read whole
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch/safetensors raise many types for a truncated or foreign file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointMismatchError(
            f"'{path}' is not a readable checkpoint ({type(exc).__name__}: {first}). Fix: re-download it."
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # Lightning-style wrapper; MVDream's own file is a bare state dict
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"'{path}' holds a {type(state).__name__}, not a state dict.")
    return dict(state)


def read_unet_params(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(class name, config) of <folder>/unet/config.json, or of <folder>/config.json if that is a unet folder."""
    folder = Path(folder)
    for candidate in (folder / "unet" / "config.json", folder / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            return str(config.get("_class_name", "")), config
    raise WeightsNotFoundError(
        f"Could not load the unet of '{folder}': it has no unet/config.json. Fix: point it at a diffusers "
        "folder (unet/ vae/ scheduler/ ...) such as ashawkey/mvdream-sd2.1-diffusers."
    )


def unet_config_of(folder: str | Path) -> dict[str, Any]:
    """The UNet2DConditionModel config of a folder in either layout (port: converted from its LDM arguments)."""
    name, config = read_unet_params(folder)
    if name == PORT_CLASS_NAME:
        return unet_config_from_mvdream(config)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_unet(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> UNet2DConditionModel:
    """UNet2DConditionModel of `config` holding the converted `state` (built on meta, then assigned)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(config))
    unet.load_state_dict(dict(state), strict=True, assign=True)
    return unet.eval()


def build_vae(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> AutoencoderKL:
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(config))
    vae.load_state_dict(dict(state), strict=True, assign=True)
    return vae.eval()


def load_original(path: str | Path, config_folder: str | Path | None = None):
    """(unet, vae, scheduler) from an original single-file checkpoint; the UNet architecture is the published
    one unless `config_folder` (a folder of either layout) names another."""
    config = MVDREAM_UNET_CONFIG if config_folder is None else unet_config_of(config_folder)
    checkpoint = read_checkpoint(path)
    unet = build_unet(convert_mvdream_unet(checkpoint, config), config)
    vae_state, vae_config = convert_mvdream_vae(checkpoint)
    return unet, build_vae(vae_state, vae_config), DDIMScheduler.from_config(MVDREAM_SCHEDULER)


def port_weights_file(unet_dir: Path, variant: str | None = None) -> Path:
    """The weights of a port's unet/ folder: diffusers' names, safetensors first, the variant if given."""
    infix = f".{variant}" if variant else ""
    for name in (f"diffusion_pytorch_model{infix}.safetensors", f"diffusion_pytorch_model{infix}.bin"):
        if (unet_dir / name).is_file():
            return unet_dir / name
    raise WeightsNotFoundError(
        f"Could not load the unet of '{unet_dir.parent}': unet/ has no diffusion_pytorch_model{infix}"
        ".safetensors/.bin. Fix: download the whole port (`hf download ashawkey/mvdream-sd2.1-diffusers`)."
    )


def load_port_unet(folder: str | Path, variant: str | None = None) -> UNet2DConditionModel:
    """The port's custom MultiViewUNetModel (config.json + LDM-named weights) as a UNet2DConditionModel."""
    folder = Path(folder)
    _, params = read_unet_params(folder)
    config = unet_config_from_mvdream(params)
    state = read_checkpoint(port_weights_file(folder / "unet", variant))
    return build_unet(convert_mvdream_unet(state, config, prefix=""), config)


def _save_text_parts(source: str, dest: Path) -> list[str]:
    """Copy tokenizer/ and text_encoder/ (file copies for a folder, a load + save for a hub id)."""
    if os.path.isdir(source):
        for name in ("tokenizer", "text_encoder"):
            if not (Path(source) / name).is_dir():
                raise WeightsNotFoundError(
                    f"'{source}' has no {name}/ folder. Fix: pass --text-encoder a diffusers folder with one."
                )
            shutil.copytree(Path(source) / name, dest / name)
    else:
        from distill.models import ModelLoadConfig, load_components

        parts = load_components(ModelLoadConfig(source, device="cpu"), ("tokenizer", "text_encoder"))
        parts.tokenizer.save_pretrained(dest / "tokenizer")
        parts.text_encoder.save_pretrained(dest / "text_encoder")
    return ["tokenizer", "text_encoder"]


def convert(
    src: str | Path, out_dir: str | Path, config: str | None = None, text_encoder: str | None = None
) -> Path:
    """Write a diffusers MVDream folder (unet as UNet2DConditionModel, vae, scheduler [, text parts]) atomically.

    src: an original checkpoint file or the port folder. text_encoder: where tokenizer/ and text_encoder/ come
    from (default: src itself for a folder; none for a checkpoint file — MVDream's text encoder is SD 2.1's
    frozen OpenCLIP, so `stabilityai/stable-diffusion-2-1-base` is the usual choice).
    """
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists():
        raise UserError(f"'{out_dir}' already exists. Fix: remove it or choose another output folder.")
    if src.is_dir():
        unet = load_port_unet(src)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
        scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler")
        text_encoder = text_encoder if text_encoder is not None else str(src)
    else:
        unet, vae, scheduler = load_original(src, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:  # everything into a sibling temp folder, renamed into place only once complete
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        scheduler.save_pretrained(tmp / "scheduler")
        parts = _save_text_parts(text_encoder, tmp) if text_encoder is not None else []
        index = {
            "_class_name": "MVDreamPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", type(scheduler).__name__],
        }
        if parts:
            index.update(
                {
                    "text_encoder": ["transformers", "CLIPTextModel"],
                    "tokenizer": ["transformers", "CLIPTokenizer"],
                }
            )
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill.denoisers.mvdream_convert",
        description="Convert MVDream (original .pt/.ckpt/.safetensors, or the ashawkey diffusers port folder) "
        "into a diffusers folder whose unet is a plain UNet2DConditionModel.",
    )
    parser.add_argument("src", help="sd-v2.1-base-4view.pt (or .ckpt/.safetensors), or the port folder")
    parser.add_argument("out_dir", help="output folder (must not exist; written atomically)")
    parser.add_argument(
        "--config", help="folder whose unet/config.json gives the architecture of a checkpoint file"
    )
    parser.add_argument("--text-encoder", help="folder or hub id to take tokenizer/ and text_encoder/ from")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.out_dir, args.config, args.text_encoder)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
