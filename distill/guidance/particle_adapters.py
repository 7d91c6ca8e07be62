"""What VSD's particle model attaches to a diffusers UNet (ProlificDreamer, Wang et al. 2023): a peft LoRA adapter
and a camera embedding, so that eps_phi(x_t, t, c, y) is the pretrained UNet plus a few trainable weights.

Camera: MLP(flattened 4×4 camera-to-world) added to the UNet's timestep embedding,

    emb(t, c) = time_embedding(t) + Linear(D, D)(SiLU(Linear(16, D)(vec(c2w)))),

through a forward hook on `unet.time_embedding` that adds it only inside `with embedding.cameras(c2w):`.
LoRA: an adapter named "particle", off except inside the particle model's passes (`adapters_as`); files in peft's
layout (adapter_config.json + adapter_model.safetensors) plus camera_embedding.safetensors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from jaxtyping import Float
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from distill3d.errors import InputFileError
from distill3d.files import atomic_target

ADAPTER = "particle"  # the peft adapter name inside the pretrained UNet
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # peft's file names
CAMERA_WEIGHTS = "camera_embedding.safetensors"
# PeftModel.save_pretrained prefixes its keys with this; ours do too, so PeftModel.from_pretrained(unet, folder)
# reads the folder as well (set_peft_model_state_dict strips it again for a bare UNet).
PEFT_PREFIX = "base_model.model."


# ---- camera embedding ----------------------------------------------------------------------------------------
def time_embedding_width(unet: nn.Module) -> int:
    """D, the width of a diffusers UNet's timestep embedding (1280 for SD 2.1: 4 × its first block width)."""
    return int(unet.time_embedding.linear_2.out_features)


class CameraEmbedding(nn.Module):
    """16 → D → D MLP of the flattened c2w, added to a UNet's time embedding while cameras are set."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width))
        # Zero output layer: the embedding is 0 at init, so the particle model starts exactly equal to the model
        # it is attached to (for LoRA, whose B is 0 too: the pretrained model, and VSD starts from SDS's gradient).
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self._cameras: Tensor | None = None

    def forward(self, c2w: Float[Tensor, "B 16"]) -> Float[Tensor, "B D"]:
        return self.net(c2w.to(self.net[0].weight.dtype))

    def attach(self, time_embedding: nn.Module) -> RemovableHandle:
        """Hook this embedding onto a UNet's `time_embedding` module; returns the hook's handle."""
        return time_embedding.register_forward_hook(self._add_to_output)

    def _add_to_output(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._cameras is None:
            return None  # not a particle pass: the time embedding goes through unchanged
        if self._cameras.shape[0] != output.shape[0]:
            raise ValueError(
                f"{self._cameras.shape[0]} cameras set for a UNet batch of {output.shape[0]}: set one per sample"
            )
        # The trainable embedding is fp32; the UNet's time embedding runs in the UNet's dtype (fp16 on GPU).
        return output + self(self._cameras).to(output.dtype)

    @contextlib.contextmanager
    def cameras(self, c2w: Float[Tensor, "B 16"] | None):
        """Add the embedding of these cameras (one per UNet sample) to every time embedding inside the block."""
        previous, self._cameras = self._cameras, c2w
        try:
            yield
        finally:
            self._cameras = previous


# ---- the LoRA adapter ------------------------------------------------------------------------------------------
def add_lora(unet: nn.Module, config: LoraConfig, gradient_checkpointing: bool) -> list[BaseTunerLayer]:
    """Inject the "particle" adapter into this UNet in place (its weights fp32, trainable, switched off); returns
    the peft layers that carry it."""
    if ADAPTER in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(
            f"this UNet already carries a {ADAPTER!r} adapter: build one particle model per UNet"
        )
    unet.add_adapter(
        config, adapter_name=ADAPTER
    )  # diffusers: peft.inject_adapter_in_model, then activates it
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for p in adapter_parameters(layers):
        p.data = p.data.float()  # fp32 master weights in an fp16 / bf16 UNet too (peft casts the layer input)
    switch_adapters(layers, False)  # off by default: the guidance's pretrained passes see the base UNet
    if gradient_checkpointing:
        # diffusers 0.42 checkpoints whenever torch.is_grad_enabled(), also in eval mode (the frozen denoiser's);
        # the pretrained passes run under no_grad, so only the particle loss recomputes.
        unet.enable_gradient_checkpointing(checkpoint_in_forward_state)
    return layers


def adapter_parameters(layers: list[BaseTunerLayer]) -> list[nn.Parameter]:
    """The particle adapter's weights in these peft layers (lora_A / lora_B)."""
    params: list[nn.Parameter] = []
    for layer in layers:
        for name in layer.adapter_layer_names:
            container = getattr(layer, name)
            if ADAPTER in container:
                params.extend(container[ADAPTER].parameters())
    return params


def switch_adapters(layers: list[BaseTunerLayer], on: bool) -> None:
    """Turn the adapter on or off in these layers, keeping its weights trainable."""
    for layer in layers:
        layer.enable_adapters(on)
    # peft's enable_adapters(False) also sets requires_grad False on the adapter weights. They must stay trainable,
    # or frozen_state_dict_keys would count them as frozen and checkpoints would drop them.
    for p in adapter_parameters(layers):
        p.requires_grad_(True)


@contextlib.contextmanager
def adapters_as(layers: list[BaseTunerLayer], on: bool):
    """The adapter on (or off) in these layers inside the block, as it was after it."""
    was_on = bool(layers) and not layers[0].disable_adapters
    switch_adapters(layers, on)
    try:
        yield
    finally:
        switch_adapters(layers, was_on)


def checkpoint_in_forward_state(module: nn.Module, *args: Any) -> Any:
    """diffusers' `gradient_checkpointing_func` for a UNet carrying the adapter: torch's non-reentrant checkpoint,
    recomputing with the adapter as it was in the forward pass. The recomputation runs in backward, after the
    particle pass switched the adapter off again; without this it would recompute a different function."""
    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    on = bool(layers) and not layers[0].disable_adapters

    def contexts():  # (the forward's context, the recomputation's)
        return contextlib.nullcontext(), adapters_as(layers, on)

    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=contexts)


# ---- files ------------------------------------------------------------------------------------------------------
def save_adapter(unet: nn.Module, camera: CameraEmbedding | None, path: str | Path) -> Path:
    """peft's adapter folder (adapter_config.json + adapter_model.safetensors) plus camera_embedding.safetensors."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    with atomic_target(path / ADAPTER_WEIGHTS) as tmp:
        save_file({PEFT_PREFIX + k: v.detach().contiguous() for k, v in weights.items()}, str(tmp))
    if camera is not None:
        with atomic_target(path / CAMERA_WEIGHTS) as tmp:
            save_file({k: v.contiguous() for k, v in camera.state_dict().items()}, str(tmp))
    # peft writes its own config, here into a staging folder renamed over the target (no one reads half a file).
    with tempfile.TemporaryDirectory(dir=path) as staging:
        unet.peft_config[ADAPTER].save_pretrained(staging)
        os.replace(Path(staging) / ADAPTER_CONFIG, path / ADAPTER_CONFIG)
    return path


def load_adapter(unet: nn.Module, camera: CameraEmbedding | None, path: str | Path) -> None:
    """Load what save_adapter wrote into the UNet's adapter (and the camera embedding); a missing, unreadable or
    mismatched folder raises InputFileError with one line."""
    path = Path(path)
    needed = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] + ([CAMERA_WEIGHTS] if camera is not None else [])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise file_error(path, f"no {', '.join(missing)}")
    device = str(next(iter(get_peft_model_state_dict(unet, adapter_name=ADAPTER).values())).device)
    try:
        saved = LoraConfig.from_pretrained(str(path))
        weights = {
            k.removeprefix(PEFT_PREFIX): v for k, v in load_file(path / ADAPTER_WEIGHTS, device).items()
        }
        camera_weights = None if camera is None else load_file(path / CAMERA_WEIGHTS, device)
    except (OSError, ValueError, TypeError, SafetensorError) as e:
        raise file_error(path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    ours = unet.peft_config[ADAPTER]
    if saved.r != ours.r or set(saved.target_modules) != set(ours.target_modules):
        found, have = sorted(saved.target_modules), sorted(ours.target_modules)
        raise file_error(
            path, f"it holds a LoRA of rank {saved.r} on {found}, this one has rank {ours.r} on {have}"
        )
    expected = set(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
    if set(weights) != expected:
        raise file_error(
            path, f"its LoRA tensors do not match this UNet's (e.g. {sorted(set(weights) ^ expected)[0]})"
        )
    try:
        set_peft_model_state_dict(unet, weights, adapter_name=ADAPTER)
        if camera is not None:
            camera.load_state_dict(camera_weights)
    except RuntimeError as e:  # shape mismatches
        raise file_error(path, f"tensor shapes differ ({str(e).splitlines()[-1].strip()})") from None


def file_error(path: Path, problem: str) -> InputFileError:
    return InputFileError(
        f"particle model folder {path}: {problem}; point it at a folder written by "
        "LoRAParticleScore.save_pretrained with the same base model and particle.lora_* settings"
    )
