"""Transformer pieces shared by the video CLIP families, in the two naming schemes their checkpoints use.

CLIP-ViP is written on Hugging Face's CLIP (``self_attn.q_proj``, ``layer_norm1``, ``mlp.fc1``); Open-VCLIP on
OpenAI's CLIP (``attn.in_proj_weight``, ``ln_1``, ``mlp.c_fc``). Each block takes the attention *core* as an
argument, because that core is exactly where the two families differ from image CLIP (proxy-guided attention,
neighbour-frame keys); projections, norms and MLPs stay the stock ones so that ``state_dict()`` keeps the
official names. All tensors are batch-first ``[N, L, D]``. The last section holds the few loading helpers the
two families share (OpenAI's BPE tokenizer, weight-file checks).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vfeat.errors import ModelError
from vfeat.models.weights import sha256_file

#: ``core(q, k, v) -> out``, each ``[N, heads, L, head_dim]`` with ``q`` already scaled.
AttentionCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation OpenAI trained CLIP with (HF's ``quick_gelu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The HF ``hidden_act`` names CLIP configs use; anything else would silently change the numbers."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ModelError(f"Unsupported hidden_act {name!r}. It must be 'quick_gelu' or 'gelu'.")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain softmax attention in the order both official codes compute it: scores, + additive mask,
    softmax, weighted sum (``q`` is already scaled)."""
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1) @ v


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``[L, L]`` mask, ``-inf`` above the diagonal: text tokens see only their left context."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, L, D] -> [N, heads, L, D / heads]``."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[N, heads, L, d] -> [N, L, heads * d]``."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


# --- Hugging Face naming (CLIP-ViP) -------------------------------------------------------------------------


class HFAttention(nn.Module):
    """HF ``CLIPAttention`` parameters (separate q/k/v/out projections, biases); the core is pluggable."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ModelError(f"hidden_size {width} is not divisible by num_attention_heads {heads}")
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, core: AttentionCore, queries: int | None = None) -> torch.Tensor:
        """``queries``: attend from the first ``queries`` tokens only (every token is still a key and a value)."""
        q_x = x if queries is None else x[:, :queries]
        q = split_heads(self.q_proj(q_x) * self.scale, self.heads)  # HF scales before splitting heads
        k = split_heads(self.k_proj(x), self.heads)
        v = split_heads(self.v_proj(x), self.heads)
        return self.out_proj(merge_heads(core(q, k, v)))


class HFMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.activation_fn = activation(act)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class HFEncoderLayer(nn.Module):
    """Pre-LN block of HF ``CLIPEncoderLayer``. CLIP-ViP builds ``nn.LayerNorm(dim)``, so eps is always 1e-5
    whatever ``layer_norm_eps`` the config carries."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: str):
        super().__init__()
        self.self_attn = HFAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = HFMLP(width, mlp_width, act)
        self.layer_norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, core: AttentionCore, queries: int | None = None) -> torch.Tensor:
        """``queries``: the output of the first ``queries`` tokens only (a pooled embedding needs no more)."""
        kept = x if queries is None else x[:, :queries]
        kept = kept + self.self_attn(self.layer_norm1(x), core, queries)
        return kept + self.mlp(self.layer_norm2(kept))


class HFTextTransformer(nn.Module):
    """HF ``CLIPTextTransformer``: token + position embeddings, causal (and padding) masked encoder, final LN.
    Returns the last hidden state (after ``final_layer_norm``); pooling is the caller's business."""

    def __init__(self, vocab: int, positions: int, width: int, layers: int, heads: int, mlp_width: int, act: str):
        super().__init__()
        self.heads = heads
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(vocab, width)
        self.embeddings.position_embedding = nn.Embedding(positions, width)
        self.embeddings.register_buffer("position_ids", torch.arange(positions).unsqueeze(0))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(HFEncoderLayer(width, heads, mlp_width, act) for _ in range(layers))
        self.final_layer_norm = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length = input_ids.shape
        positions = self.embeddings.position_ids.shape[1]
        if length > positions:
            raise ModelError(f"Text of {length} tokens is longer than the model's {positions} positions")
        x = self.embeddings.token_embedding(input_ids)
        x = x + self.embeddings.position_embedding(self.embeddings.position_ids[:, :length])
        mask = causal_mask(length, x.dtype, x.device)[None, None]  # [1, 1, L, L]
        if attention_mask is not None:  # HF adds finfo.min on padded keys on top of the causal -inf
            padded = attention_mask[:, None, None, :].to(x.dtype) == 0
            mask = mask + torch.zeros_like(padded, dtype=x.dtype).masked_fill(padded, torch.finfo(x.dtype).min)
        core: AttentionCore = lambda q, k, v: attend(q, k, v, mask)
        for layer in self.encoder.layers:
            x = layer(x, core)
        return self.final_layer_norm(x)


# --- OpenAI naming (Open-VCLIP) ------------------------------------------------------------------------------


class PackedAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed ``in_proj_weight``/``in_proj_bias``, ``out_proj``) with a
    pluggable core. The query is divided by sqrt(head_dim) after projection, as torch's MHA does."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ModelError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, core: AttentionCore, queries: int | None = None) -> torch.Tensor:
        """``queries``: attend from the first ``queries`` tokens only (every token is still a key and a value)."""
        if queries is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:  # the packed rows are [q; k; v]
            width = x.shape[-1]
            q = F.linear(x[:, :queries], self.in_proj_weight[:width], self.in_proj_bias[:width])
            k, v = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:]).chunk(2, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        q = q / math.sqrt(q.shape[-1])
        return self.out_proj(merge_heads(core(q, k, v)))


class LayerNormFP32(nn.LayerNorm):
    """OpenAI's ``LayerNorm``: computed in fp32 whatever the input dtype, cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()  # also when the whole model was cast to fp16/bf16
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's pre-LN block (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc``/``mlp.c_proj``, QuickGELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = PackedAttention(width, heads)
        self.ln_1 = LayerNormFP32(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))])
        )
        self.ln_2 = LayerNormFP32(width)

    def forward(self, x: torch.Tensor, core: AttentionCore, queries: int | None = None) -> torch.Tensor:
        """``queries``: the output of the first ``queries`` tokens only (a pooled embedding needs no more)."""
        kept = x if queries is None else x[:, :queries]
        kept = kept + self.attn(self.ln_1(x), core, queries)
        return kept + self.mlp(self.ln_2(kept))


class Transformer(nn.Module):
    """``transformer.resblocks.N``: a stack of :class:`ResidualAttentionBlock` sharing one attention core."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, core: AttentionCore, last_queries: int | None = None) -> torch.Tensor:
        """``last_queries``: the last block computes the first ``last_queries`` tokens only."""
        *first, last = self.resblocks
        for block in first:
            x = block(x, core)
        return last(x, core, last_queries)


# --- loading helpers both families share ---------------------------------------------------------------------


@lru_cache(maxsize=1)
def openai_bpe() -> Any:
    """open_clip's copy of OpenAI's BPE tokenizer (the one both official codes use), built once per process."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def weight_sha256(path: str, spec: Mapping[str, Any], what: str = "checkpoint") -> str:
    """Hash a local weight file (the identity records it); a missing one is an error saying where the official
    weights are published."""
    if not Path(path).is_file():
        raise ModelError(
            f"{path}: {spec.get('name', 'model')} {what} not found. "
            f"Download the official weights from: {spec.get('weights', 'the official release')}"
        )
    return sha256_file(path)


def check_expected(name: str, expected: Any, actual: Any, source: str) -> None:
    """A rebuild from a stored identity passes what it recorded; a difference means other numbers."""
    if expected is not None and expected != actual:
        raise ModelError(f"{source}: {name} differs from the one recorded ({expected!r} recorded, {actual!r} now)")
