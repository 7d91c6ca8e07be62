"""Shared test helpers for the conditioning tests."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer


def clip_forward(path, texts):
    """Independent reference: tokenizer + CLIP text encoder straight from transformers."""
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    enc = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).last_hidden_state
