"""Prompt processing: text embeddings (encoded once, cached on disk), view-dependent prompts, Perp-Neg.

`PromptProcessor(cfg)()` returns a `PromptEmbeddings`: the prompt, the negative prompt (the unconditional
embedding) and the four view prompts (front/side/back/overhead, DreamFusion's view-dependent prompting),
encoded with the model's own tokenizer + text encoder (loaded through `distill.models`). Each embedding is
cached under `<cache dir>/text_embeddings/` keyed by (model, prompt, max length); on a full cache hit the text
encoder is never loaded. The analytic oracle builds a `PromptEmbeddings` from its own tensors (`from_tensors`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from distill.models import ModelLoadConfig, load_components

DIRECTIONS = ("front", "side", "back", "overhead")
FRONT, SIDE, BACK, OVERHEAD = range(4)
# Tokenizers without a real limit report a huge model_max_length; SD's CLIP and IF's T5 both use 77.
_FALLBACK_MAX_LENGTH = 77


@dataclass
class PromptProcessorConfig:
    """What to encode and how views pick their prompt.

    pretrained_model_name_or_path: the diffusion model whose tokenizer/text encoder embed the prompts.
    prompt / negative_prompt: the text; the negative prompt's embedding is the unconditional one (CFG).
    view_dependent_prompting: pick the front/side/back/overhead prompt per camera (off for MVDream).
    view_style: "suffix" ("<prompt>, front view") or "prefix" ("front view of <prompt>").
    front_threshold / back_threshold / overhead_threshold: degrees; front if |az| < front, back if
        |az| > 180 - back, overhead if elevation > overhead (checked first).
    view_prompts / prompt_front ... prompt_overhead: manual per-view prompts replacing the generated ones
        (the explicit prompt_<view> fields win over the dict).
    use_perp_neg, perp_neg_f_sb / f_fsb / f_fs: Perp-Neg (Armandpour et al. 2023) weight curves (a, b, c) of
        f(r) = a·exp(-b·r) + c; see `perp_neg_weights`.
    use_cache / cache_dir: on-disk embedding cache; None = $DISTILL3D_CACHE_DIR, else $XDG_CACHE_HOME/distill3d,
        else ~/.cache/distill3d.
    spawn: encode in a child process so the text encoder's memory surely returns to the OS.
    device / local_files_only / revision: passed to the model loader.
    """

    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
    prompt: str = "a hamburger"
    negative_prompt: str = ""
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
    perp_neg_f_sb: tuple[float, float, float] = (1.0, 0.5, -0.606)
    perp_neg_f_fsb: tuple[float, float, float] = (1.0, 0.5, 0.967)
    perp_neg_f_fs: tuple[float, float, float] = (4.0, 0.5, -2.426)
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
        if not 0 <= self.front_threshold <= 180 - self.back_threshold <= 180:
            raise ValueError(
                "Need 0 <= front_threshold <= 180 - back_threshold: the front and back regions overlap."
            )
        for name in ("perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must be three numbers (a, b, c) of a·exp(-b·r) + c.")

    def view_prompt_texts(self) -> list[str]:
        """The four view prompts in DIRECTIONS order (manual ones override generated ones)."""
        texts = []
        for d in DIRECTIONS:
            manual = getattr(self, f"prompt_{d}") or self.view_prompts.get(d)
            generated = (
                f"{self.prompt}, {d} view" if self.view_style == "suffix" else f"{d} view of {self.prompt}"
            )
            texts.append(manual if manual else generated)
        return texts


def wrap_azimuth(azimuth: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
    """Azimuth in degrees wrapped to (-180, 180]."""
    return azimuth - 360.0 * torch.ceil((azimuth - 180.0) / 360.0)


def view_direction(
    elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"], thresholds=None
) -> Int[Tensor, " B"]:
    """Index into DIRECTIONS per camera (DreamFusion §3.2 view-dependent prompting). Degrees in.

    thresholds: anything with front_threshold / back_threshold / overhead_threshold (a config or
    PromptEmbeddings); None = 45 / 45 / 60. Boundaries are strict: |az| = 45 is side, elevation = 60 is not
    overhead.
    """
    front = getattr(thresholds, "front_threshold", 45.0)
    back = getattr(thresholds, "back_threshold", 45.0)
    overhead = getattr(thresholds, "overhead_threshold", 60.0)
    az = wrap_azimuth(azimuth).abs()
    idx = torch.full_like(az, SIDE, dtype=torch.long)
    idx[az < front] = FRONT
    idx[az > 180.0 - back] = BACK
    idx[elevation > overhead] = OVERHEAD
    return idx


def shifted_exp_decay(coeffs: tuple[float, float, float], r: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
    """f(r) = a·exp(-b·r) + c, Perp-Neg's negative-weight curve (Armandpour et al. 2023)."""
    a, b, c = coeffs
    return a * torch.exp(-b * r) + c


def perp_neg_weights(
    azimuth: Float[Tensor, " B"],
    f_sb: tuple[float, float, float],
    f_fsb: tuple[float, float, float],
    f_fs: tuple[float, float, float],
) -> tuple[Float[Tensor, " B"], Float[Tensor, "B 2"], Int[Tensor, "B 4"]]:
    """Perp-Neg interpolation and negative weights by azimuth (elevation is not used).

    |az| < 90:  r = 1 - |az|/90, positive = r·front + (1-r)·side, negatives (side, back) with weights
                (-f_fs(r), -f_fsb(r)).
    |az| >= 90: r = 2 - |az|/90, positive = r·side + (1-r)·back, negatives (front, side) with weights
                (-f_fsb(r), -f_sb(r)).
    These are the published threestudio constants' roles: f_fs pairs front and side, f_fsb pushes away the
    far view (back seen from the front half, front seen from the back half), f_sb pairs side and back.
    Returns r (B,), weights (B,2) for [neg_a, neg_b], and DIRECTIONS indices (B,4) =
    [positive r-view, positive (1-r)-view, neg_a, neg_b].
    """
    az = wrap_azimuth(azimuth).abs()
    front_half = az < 90.0
    r = torch.where(front_half, 1.0 - az / 90.0, 2.0 - az / 90.0)
    w_front = torch.stack([-shifted_exp_decay(f_fs, r), -shifted_exp_decay(f_fsb, r)], dim=-1)
    w_back = torch.stack([-shifted_exp_decay(f_fsb, r), -shifted_exp_decay(f_sb, r)], dim=-1)
    weights = torch.where(front_half[:, None], w_front, w_back)
    # [positive r-view, positive (1-r)-view, neg_a, neg_b]
    idx_front = torch.tensor([FRONT, SIDE, SIDE, BACK], device=az.device)
    idx_back = torch.tensor([SIDE, BACK, FRONT, SIDE], device=az.device)
    views = torch.where(front_half[:, None], idx_front, idx_back)
    return r, weights, views


@dataclass
class PromptEmbeddings:
    """Encoded prompts and the rules to pick them per camera. Tensors (…, L, D), L tokens, D features.

    prompt: (1, L, D) the plain prompt; uncond: (1, L, D) the negative prompt; views: (4, L, D) in DIRECTIONS order.
    """

    prompt: Float[Tensor, "1 L D"]
    uncond: Float[Tensor, "1 L D"]
    views: Float[Tensor, "4 L D"]
    view_dependent_prompting: bool = True
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    use_perp_neg: bool = False
    perp_neg_f_sb: tuple[float, float, float] = (1.0, 0.5, -0.606)
    perp_neg_f_fsb: tuple[float, float, float] = (1.0, 0.5, 0.967)
    perp_neg_f_fs: tuple[float, float, float] = (4.0, 0.5, -2.426)
    texts: tuple[str, ...] = ()

    @classmethod
    def from_tensors(
        cls,
        prompt: Float[Tensor, "... L D"],
        uncond: Float[Tensor, "... L D"] | None = None,
        views: Float[Tensor, "4 L D"] | None = None,
        **options,
    ) -> PromptEmbeddings:
        """Build from given tensors, no text encoder (the oracle passes (1,1,K) scene-mixture weights).

        uncond defaults to zeros, views to the prompt for every direction; options set the other fields.
        """
        prompt = prompt.reshape(1, *prompt.shape[-2:])
        uncond = torch.zeros_like(prompt) if uncond is None else uncond.reshape(1, *uncond.shape[-2:])
        views = prompt.expand(len(DIRECTIONS), -1, -1).clone() if views is None else views
        if views.shape != (len(DIRECTIONS), *prompt.shape[1:]) or uncond.shape != prompt.shape:
            raise ValueError(
                f"Embedding shapes disagree: prompt {tuple(prompt.shape)}, uncond {tuple(uncond.shape)}, "
                f"views {tuple(views.shape)}; expected (1,L,D), (1,L,D), (4,L,D)."
            )
        return cls(prompt=prompt, uncond=uncond, views=views, **options)

    def to(self, device=None, dtype=None) -> PromptEmbeddings:
        move = {k: getattr(self, k).to(device=device, dtype=dtype) for k in ("prompt", "uncond", "views")}
        return PromptEmbeddings(**{**self.__dict__, **move})

    def text_embeddings(
        self, elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"], view_dependent: bool | None = None
    ) -> tuple[Float[Tensor, "B L D"], Float[Tensor, "B L D"]]:
        """(cond, uncond) per camera, on elevation's device. view_dependent None = the configured choice."""
        vd = self.view_dependent_prompting if view_dependent is None else view_dependent
        b, dev = elevation.shape[0], elevation.device
        if vd:
            cond = self.views.to(dev)[view_direction(elevation, azimuth, self).to(dev)]
        else:
            cond = self.prompt.to(dev).expand(b, -1, -1)
        return cond, self.uncond.to(dev).expand(b, -1, -1)

    def perp_neg_embeddings(
        self, elevation: Float[Tensor, " B"], azimuth: Float[Tensor, " B"]
    ) -> tuple[Float[Tensor, "B 4 L D"], Float[Tensor, "B 2"]]:
        """Perp-Neg inputs: embeddings [positive, uncond, neg_a, neg_b] (B,4,L,D) and weights (B,2).

        The rule (interpolation r and which views are negatives, with which curve) is `perp_neg_weights`'.
        """
        dev = elevation.device
        r, weights, idx = perp_neg_weights(
            azimuth.to(dev), self.perp_neg_f_sb, self.perp_neg_f_fsb, self.perp_neg_f_fs
        )
        views = self.views.to(dev)
        r_ = r.to(views.dtype)[:, None, None]
        positive = r_ * views[idx[:, 0]] + (1.0 - r_) * views[idx[:, 1]]  # Perp-Neg view interpolation
        uncond = self.uncond.to(dev).expand(elevation.shape[0], -1, -1)
        emb = torch.stack([positive, uncond, views[idx[:, 2]], views[idx[:, 3]]], dim=1)
        return emb, weights.to(views.dtype)


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


def _save_atomic(path: Path, embedding: Tensor) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"embedding": embedding.contiguous()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _max_length(tokenizer) -> int:
    n = int(getattr(tokenizer, "model_max_length", _FALLBACK_MAX_LENGTH))
    return n if n < 100_000 else _FALLBACK_MAX_LENGTH


def encode_prompts(text_encoder, tokenizer, prompts: list[str], max_length: int) -> Float[Tensor, "N L D"]:
    """Last hidden states of the text encoder for prompts padded to max_length, float32 on CPU.

    CLIP (SD) gets no attention mask, as SD was trained; T5 (DeepFloyd IF) gets it, as IF was trained.
    """
    tokens = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    device = next(text_encoder.parameters()).device
    kwargs = {}
    if "clip" not in getattr(text_encoder.config, "model_type", ""):
        kwargs["attention_mask"] = tokens.attention_mask.to(device)
    with torch.no_grad():
        hidden = text_encoder(tokens.input_ids.to(device), **kwargs)[0]
    return hidden.float().cpu()


def _encode_to_cache(
    cfg: PromptProcessorConfig, prompts: list[str], paths: list[str], max_length: int
) -> None:
    """Load the text encoder, encode, write the cache files, free the encoder (also a spawn target)."""
    load_cfg = ModelLoadConfig(
        cfg.pretrained_model_name_or_path,
        device=cfg.device,
        local_files_only=cfg.local_files_only,
        revision=cfg.revision,
    )
    parts = load_components(load_cfg, ("tokenizer", "text_encoder"))
    hidden = encode_prompts(parts.text_encoder, parts.tokenizer, prompts, max_length)
    for emb, path in zip(hidden, paths, strict=True):
        _save_atomic(Path(path), emb)
    del parts
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PromptProcessor:
    """Encodes a config's prompts once (or reads them from the cache) and returns `PromptEmbeddings`."""

    def __init__(self, cfg: PromptProcessorConfig):
        self.cfg = cfg
        self._embeddings: PromptEmbeddings | None = None

    def prompts(self) -> list[str]:
        """[prompt, negative_prompt, front, side, back, overhead] texts."""
        return [self.cfg.prompt, self.cfg.negative_prompt, *self.cfg.view_prompt_texts()]

    def __call__(self) -> PromptEmbeddings:
        return self.get()

    def get(self) -> PromptEmbeddings:
        if self._embeddings is None:
            self._embeddings = self._build()
        return self._embeddings

    def _build(self) -> PromptEmbeddings:
        cfg = self.cfg
        load_cfg = ModelLoadConfig(
            cfg.pretrained_model_name_or_path, local_files_only=cfg.local_files_only, revision=cfg.revision
        )
        # The tokenizer is cheap and fixes the cache key's max length; the encoder loads only on a miss.
        max_length = _max_length(load_components(load_cfg, ("tokenizer",)).tokenizer)
        texts = self.prompts()
        unique = list(dict.fromkeys(texts))
        if cfg.use_cache:
            emb = self._load_or_encode(cache_root(cfg.cache_dir), unique, max_length)
        else:  # same code path, but into a folder that is deleted right after
            with tempfile.TemporaryDirectory(prefix="distill3d-emb-") as tmp:
                emb = self._load_or_encode(Path(tmp), unique, max_length)
        return PromptEmbeddings(
            prompt=emb[texts[0]][None],
            uncond=emb[texts[1]][None],
            views=torch.stack([emb[t] for t in texts[2:]]),
            view_dependent_prompting=cfg.view_dependent_prompting,
            front_threshold=cfg.front_threshold,
            back_threshold=cfg.back_threshold,
            overhead_threshold=cfg.overhead_threshold,
            use_perp_neg=cfg.use_perp_neg,
            perp_neg_f_sb=tuple(cfg.perp_neg_f_sb),
            perp_neg_f_fsb=tuple(cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(cfg.perp_neg_f_fs),
            texts=tuple(texts),
        )

    def _load_or_encode(self, root: Path, texts: list[str], max_length: int) -> dict[str, Tensor]:
        """text -> (L, D) embedding, encoding (and caching under root) only the texts not cached yet."""
        cfg = self.cfg
        paths = {t: cache_path(root, cfg.pretrained_model_name_or_path, t, max_length) for t in texts}
        missing = [t for t in texts if not paths[t].is_file()]
        if missing:
            args = (cfg, missing, [str(paths[t]) for t in missing], max_length)
            if cfg.spawn:
                self._spawn_encode(args)
            else:
                _encode_to_cache(*args)
        return {t: load_file(paths[t])["embedding"] for t in texts}

    @staticmethod
    def _spawn_encode(args: tuple) -> None:
        """Run `_encode_to_cache` in a spawned child: its memory is the OS's again when it exits."""
        import multiprocessing as mp

        proc = mp.get_context("spawn").Process(target=_encode_to_cache, args=args)
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(
                f"The prompt-encoding child process failed (exit code {proc.exitcode}); its error is printed "
                f"above. Fix: rerun with spawn=false to see it in this process."
            )
