"""MVDream's cross-view self-attention (Shi et al. 2023, §3.1 "3D self-attention") as a diffusers processor.

The views of one object attend to each other's tokens in the UNet's self-attention layers (attn1): the tokens
(B·V, N, C) of V views are regrouped to (B, V·N, C), attended with torch's scaled-dot-product attention
(diffusers' AttnProcessor2_0, no xformers), and split back. Cross-attention (attn2) and the feed-forward stay
per view. Every other op of a transformer block is per token, so regrouping around attn1 alone is exact.

MVDreamDenoiser (mvdream.py) installs it on MVDream's UNet; the multi-view oracle is its exact analogue.
"""

from __future__ import annotations

from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn


class MultiViewAttnProcessor:
    """Self-attention across the `num_views` consecutive batch entries of each object.

    Batches are laid out object-major: entries [o·V, (o+1)·V) are the V views of object o. With num_views = 1 it
    is plain per-image attention. Cross-attention calls (encoder_hidden_states given) are passed through unchanged.
    """

    def __init__(self, num_views: int = 1) -> None:
        self.num_views = num_views
        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        views = self.num_views
        if encoder_hidden_states is not None or views == 1:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if hidden_states.ndim != 3:
            raise ValueError(
                f"multi-view attention expects (B·V, N, C) tokens, got {tuple(hidden_states.shape)}"
            )
        if attention_mask is not None:
            raise ValueError("multi-view attention does not take an attention mask (SD's UNet passes none)")
        batch, tokens, channels = hidden_states.shape
        if batch % views:
            raise ValueError(f"a batch of {batch} images is not a whole number of {views}-view objects")
        grouped = hidden_states.reshape(batch // views, views * tokens, channels)  # (B, V·N, C)
        out = self.inner(attn, grouped, None, None, temb, **kwargs)
        return out.reshape(batch, tokens, channels)


def use_multiview_attention(unet: nn.Module, num_views: int) -> None:
    """Put MultiViewAttnProcessor on every self-attention (attn1) of a diffusers UNet, AttnProcessor2_0 elsewhere."""
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    processors = {
        name: MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


def set_num_views(unet: nn.Module, num_views: int) -> None:
    """Change how many consecutive batch entries form one object (after use_multiview_attention)."""
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    for processor in unet.attn_processors.values():
        if isinstance(processor, MultiViewAttnProcessor):
            processor.num_views = num_views
