"""Text prompts as a Condition: the prompt, the negative prompt and four view prompts, encoded with the model's
own tokenizer + text encoder (loaded through distill.models, cached on disk by conditions/embedding_cache.py).

The prompt itself is the run's (`prompt=` / `negative_prompt=` on the command line); this config says how it is
encoded and how views pick their prompt. The text encoder follows the denoiser's model unless
`pretrained_model_name_or_path` names another.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.conditions.embedding_cache import cache_root, load_or_encode, max_length
from distill.conditions.prompt_embeddings import (
    PERP_NEG_F_FS,
    PERP_NEG_F_FSB,
    PERP_NEG_F_SB,
    PERP_NEG_F_SF,
    PromptEmbeddings,
    ViewOptions,
)
from distill.conditions.views import DIRECTIONS
from distill.models import ModelLoadConfig, load_components


@dataclass
class TextPromptConfig:
    """How the run's prompt is encoded and how views pick their prompt (threestudio's prompt_processor).

    pretrained_model_name_or_path: the model whose tokenizer/text encoder embed the prompts; None = the
        denoiser's model.
    view_dependent_prompting: pick the front/side/back/overhead prompt per camera (off for MVDream).
    view_style: "suffix" ("<prompt>, front view") or "prefix" ("front view of <prompt>").
    front_threshold / back_threshold / overhead_threshold, use_perp_neg, perp_neg_f_*: see ViewOptions.
    view_prompts / prompt_front ... prompt_overhead: manual per-view prompts replacing the generated ones
        (the explicit prompt_<view> fields win over the dict).
    use_cache / cache_dir: on-disk embedding cache (None = $DISTILL3D_CACHE_DIR or ~/.cache/distill3d).
    spawn: encode in a child process so the text encoder's memory surely returns to the OS.
    device / local_files_only / revision: passed to the model loader (None = follow the denoiser's).
    """

    pretrained_model_name_or_path: str | None = None
    view_dependent_prompting: bool = True
    view_style: str = "suffix"
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    view_prompts: dict[str, str] = field(default_factory=dict)
    prompt_front: str | None = None
    prompt_side: str | None = None
    prompt_back: str | None = None
    prompt_overhead: str | None = None
    use_perp_neg: bool = False
    perp_neg_f_sb: tuple[float, float, float] = PERP_NEG_F_SB
    perp_neg_f_fsb: tuple[float, float, float] = PERP_NEG_F_FSB
    perp_neg_f_fs: tuple[float, float, float] = PERP_NEG_F_FS
    perp_neg_f_sf: tuple[float, float, float] = PERP_NEG_F_SF
    use_cache: bool = True
    cache_dir: str | None = None
    spawn: bool = False
    device: str = "auto"
    local_files_only: bool | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.view_style not in ("suffix", "prefix"):
            raise ValueError(f"view_style={self.view_style!r} is not supported: use 'suffix' or 'prefix'.")
        bad = set(self.view_prompts) - set(DIRECTIONS)
        if bad:
            raise ValueError(f"view_prompts has unknown view(s) {sorted(bad)}: use keys from {DIRECTIONS}.")
        ViewOptions.pick(self)  # thresholds and Perp-Neg curves are checked there

    def view_prompt_texts(self, prompt: str) -> list[str]:
        """The four view prompts of `prompt` in DIRECTIONS order (manual ones override generated ones)."""
        texts = []
        for d in DIRECTIONS:
            manual = getattr(self, f"prompt_{d}") or self.view_prompts.get(d)
            generated = f"{prompt}, {d} view" if self.view_style == "suffix" else f"{d} view of {prompt}"
            texts.append(manual if manual else generated)
        return texts


def encode_text_prompts(
    cfg: TextPromptConfig, prompt: str, negative_prompt: str, model: str, **load: Any
) -> PromptEmbeddings:
    """Encode [prompt, negative, front, side, back, overhead] with `model`'s text encoder (or the cache)."""
    load_cfg = ModelLoadConfig(
        cfg.pretrained_model_name_or_path or model,
        device=cfg.device,
        local_files_only=cfg.local_files_only
        if cfg.local_files_only is not None
        else load.get("local_files_only"),
        revision=cfg.revision if cfg.revision is not None else load.get("revision"),
    )
    # The tokenizer is cheap and fixes the cache key's max length; the encoder loads only on a miss.
    length = max_length(load_components(load_cfg, ("tokenizer",)).tokenizer)
    texts = [prompt, negative_prompt, *cfg.view_prompt_texts(prompt)]
    unique = list(dict.fromkeys(texts))
    if cfg.use_cache:
        emb = load_or_encode(load_cfg, cache_root(cfg.cache_dir), unique, length, cfg.spawn)
    else:  # same code path, but into a folder that is deleted right after
        with tempfile.TemporaryDirectory(prefix="distill3d-emb-") as tmp:
            emb = load_or_encode(load_cfg, Path(tmp), unique, length, cfg.spawn)
    views = torch.stack([emb[t] for t in texts[2:]])
    return PromptEmbeddings(
        emb[texts[0]][None], emb[texts[1]][None], views, ViewOptions.pick(cfg), tuple(texts)
    )


class TextPrompt(PromptEmbeddings):
    """The run's text prompt, encoded by the denoiser's text encoder: `_target_: distill.conditions.text.TextPrompt`."""

    Config = TextPromptConfig

    @classmethod
    def from_config(cls, cfg: TextPromptConfig, run: Any, denoiser: Any) -> TextPrompt:
        """run: anything with prompt / negative_prompt; denoiser: its `load_config` names the text encoder's model."""
        load = getattr(denoiser, "load_config", None)
        if cfg.pretrained_model_name_or_path is None and load is None:
            raise ValueError(
                f"system.prompt_processor: the denoiser {type(denoiser).__name__} has no text encoder to follow; "
                "set system.prompt_processor.pretrained_model_name_or_path"
            )
        own = cfg.pretrained_model_name_or_path
        model = own if own is not None else load.pretrained_model_name_or_path
        extra = {}
        if load is not None:
            extra["local_files_only"] = load.local_files_only
            if own is None or own == load.pretrained_model_name_or_path:  # a revision names one repository
                extra["revision"] = load.revision
        emb = encode_text_prompts(cfg, run.prompt, run.negative_prompt, model, **extra)
        return cls(emb.prompt, emb.uncond, emb.views, emb.options, emb.texts)
