"""distill.prompts: view selection at the boundaries, prompt strings, the embedding cache, Perp-Neg weights."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

import distill.prompts as prompts_mod
from distill.prompts import (
    BACK,
    FRONT,
    OVERHEAD,
    SIDE,
    PromptEmbeddings,
    PromptProcessor,
    PromptProcessorConfig,
    cache_root,
    view_direction,
)


def _clip_forward(path, texts):
    """Independent reference: tokenizer + CLIP text encoder straight from transformers."""
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    enc = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).last_hidden_state


@pytest.fixture
def count_encoder_loads(monkeypatch):
    """Counts how often the prompt processor loads a text encoder."""
    calls = []
    real = prompts_mod.load_components

    def counting(cfg, names):
        if "text_encoder" in names:
            calls.append(cfg.pretrained_model_name_or_path)
        return real(cfg, names)

    monkeypatch.setattr(prompts_mod, "load_components", counting)
    return calls


def test_view_direction_boundaries():
    az = torch.tensor(
        [0.0, 44.99, 45.0, -45.0, 45.01, 134.99, 135.0, -135.0, 135.01, 180.0, -180.0, 405.0, -315.5]
    )
    expected = [FRONT, FRONT, SIDE, SIDE, SIDE, SIDE, SIDE, SIDE, BACK, BACK, BACK, SIDE, FRONT]
    assert view_direction(torch.zeros_like(az), az).tolist() == expected
    elev = torch.tensor([60.0, 60.01, 90.0, -10.0])
    got = view_direction(elev, torch.tensor([0.0, 0.0, 180.0, 180.0]))
    assert got.tolist() == [FRONT, OVERHEAD, OVERHEAD, BACK]
    cfg = PromptProcessorConfig(front_threshold=30, back_threshold=60, overhead_threshold=45)
    got = view_direction(torch.tensor([0.0, 0.0, 0.0, 50.0]), torch.tensor([29.0, 31.0, 121.0, 0.0]), cfg)
    assert got.tolist() == [FRONT, SIDE, BACK, OVERHEAD]


def test_suffix_prefix_and_manual_view_prompts():
    suffix = PromptProcessorConfig(prompt="a cat").view_prompt_texts()
    assert suffix == ["a cat, front view", "a cat, side view", "a cat, back view", "a cat, overhead view"]
    prefix = PromptProcessorConfig(prompt="a cat", view_style="prefix").view_prompt_texts()
    assert prefix == [
        "front view of a cat",
        "side view of a cat",
        "back view of a cat",
        "overhead view of a cat",
    ]
    manual = PromptProcessorConfig(
        prompt="a cat",
        view_prompts={"side": "a cat seen sideways", "back": "ignored"},
        prompt_back="a cat tail",
    ).view_prompt_texts()
    assert manual == ["a cat, front view", "a cat seen sideways", "a cat tail", "a cat, overhead view"]
    with pytest.raises(ValueError, match="view_style"):
        PromptProcessorConfig(view_style="infix")
    with pytest.raises(ValueError, match="unknown view"):
        PromptProcessorConfig(view_prompts={"top": "x"})


def test_embeddings_equal_direct_encoder_forward(tiny_sd_path):
    cfg = PromptProcessorConfig(
        str(tiny_sd_path), prompt="a red cube", negative_prompt="blurry", prompt_back="the back of a red cube"
    )
    emb = PromptProcessor(cfg)()
    texts = ["a red cube", "blurry", *cfg.view_prompt_texts()]
    ref = _clip_forward(tiny_sd_path, texts)
    torch.testing.assert_close(emb.prompt[0], ref[0])
    torch.testing.assert_close(emb.uncond[0], ref[1])
    torch.testing.assert_close(emb.views, ref[2:])
    # Per-camera selection: front, side, back, overhead cameras get their view prompt; uncond = negative.
    elev, az = torch.tensor([0.0, 0.0, 0.0, 80.0]), torch.tensor([10.0, 90.0, -170.0, 0.0])
    cond, uncond = emb.text_embeddings(elev, az)
    torch.testing.assert_close(cond, ref[2:][torch.tensor([FRONT, SIDE, BACK, OVERHEAD])])
    torch.testing.assert_close(uncond, ref[1].expand(4, -1, -1))
    cond_plain, _ = emb.text_embeddings(elev, az, view_dependent=False)
    torch.testing.assert_close(cond_plain, ref[0].expand(4, -1, -1))


def test_if_embeddings_use_t5_with_attention_mask(tiny_if_path):
    cfg = PromptProcessorConfig(str(tiny_if_path), prompt="a blue torus", use_cache=False)
    emb = PromptProcessor(cfg)()
    tok = T5Tokenizer.from_pretrained(tiny_if_path / "tokenizer")
    enc = T5EncoderModel.from_pretrained(tiny_if_path / "text_encoder").eval()
    t = tok(["a blue torus"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(t.input_ids, attention_mask=t.attention_mask).last_hidden_state
    torch.testing.assert_close(emb.prompt, ref)


def test_cache_miss_then_hit_without_loading_encoder(
    tiny_sd_path, tmp_path, monkeypatch, count_encoder_loads
):
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(cache))
    monkeypatch.chdir(cwd)
    cfg = PromptProcessorConfig(str(tiny_sd_path), prompt="a wooden chair", negative_prompt="ugly")
    first = PromptProcessor(cfg)()
    assert len(count_encoder_loads) == 1
    files = sorted((cache / "text_embeddings").glob("*.safetensors"))
    assert len(files) == 6  # prompt, negative, 4 views
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    second = PromptProcessor(cfg)()
    assert len(count_encoder_loads) == 1  # cache hit: the text encoder was not loaded again
    assert torch.equal(first.views, second.views) and torch.equal(first.uncond, second.uncond)
    # A new negative prompt misses only for itself, and the encoder loads once for it.
    PromptProcessor(
        PromptProcessorConfig(str(tiny_sd_path), prompt="a wooden chair", negative_prompt="dark")
    )()
    assert len(count_encoder_loads) == 2
    assert len(list((cache / "text_embeddings").glob("*.safetensors"))) == 7


def test_cache_root_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILL3D_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "distill3d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "distill3d"
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def _reference_perp_neg(az_deg: float):
    """Perp-Neg rule written out scalar by scalar: (r, pos views, neg views, weights)."""
    f = lambda abc, r: abc[0] * math.exp(-abc[1] * r) + abc[2]  # noqa: E731
    f_sb, f_fsb, f_fs = (1, 0.5, -0.606), (1, 0.5, 0.967), (4, 0.5, -2.426)
    a = abs((az_deg + 180) % 360 - 180)  # |azimuth| after wrapping to (-180, 180]
    if a < 90:
        r = 1 - a / 90
        return r, (FRONT, SIDE), (SIDE, BACK), (-f(f_fs, r), -f(f_fsb, r))
    r = 2 - a / 90
    return r, (SIDE, BACK), (FRONT, SIDE), (-f(f_fsb, r), -f(f_sb, r))


def test_perp_neg_interpolation_and_weights():
    views = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    uncond = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(1))
    emb = PromptEmbeddings.from_tensors(views[0], uncond, views)
    az_list = [0.0, 30.0, -60.0, 89.9, 90.0, 120.0, -150.0, 180.0, 270.0]
    emb_out, weights = emb.perp_neg_embeddings(torch.zeros(len(az_list)), torch.tensor(az_list))
    for i, az in enumerate(az_list):
        r, (p0, p1), (n0, n1), (w0, w1) = _reference_perp_neg(az)
        torch.testing.assert_close(emb_out[i, 0], r * views[p0] + (1 - r) * views[p1])
        torch.testing.assert_close(emb_out[i, 1], uncond[0])
        torch.testing.assert_close(emb_out[i, 2], views[n0])
        torch.testing.assert_close(emb_out[i, 3], views[n1])
        assert weights[i].tolist() == pytest.approx([w0, w1], abs=1e-5)
    # At the pure front view the side negative vanishes: 4·exp(-0.5) - 2.426 ≈ 0 (constants chosen so).
    assert abs(weights[0, 0].item()) < 1e-3


def test_from_tensors_for_oracle_weight_vectors():
    w = torch.tensor([[[0.2, 0.8, 0.0]]])  # (1, 1, K) scene-mixture weights
    emb = PromptEmbeddings.from_tensors(w, view_dependent_prompting=False)
    cond, uncond = emb.text_embeddings(torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]))
    torch.testing.assert_close(cond, w.expand(3, 1, 3))
    assert torch.equal(uncond, torch.zeros(3, 1, 3))
    with pytest.raises(ValueError, match="shapes disagree"):
        PromptEmbeddings.from_tensors(w, uncond=torch.zeros(1, 2, 3))


@pytest.mark.slow  # a spawned child re-imports torch + diffusers: ~10-20 s on a busy 2-core CPU
def test_spawned_encoding_matches_in_process(tiny_sd_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_CACHE_DIR", str(tmp_path / "spawned"))
    cfg = PromptProcessorConfig(str(tiny_sd_path), prompt="a stone arch", spawn=True)
    emb = PromptProcessor(cfg)()
    ref = _clip_forward(tiny_sd_path, ["a stone arch"])
    torch.testing.assert_close(emb.prompt, ref)
