"""Loading frozen diffusion components: hub id, local diffusers folder, or single-file checkpoint.

One entry point, `load_components(cfg, names)`, built on diffusers' / transformers' own `from_pretrained` and
`from_single_file`. Component classes come from the folder's `model_index.json`, so Stable Diffusion (CLIP)
and DeepFloyd IF (T5) load through the same code. Weights that are not there (offline and not cached, a
wrong local path, a gated repo, a missing subfolder) raise one `WeightsNotFoundError` line saying what was
tried and how to fix it; the hub's traceback is suppressed (`raise ... from None`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from torch import nn

from distill3d.errors import UserError

COMPONENT_NAMES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
# What a folder without model_index.json is assumed to hold (Stable Diffusion's layout).
_DEFAULT_CLASSES = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "AutoTokenizer"),
    "scheduler": ("diffusers", "DDPMScheduler"),
}
_HUB_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")
# Set on every module load_components returns, so systems can leave frozen weights out of checkpoints.
FROZEN_ATTR = "_distill3d_frozen"
# Everything the hub / diffusers / transformers raise for "those files are not there".
MISSING_ERRORS = (OSError, EntryNotFoundError)


class WeightsNotFoundError(UserError, RuntimeError):
    """Model weights are neither on disk nor downloadable; the message is one line with the fix."""


@dataclass
class ModelLoadConfig:
    """Where the diffusion model lives and how to load it.

    pretrained_model_name_or_path: hub id ("stabilityai/stable-diffusion-2-1-base"), a local diffusers folder,
        or a single .safetensors/.ckpt file (then `single_file_config` names its diffusers config folder/id).
    torch_dtype: "fp32" | "fp16" | "bf16" for the neural components (tokenizer/scheduler have none).
    device: "auto" (cuda if available, else cpu) | "cpu" | "cuda" | "cuda:N".
    local_files_only: never touch the network; None follows the HF_HUB_OFFLINE environment variable.
    revision / variant: hub revision (branch, tag, commit) and weight-file variant (e.g. "fp16").
    enable_attention_slicing / enable_vae_slicing: lower peak memory at some speed cost.
    cpu_offload: keep models on the CPU and move each to the GPU only while it runs (accelerate hooks).
    scheduler_class: load the scheduler config into this diffusers class instead of the one the model names.
    component_classes: {component: "package.module.Class"} loads that component with your class instead of the
        one model_index.json names (a custom UNet with extra layers, say); the class needs `from_pretrained`.
    """

    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    torch_dtype: str = "fp32"
    device: str = "auto"
    local_files_only: bool | None = None
    revision: str | None = None
    variant: str | None = None
    enable_attention_slicing: bool = False
    enable_vae_slicing: bool = False
    cpu_offload: bool = False
    single_file_config: str | None = None
    scheduler_class: str | None = None
    component_classes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.torch_dtype not in _DTYPES:
            raise ValueError(
                f"torch_dtype={self.torch_dtype!r} is not supported: use one of {sorted(_DTYPES)}."
            )
        unknown = set(self.component_classes) - set(COMPONENT_NAMES)
        if unknown:
            raise ValueError(
                f"component_classes names unknown component(s) {sorted(unknown)}: use {COMPONENT_NAMES}."
            )
        for name, path in self.component_classes.items():
            if "." not in path:
                raise ValueError(
                    f"component_classes.{name}={path!r}: give an importable 'package.module.Class' path."
                )
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(
                f"device={self.device!r} is not supported: use 'auto', 'cpu', 'cuda' or 'cuda:N'."
            )

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.torch_dtype]

    @property
    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def offline(self) -> bool:
        if self.local_files_only is not None:
            return self.local_files_only
        return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass
class DiffusionComponents:
    """The loaded parts of a diffusion model; a part not asked for is None. Neural parts are frozen."""

    unet: nn.Module | None = None
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any | None = None
    scheduler: Any | None = None
    source: str = ""
    offload_hooks: list = field(default_factory=list)


def freeze(module: nn.Module) -> nn.Module:
    """eval(), requires_grad False, and marked so `frozen_state_dict_keys` can find it. Returns module."""
    module.eval()
    module.requires_grad_(False)
    setattr(module, FROZEN_ATTR, True)
    return module


def frozen_module_names(root: nn.Module) -> list[str]:
    """Dotted names of the outermost submodules of root that `freeze` marked (e.g. ["guidance.unet"])."""
    names: list[str] = []
    for name, module in root.named_modules():
        if getattr(module, FROZEN_ATTR, False) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def frozen_state_dict_keys(root: nn.Module) -> set[str]:
    """State-dict keys of root that belong to frozen modules and need not be checkpointed.

    Parameters that were made trainable again inside a frozen module (e.g. LoRA adapters injected into a
    frozen UNet) are kept out of this set, so they still go into checkpoints. Computed from the module tree
    (not from root.state_dict(), which a system may override to drop exactly these keys).
    """
    prefixes = tuple(n + "." for n in frozen_module_names(root))
    keys: set[str] = set()
    for name, module in root.named_modules():
        if not (name + ".").startswith(prefixes):
            continue
        base = f"{name}." if name else ""
        for pname, param in module._parameters.items():
            if param is not None and not param.requires_grad:
                keys.add(base + pname)
        for bname, buf in module._buffers.items():
            if buf is not None and bname not in module._non_persistent_buffers_set:
                keys.add(base + bname)
    return keys


def _fix_hint(cfg: ModelLoadConfig, source: str) -> str:
    if cfg.offline:
        return (
            f"download it once with `hf download {source}` (`huggingface-cli download {source}` on older "
            f"huggingface_hub), pass a local diffusers folder as pretrained_model_name_or_path, "
            f"or unset HF_HUB_OFFLINE / set local_files_only=false to allow downloads"
        )
    return (
        f"check the id and your network, download it with `hf download {source}` (`huggingface-cli download`), "
        f"or pass a local diffusers folder as pretrained_model_name_or_path"
    )


def not_found_error(cfg: ModelLoadConfig, component: str, exc: BaseException) -> WeightsNotFoundError:
    """One line: what was tried (source, component, online/offline), why it failed, and the fix."""
    source = cfg.pretrained_model_name_or_path
    mode = "offline (HF_HUB_OFFLINE / local_files_only)" if cfg.offline else "online"
    if isinstance(exc, GatedRepoError):
        why, fix = (
            "the repository is gated",
            f"accept its license on the hub, then run `hf auth login` (`huggingface-cli login`); or {_fix_hint(cfg, source)}",
        )
    elif isinstance(exc, LocalEntryNotFoundError) or cfg.offline:
        why, fix = "it is not in the local Hugging Face cache", _fix_hint(cfg, source)
    elif isinstance(exc, RepositoryNotFoundError):
        why = "no such repository on the hub (or it is private: run `hf auth login`)"
        fix = _fix_hint(cfg, source)
    else:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        why, fix = f"{type(exc).__name__}: {first_line}", _fix_hint(cfg, source)
    msg = f"Could not load the {component} of '{source}' ({mode}): {why}. Fix: {fix}."
    return WeightsNotFoundError(" ".join(msg.split()))


def _class_map(cfg: ModelLoadConfig) -> dict[str, tuple[str, str]]:
    """component -> (library, class name) from model_index.json; SD defaults where it is absent."""
    source = cfg.pretrained_model_name_or_path
    if os.path.isdir(source):
        index_path: str | None = os.path.join(source, "model_index.json")
        if not os.path.isfile(index_path):
            index_path = None
    else:
        try:
            index_path = hf_hub_download(
                source, "model_index.json", revision=cfg.revision, local_files_only=cfg.offline
            )
        except LocalEntryNotFoundError as exc:
            raise not_found_error(cfg, "pipeline index (model_index.json)", exc) from None
        except EntryNotFoundError:  # the repo exists but holds no pipeline index: assume SD's layout
            index_path = None
        except OSError as exc:
            raise not_found_error(cfg, "pipeline index (model_index.json)", exc) from None
    classes: dict[str, tuple[str, str]] = dict(_DEFAULT_CLASSES)
    if index_path is not None:  # only what the index names (diffusers writes [null, null] for absent parts)
        index = json.loads(Path(index_path).read_text())
        classes = {
            k: tuple(v) for k, v in index.items() if k in _DEFAULT_CLASSES and isinstance(v, list) and v[0]
        }
    if cfg.scheduler_class is not None:
        classes["scheduler"] = ("diffusers", cfg.scheduler_class)
    for name, path in cfg.component_classes.items():
        classes[name] = ("import", path)
    return classes


def _resolve_class(library: str, name: str, component: str) -> type:
    if library == "import":  # component_classes: a user's own class
        module_name, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise ValueError(
                f"component_classes.{component}={name!r} cannot be imported: check the path"
            ) from None
    module = {"diffusers": diffusers, "transformers": transformers}.get(library)
    cls = getattr(module, name, None) if module is not None else None
    if cls is None and component == "tokenizer":
        return transformers.AutoTokenizer  # e.g. a slow/fast tokenizer name a newer transformers renamed
    if cls is None:
        raise ValueError(
            f"model_index.json names {library}.{name} for '{component}', which is not available."
        )
    return cls


def check_source(cfg: ModelLoadConfig) -> None:
    """Fail early, before any hub call, on a local path that does not exist."""
    source = cfg.pretrained_model_name_or_path
    if os.path.exists(source):
        return
    looks_local = source.startswith(("/", ".", "~")) or "\\" in source or not _HUB_ID.match(source)
    if looks_local or source.endswith(_SINGLE_FILE_SUFFIXES):
        raise WeightsNotFoundError(
            f"Could not load '{source}': no such local file or folder (and it is not a hub id). "
            f"Fix: pass an existing diffusers folder, a .safetensors/.ckpt file, or a hub id like "
            f"'stabilityai/stable-diffusion-2-1-base'."
        )


def _load_pretrained(cfg: ModelLoadConfig, classes: dict[str, tuple[str, str]], name: str) -> Any:
    library, class_name = classes[name]
    cls = _resolve_class(library, class_name, name)
    source = cfg.pretrained_model_name_or_path
    if os.path.isdir(source) and not os.path.isdir(os.path.join(source, name)):
        raise WeightsNotFoundError(
            f"Could not load the {name} of '{source}': the folder has no '{name}/' subfolder. "
            f"Fix: point pretrained_model_name_or_path at a diffusers folder with the Stable Diffusion layout "
            f"(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
        )
    kwargs: dict[str, Any] = {"subfolder": name, "revision": cfg.revision, "local_files_only": cfg.offline}
    if name in ("unet", "vae", "text_encoder"):
        kwargs["variant"] = cfg.variant
        # diffusers calls it torch_dtype, transformers 5 calls it dtype.
        transformers_cls = library == "transformers" or (
            library == "import" and issubclass(cls, transformers.PreTrainedModel)
        )
        kwargs["dtype" if transformers_cls else "torch_dtype"] = cfg.dtype
    try:
        return cls.from_pretrained(source, **kwargs)
    except MISSING_ERRORS as exc:
        raise not_found_error(cfg, name, exc) from None


def _load_single_file(cfg: ModelLoadConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """A single .safetensors/.ckpt through diffusers' `from_single_file` (it needs a diffusers config)."""
    source = cfg.pretrained_model_name_or_path
    if cfg.offline and cfg.single_file_config is None:
        raise WeightsNotFoundError(
            f"Could not load the single-file checkpoint '{source}' offline: diffusers needs a config for it. "
            f"Fix: set single_file_config to a local diffusers folder of the same architecture "
            f"(e.g. one made with `hf download stabilityai/stable-diffusion-2-1-base --exclude '*.safetensors'`), "
            f"or unset HF_HUB_OFFLINE so diffusers can fetch the config."
        )
    index_src = cfg.single_file_config
    pipeline_name = "StableDiffusionPipeline"
    if index_src is not None and os.path.isfile(os.path.join(index_src, "model_index.json")):
        pipeline_name = json.loads(Path(index_src, "model_index.json").read_text()).get(
            "_class_name", pipeline_name
        )
    pipeline_cls = getattr(diffusers, pipeline_name, diffusers.StableDiffusionPipeline)
    try:
        pipe = pipeline_cls.from_single_file(
            source, config=cfg.single_file_config, torch_dtype=cfg.dtype, local_files_only=cfg.offline
        )
    except MISSING_ERRORS as exc:
        raise not_found_error(cfg, "single-file checkpoint", exc) from None
    return {n: getattr(pipe, n, None) for n in names}


def apply_memory_options(cfg: ModelLoadConfig, parts: dict[str, Any]) -> list:
    """Attention/VAE slicing, then device placement or accelerate model offload. Returns offload hooks."""
    if cfg.enable_attention_slicing and parts.get("unet") is not None:
        parts["unet"].set_attention_slice("auto")
    if cfg.enable_vae_slicing and parts.get("vae") is not None:
        parts["vae"].enable_slicing()
    device = cfg.resolved_device
    modules = [parts[n] for n in ("text_encoder", "unet", "vae") if isinstance(parts.get(n), nn.Module)]
    if not cfg.cpu_offload:
        for m in modules:
            m.to(device)
        return []
    try:
        from accelerate import cpu_offload_with_hook
    except ImportError:
        raise ValueError(
            "cpu_offload=true needs the 'accelerate' package. Fix: `pip install accelerate` or set cpu_offload=false."
        ) from None
    if device.type != "cuda":
        raise ValueError(
            f"cpu_offload=true needs a CUDA device, but device resolves to {device}. Fix: set cpu_offload=false."
        )
    hooks, prev = [], None
    for m in modules:  # chained: running one model offloads the previous one (diffusers' model offload)
        _, prev = cpu_offload_with_hook(m, execution_device=device, prev_module_hook=prev)
        hooks.append(prev)
    return hooks


def listed_components(cfg: ModelLoadConfig) -> set[str]:
    """The components the model's index lists (a single file: SD's layout); raises WeightsNotFoundError."""
    check_source(cfg)
    if os.path.isfile(cfg.pretrained_model_name_or_path):
        return set(COMPONENT_NAMES)
    return set(_class_map(cfg))


def load_components(cfg: ModelLoadConfig, names: tuple[str, ...] = COMPONENT_NAMES) -> DiffusionComponents:
    """Load the named components (subset of unet, vae, text_encoder, tokenizer, scheduler), frozen.

    Models come back in cfg.torch_dtype on cfg.device (or CPU-offloaded), in eval mode with requires_grad
    False. Raises WeightsNotFoundError (one line, with the fix) when the weights cannot be found.
    """
    unknown = set(names) - set(COMPONENT_NAMES)
    if unknown:
        raise ValueError(f"Unknown component(s) {sorted(unknown)}: choose from {COMPONENT_NAMES}.")
    check_source(cfg)
    source = cfg.pretrained_model_name_or_path
    if os.path.isfile(source):
        parts = _load_single_file(cfg, tuple(names))
    else:
        classes = _class_map(cfg)
        absent = [n for n in names if n not in classes]
        if absent:
            raise ValueError(
                f"'{source}' has no {absent} (its model_index.json does not list them; a pixel-space model "
                f"such as DeepFloyd IF has no vae). Fix: do not request {absent}."
            )
        parts = {n: _load_pretrained(cfg, classes, n) for n in names}
    for part in parts.values():
        if isinstance(part, nn.Module):
            freeze(part)
    hooks = apply_memory_options(cfg, parts)
    known = {f.name for f in fields(DiffusionComponents)}
    return DiffusionComponents(
        **{k: v for k, v in parts.items() if k in known}, source=source, offload_hooks=hooks
    )
