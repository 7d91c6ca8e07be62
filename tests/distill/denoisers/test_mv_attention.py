"""MVDream's cross-view self-attention: per-view attention for one view, plain attention over the concatenated
tokens of an object's views (against softmax(qkᵀ/√d)v written out), no mixing across objects, and in a UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from distill.denoisers.mv_attention import MultiViewAttnProcessor, set_num_views, use_multiview_attention
from tests.fixtures.tiny_models import TEXT_DIM, _tiny_unet


def reference_attention(q, k, v):
    """Vaswani et al. 2017, eq. 1, written out: softmax(q kᵀ / √d) v over (B, H, L, D)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def make_attention(channels: int = 16, heads: int = 2) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=channels, heads=heads, dim_head=channels // heads).eval()


def by_hand(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Self-attention of x (B, L, C) through attn's weights, computed without any processor."""
    B, L, _ = x.shape
    H = attn.heads
    split = lambda t: t.reshape(B, L, H, -1).transpose(1, 2)  # noqa: E731
    out = reference_attention(split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x)))
    return attn.to_out[0](out.transpose(1, 2).reshape(B, L, -1))


def test_one_view_is_plain_per_image_attention():
    attn = make_attention()
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        ours = MultiViewAttnProcessor(1)(attn, x)
        torch.testing.assert_close(ours, AttnProcessor2_0()(attn, x), rtol=0, atol=0)
        torch.testing.assert_close(ours, by_hand(attn, x), rtol=1e-5, atol=1e-6)


def test_four_views_attend_over_the_concatenated_tokens_of_their_object_only():
    attn = make_attention()
    views, tokens = 4, 10
    x = torch.randn(2 * views, tokens, 16)  # 2 objects × 4 views
    with torch.no_grad():
        ours = MultiViewAttnProcessor(views)(attn, x)
        for obj in range(2):
            block = x[obj * views : (obj + 1) * views].reshape(1, views * tokens, 16)
            expected = by_hand(attn, block).reshape(views, tokens, 16)
            torch.testing.assert_close(ours[obj * views : (obj + 1) * views], expected, rtol=1e-5, atol=1e-6)
        # Not per-view attention: each view's output depends on the other views of its object.
        assert (ours - AttnProcessor2_0()(attn, x)).abs().max() > 1e-3
        # And nothing crosses between objects.
        changed = x.clone()
        changed[views:] = torch.randn_like(changed[views:])
        torch.testing.assert_close(MultiViewAttnProcessor(views)(attn, changed)[:views], ours[:views])


def test_cross_attention_calls_and_bad_batches():
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    x, context = torch.randn(4, 10, 16), torch.randn(4, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            MultiViewAttnProcessor(4)(attn, x, context), AttnProcessor2_0()(attn, x, context), rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="not a whole number of 4-view objects"):
        MultiViewAttnProcessor(4)(make_attention(), torch.randn(6, 10, 16))


def test_in_a_unet_views_see_each_other_through_self_attention_only():
    torch.manual_seed(0)
    unet = _tiny_unet(4, 4, 8).eval()
    x, t, context = torch.randn(4, 4, 8, 8), torch.tensor([10] * 4), torch.randn(4, 3, TEXT_DIM)
    with torch.no_grad():
        plain = unet(x, t, context).sample
        use_multiview_attention(unet, 1)
        torch.testing.assert_close(unet(x, t, context).sample, plain, rtol=1e-5, atol=1e-6)
        set_num_views(unet, 4)
        joint = unet(x, t, context).sample
        other = x.clone()
        other[1:] = torch.randn_like(other[1:])  # change the other three views only
        moved = unet(other, t, context).sample
    kinds = {type(p).__name__ for name, p in unet.attn_processors.items() if name.endswith("attn2.processor")}
    assert kinds == {"AttnProcessor2_0"}
    assert (joint - plain).abs().max() > 1e-4  # the views now attend to each other,
    assert (moved[0] - joint[0]).abs().max() > 1e-4  # so view 0 moves when only the others change
    with pytest.raises(ValueError, match="at least 1"):
        set_num_views(unet, 0)
