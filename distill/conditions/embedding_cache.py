"""Text embeddings encoded once and cached on disk, keyed by (model, prompt, tokenizer max length).

On a full cache hit the text encoder is never loaded. Files are safetensors written atomically, under
$DISTILL3D_CACHE_DIR, else $XDG_CACHE_HOME/distill3d, else ~/.cache/distill3d.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from distill.models import ModelLoadConfig, load_components
from distill3d.files import atomic_target

# Tokenizers without a real limit report a huge model_max_length; SD's CLIP and IF's T5 both use 77.
_FALLBACK_MAX_LENGTH = 77


def cache_root(cache_dir: str | None = None) -> Path:
    """$DISTILL3D_CACHE_DIR, else $XDG_CACHE_HOME/distill3d, else ~/.cache/distill3d (an explicit arg wins)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DISTILL3D_CACHE_DIR"):
        return Path(os.environ["DISTILL3D_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "distill3d"


def _model_key(source: str) -> str:
    # A local folder is keyed by its absolute path, so "./sd" from two working directories is one model.
    return str(Path(source).resolve()) if os.path.exists(source) else source


def cache_path(root: Path, model: str, prompt: str, max_length: int) -> Path:
    """File of one embedding: a hash of (model, prompt, tokenizer max length)."""
    key = json.dumps({"model": _model_key(model), "prompt": prompt, "max_length": max_length}, sort_keys=True)
    return root / "text_embeddings" / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"


def max_length(tokenizer) -> int:
    n = int(getattr(tokenizer, "model_max_length", _FALLBACK_MAX_LENGTH))
    return n if n < 100_000 else _FALLBACK_MAX_LENGTH


def encode_prompts(text_encoder, tokenizer, prompts: list[str], length: int) -> Float[Tensor, "N L D"]:
    """Last hidden states of the text encoder for prompts padded to `length`, float32 on CPU.

    CLIP (SD) gets no attention mask, as SD was trained; T5 (DeepFloyd IF) gets it, as IF was trained.
    """
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    kwargs = {}
    if "clip" not in getattr(text_encoder.config, "model_type", ""):
        kwargs["attention_mask"] = tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = text_encoder(tokens.input_ids.to(device), **kwargs)[0]
    return hidden.float().cpu()


def encode_to_cache(load_cfg: ModelLoadConfig, prompts: list[str], paths: list[str], length: int) -> None:
    """Load the text encoder, encode, write the cache files, free the encoder (also a spawn target)."""
    parts = load_components(load_cfg, ("tokenizer", "text_encoder"))
    hidden = encode_prompts(parts.text_encoder, parts.tokenizer, prompts, length)
    for emb, path in zip(hidden, paths, strict=True):
        with atomic_target(path) as tmp:
            save_file({"embedding": emb.contiguous()}, str(tmp))
    del parts
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _spawn_encode(args: tuple) -> None:
    """Run `encode_to_cache` in a spawned child: its memory is the OS's again when it exits."""
    import multiprocessing as mp

    proc = mp.get_context("spawn").Process(target=encode_to_cache, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(
            f"The prompt-encoding child process failed (exit code {proc.exitcode}); its error is printed "
            f"above. Fix: rerun with spawn=false to see it in this process."
        )


def load_or_encode(
    load_cfg: ModelLoadConfig, root: Path, texts: list[str], length: int, spawn: bool = False
) -> dict[str, Tensor]:
    """text → (L, D) embedding, encoding (and caching under root) only the texts not cached yet."""
    model = load_cfg.pretrained_model_name_or_path
    paths = {t: cache_path(root, model, t, length) for t in texts}
    missing = [t for t in texts if not paths[t].is_file()]
    if missing:
        args = (load_cfg, missing, [str(paths[t]) for t in missing], length)
        _spawn_encode(args) if spawn else encode_to_cache(*args)
    return {t: load_file(paths[t])["embedding"] for t in texts}
