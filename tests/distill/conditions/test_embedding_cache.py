"""distill.conditions.embedding_cache: encode once, cache on disk, never load the text encoder on a hit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

import distill.conditions.embedding_cache as cache_mod
from distill.conditions.embedding_cache import (
    cache_path,
    cache_root,
    encode_prompts,
    load_or_encode,
    max_length,
)
from distill.conditions.text import TextPromptConfig, encode_text_prompts
from distill.models import ModelLoadConfig
from tests.distill.conditions.helpers import clip_forward


@pytest.fixture
def count_encoder_loads(monkeypatch):
    """Counts how often a text encoder is loaded for encoding."""
    calls = []
    real = cache_mod.load_components

    def counting(cfg, names):
        if "text_encoder" in names:
            calls.append(cfg.pretrained_model_name_or_path)
        return real(cfg, names)

    monkeypatch.setattr(cache_mod, "load_components", counting)
    return calls


def test_cache_miss_then_hit_without_loading_encoder(
    tiny_sd_path, tmp_path, monkeypatch, count_encoder_loads
):
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(cache))
    monkeypatch.chdir(cwd)
    cfg, model = TextPromptConfig(), str(tiny_sd_path)
    first = encode_text_prompts(cfg, "a wooden chair", "ugly", model)
    assert len(count_encoder_loads) == 1
    files = sorted((cache / "text_embeddings").glob("*.safetensors"))
    assert len(files) == 6  # prompt, negative, 4 views
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    second = encode_text_prompts(cfg, "a wooden chair", "ugly", model)
    assert len(count_encoder_loads) == 1  # cache hit: the text encoder was not loaded again
    assert torch.equal(first.views, second.views) and torch.equal(first.uncond, second.uncond)
    # A new negative prompt misses only for itself, and the encoder loads once for it.
    encode_text_prompts(cfg, "a wooden chair", "dark", model)
    assert len(count_encoder_loads) == 2
    assert len(list((cache / "text_embeddings").glob("*.safetensors"))) == 7
    # The cached values are the encoder's.
    torch.testing.assert_close(second.prompt[0], clip_forward(tiny_sd_path, ["a wooden chair"])[0])


def test_use_cache_false_leaves_no_files(tiny_sd_path, tmp_path, monkeypatch, count_encoder_loads):
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "cache"))
    cfg = TextPromptConfig(use_cache=False)
    emb = encode_text_prompts(cfg, "a lamp", "", str(tiny_sd_path))
    encode_text_prompts(cfg, "a lamp", "", str(tiny_sd_path))
    assert len(count_encoder_loads) == 2  # every call encodes
    assert not (tmp_path / "cache").exists()
    torch.testing.assert_close(emb.prompt[0], clip_forward(tiny_sd_path, ["a lamp"])[0])


def test_load_or_encode_returns_one_embedding_per_text(tiny_sd_path, tmp_path):
    load = ModelLoadConfig(str(tiny_sd_path), device="cpu")
    texts = ["a cup", "a cup, side view"]
    got = load_or_encode(load, tmp_path, texts, 77)
    ref = clip_forward(tiny_sd_path, texts)
    assert list(got) == texts
    for i, t in enumerate(texts):
        torch.testing.assert_close(got[t], ref[i])
        assert cache_path(tmp_path, str(tiny_sd_path), t, 77).is_file()


def test_encode_prompts_is_float32_on_cpu(tiny_sd_path):
    tok = CLIPTokenizer.from_pretrained(tiny_sd_path / "tokenizer")
    enc = CLIPTextModel.from_pretrained(tiny_sd_path / "text_encoder").eval().to(torch.bfloat16)
    out = encode_prompts(enc, tok, ["a box"], 77)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, clip_forward(tiny_sd_path, ["a box"]), atol=0.1, rtol=0.05)


def test_cache_key_covers_model_prompt_and_length(tmp_path, monkeypatch):
    (tmp_path / "sd").mkdir()
    monkeypatch.chdir(tmp_path)
    base = cache_path(tmp_path, "./sd", "a cat", 77)
    assert base.parent == tmp_path / "text_embeddings" and base.suffix == ".safetensors"
    assert (
        cache_path(tmp_path, str(tmp_path / "sd"), "a cat", 77) == base
    )  # a local folder: its absolute path
    others = {
        cache_path(tmp_path, "./sd", "a dog", 77),
        cache_path(tmp_path, "./sd", "a cat", 64),
        cache_path(tmp_path, "org/model", "a cat", 77),
    }
    assert base not in others and len(others) == 3


def test_max_length_falls_back_for_unbounded_tokenizers():
    assert max_length(SimpleNamespace(model_max_length=64)) == 64
    assert max_length(SimpleNamespace(model_max_length=int(1e30))) == 77
    assert max_length(SimpleNamespace()) == 77


def test_cache_root_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILL3D_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "distill3d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "distill3d"
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert cache_root(str(tmp_path / "explicit")) == tmp_path / "explicit"


@pytest.mark.slow  # a spawned child re-imports torch + diffusers: ~10-20 s on a busy 2-core CPU
def test_spawned_encoding_matches_in_process(tiny_sd_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "spawned"))
    emb = encode_text_prompts(TextPromptConfig(spawn=True), "a stone arch", "", str(tiny_sd_path))
    ref = clip_forward(tiny_sd_path, ["a stone arch"])
    torch.testing.assert_close(emb.prompt, ref)
