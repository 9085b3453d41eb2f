"""A ViT's pooled embedding needs its last block for the class token only.

The embedding of a class-token ViT (every OpenAI and LAION CLIP ViT, and the vision towers of CLIP-ViP and
Open-VCLIP) is the class token after the last block; that block's output for every other token is computed
and thrown away. So the last block attends from the class token alone (keys and values still come from
every token) and runs its MLP on that one token. That saves most of one block in ``layers``: about 1/12 of
ViT-B's work, 1/24 of ViT-L's. The embedding equals the full forward's up to float summation order (a few
1e-7 relative in fp32).

For open_clip models only the stock ``VisionTransformer`` with stock blocks qualifies; anything else (average
or attentional pooling, custom blocks, token outputs) keeps open_clip's own forward. The video families
(``_layers.py``) take a ``queries`` argument in their blocks. ``VFEAT_CLASS_TOKEN_ONLY=0`` turns it off
everywhere, for comparisons.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def switched_on() -> bool:
    """``VFEAT_CLASS_TOKEN_ONLY`` is not ``0``: encoders built now compute the last block for one token."""
    return os.environ.get("VFEAT_CLASS_TOKEN_ONLY", "1") != "0"


def class_token_only(visual: nn.Module) -> bool:
    """Whether open_clip's ``visual``'s embedding is its class token alone, so :func:`image_embedding` may be used."""
    return switched_on() and _qualifies(visual)


def image_embedding(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``visual(pixels)`` (``[N, 3, H, W] -> [N, D]``) with the last block computed for the class token only."""
    *first, last = visual.transformer.resblocks
    x = visual._embeds(pixels)  # patches + class token + positions, ln_pre: [N, L, D]
    for block in first:
        x = block(x)
    token = _class_token_block(last, x)  # [N, 1, D]
    pooled = visual.ln_post(token[:, 0])  # a per-token norm: the same before or after pooling
    return pooled @ visual.proj if visual.proj is not None else pooled


def _class_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` with the queries, the residual and the MLP cut to the
    class token (position 0)."""
    normed = block.ln_1(x)
    token = x[:, :1] + block.ls_1(block.attention(q_x=normed[:, :1], k_x=normed, v_x=normed))
    return token + block.ls_2(block.mlp(block.ln_2(token)))


def _qualifies(visual: nn.Module) -> bool:
    try:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError:
        return False
    if type(visual) is not VisionTransformer or not hasattr(visual, "_embeds"):
        return False  # a timm or custom trunk, or an open_clip older than its _embeds / pool_type split
    if getattr(visual, "pool_type", None) != "tok" or getattr(visual, "attn_pool", None) is not None:
        return False
    if getattr(visual, "output_tokens", False) or not getattr(visual.transformer, "batch_first", False):
        return False
    blocks = list(visual.transformer.resblocks)
    return bool(blocks) and all(
        type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
        and isinstance(block.attn, nn.MultiheadAttention) and block.attn.batch_first
        for block in blocks
    )
