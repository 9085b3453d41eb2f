"""CLIP-ViP (microsoft/XPretrain, ICLR 2023): one embedding per video from proxy-guided attention.

The vision tower is HF's CLIP ViT with three changes, all in :class:`ViPEmbeddings` and :func:`proxy_guided_core`:
``add_cls_num`` learned *video proxy* tokens sit beside CLS, a learned temporal embedding (linearly
interpolated when the clip has another number of frames than ``temporal_size``) is added to every patch, and
attention is split: a frame's patches see the CLS/proxy tokens and their own frame only, while CLS and proxies
see everything. The video embedding is the post-LN CLS token, projected. The text tower is HF's CLIP text
transformer (causal + padding mask, pooled at ``input_ids.argmax(-1)``) fed HF-tokenizer ids (max 50 tokens,
padded with the end token).

Parameter names are the official ones: ``ClipVipEncoder.state_dict()`` *is* the official checkpoint format
(``clipmodel.`` + HF CLIP names), which is what ``ModelSaver`` in the official code writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfeat.errors import ModelError
from vfeat.models import class_token
from vfeat.models._layers import (
    AttentionCore,
    HFEncoderLayer,
    HFTextTransformer,
    attend,
    check_expected,
    openai_bpe,
    weight_sha256,
)
from vfeat.models.base import (OPENAI_MEAN, OPENAI_STD, ModelIdentity, Preprocess, VideoEmbeddings, VideoEncoder,
                               refuse_other_options)
from vfeat.models.weights import load_strict, no_random_init, read_state_dict, recorded_path, strip_prefix

PREFIX = "clipmodel."


# --- configuration, in the official field names ---------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """HF ``CLIPVisionConfig`` fields that shape the network (defaults: HF's, i.e. OpenAI ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"


@dataclass(frozen=True)
class TextConfig:
    """HF ``CLIPTextConfig`` fields that shape the network (defaults: HF's)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"


@dataclass(frozen=True)
class ClipVipConfig:
    """``clip_config`` (HF ``CLIPConfig``) + ``clip_vision_additional_config`` + ``max_txt_len`` of a run config."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 512  # the top-level one: HF CLIPModel ignores the towers' own projection_dim
    temporal_size: int = 12
    if_use_temporal_embed: bool = True
    add_cls_num: int = 3
    logit_scale_init_value: float = 4.6  # VidCLIP overwrites CLIPConfig's 2.6592 with this one
    max_txt_len: int = 50

    @classmethod
    def from_official(cls, arch: Mapping[str, Any], source: str) -> "ClipVipConfig":
        """Build from ``{"clip_config": {...}, "clip_vision_additional_config": {...}, "max_txt_len": n}``.

        Keys of the HF dicts that do not shape the network (``return_dict``, ``id2label``, ...) are ignored,
        so a full ``CLIPConfig.to_dict()`` is accepted as well as the registry's essentials."""
        clip = arch.get("clip_config")
        extra = arch.get("clip_vision_additional_config")
        if not isinstance(clip, Mapping):
            raise ModelError(f"{source}: no clip_config (a Hugging Face CLIPConfig dict) in the CLIP-ViP config")
        if not isinstance(extra, Mapping):
            raise ModelError(f"{source}: no clip_vision_additional_config (type ViP, temporal_size, add_cls_num, ...)")
        if extra.get("type", "ViP") != "ViP":
            raise ModelError(f"{source}: clip_vision_additional_config.type is {extra.get('type')!r}; only 'ViP' is supported")
        try:
            return cls(
                vision=_pick(VisionConfig, clip.get("vision_config", {})),
                text=_pick(TextConfig, clip.get("text_config", {})),
                projection_dim=int(clip.get("projection_dim", 512)),
                temporal_size=int(extra["temporal_size"]),
                if_use_temporal_embed=bool(int(extra.get("if_use_temporal_embed", 1))),
                add_cls_num=int(extra["add_cls_num"]),
                logit_scale_init_value=float(extra.get("logit_scale_init_value", 4.6)),
                max_txt_len=int(arch.get("max_txt_len", 50)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: invalid CLIP-ViP config ({type(exc).__name__}: {exc})") from exc

    def as_official(self) -> dict[str, Any]:
        """The inverse of :meth:`from_official` (what an identity records)."""
        return {
            "clip_config": {"projection_dim": self.projection_dim, "vision_config": asdict(self.vision), "text_config": asdict(self.text)},
            "clip_vision_additional_config": {
                "type": "ViP",
                "temporal_size": self.temporal_size,
                "if_use_temporal_embed": int(self.if_use_temporal_embed),
                "logit_scale_init_value": self.logit_scale_init_value,
                "add_cls_num": self.add_cls_num,
            },
            "max_txt_len": self.max_txt_len,
        }


def _pick(kind: type, values: Mapping[str, Any]) -> Any:
    names = {f.name: f.type for f in fields(kind)}
    return kind(**{k: (str(v) if names[k] == "str" else int(v)) for k, v in values.items() if k in names})


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: could not read {what} ({exc})") from exc


def _hf_config(ref: str, base: Path) -> dict[str, Any]:
    """An official run config names its ``clip_config`` by hub name or path; only local files exist here."""
    path = (base / ref).expanduser()
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise ModelError(
            f"{base}: clip_config {ref!r} is not a local file or folder; give the path to the Hugging Face "
            "CLIPConfig config.json (for example the one of openai/clip-vit-base-patch32)"
        )
    return _read_json(path, "Hugging Face CLIP config")


def resolve_config(spec_architecture: Mapping[str, Any] | None, config_path: str | None) -> ClipVipConfig:
    """The registry's ``architecture``, overridden by ``config_path``: an official run config (``clip_config``
    as a dict or a path, ``clip_vision_additional_config``, ``max_txt_len``) or a HF ``config.json`` (then the
    ViP fields come from the registry)."""
    arch = dict(spec_architecture or {})
    source = "registry architecture"
    if config_path:
        path = Path(config_path)
        data = _read_json(path, "CLIP-ViP config")
        source = str(path)
        if "clip_config" in data:
            clip = data["clip_config"]
            arch["clip_config"] = _hf_config(clip, path.parent) if isinstance(clip, str) else clip
            for key in ("clip_vision_additional_config", "max_txt_len"):
                if key in data:
                    arch[key] = data[key]
        elif "vision_config" in data and "text_config" in data:
            arch["clip_config"] = data
        else:
            raise ModelError(f"{path}: neither an official CLIP-ViP run config (clip_config) nor a HF CLIPConfig")
    return ClipVipConfig.from_official(arch, source)


def input_size(spec_architecture: Mapping[str, Any] | None, config_path: str | None) -> int:
    """The frame size the model will take, from its configuration alone (no weights): decoding starts on it
    while the model loads."""
    return resolve_config(spec_architecture, config_path).vision.image_size


# --- the network ---------------------------------------------------------------------------------------------


class ViPEmbeddings(nn.Module):
    """``CLIPVisionViPEmbeddings``: [CLS, proxies, frame 0 patches, frame 1 patches, ...]."""

    def __init__(self, config: ClipVipConfig):
        super().__init__()
        v = config.vision
        self.image_size, self.temporal_size, self.add_cls_num = v.image_size, config.temporal_size, config.add_cls_num
        positions = (v.image_size // v.patch_size) ** 2 + 1
        self.added_cls = nn.Parameter(torch.randn(config.add_cls_num, v.hidden_size))
        self.class_embedding = nn.Parameter(torch.randn(v.hidden_size) * v.hidden_size**-0.5)
        self.patch_embedding = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size, bias=False)
        self.position_embedding = nn.Embedding(positions, v.hidden_size)
        self.register_buffer("position_ids", torch.arange(positions).unsqueeze(0))
        if config.if_use_temporal_embed:  # the official init is zeros: interpolation then starts from nothing
            self.temporal_embedding = nn.Parameter(torch.zeros(1, config.temporal_size, v.hidden_size))
        nn.init.normal_(self.patch_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def time_embedding(self, frames: int) -> torch.Tensor:
        """``[1, frames, D]``: the learned one, or its linear interpolation (align_corners False) to ``frames``."""
        if frames == self.temporal_embedding.shape[1]:
            return self.temporal_embedding
        return F.interpolate(self.temporal_embedding.transpose(1, 2), size=frames, mode="linear").transpose(1, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = pixels.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ModelError(f"CLIP-ViP expects {self.image_size}x{self.image_size} frames, got {h}x{w}")
        patches = self.patch_embedding(pixels.reshape(b * t, c, h, w)).flatten(2).transpose(1, 2)
        patches = patches.reshape(b, t, patches.shape[1], patches.shape[2])  # [B, T, L, D]
        if hasattr(self, "temporal_embedding"):
            patches = patches + self.time_embedding(t).unsqueeze(2)
        patches = patches + self.position_embedding(self.position_ids[:, 1:]).unsqueeze(1)
        cls_position = self.position_embedding(self.position_ids[:, :1])
        cls = self.class_embedding.expand(b, 1, -1) + cls_position
        proxies = self.added_cls.expand(b, self.add_cls_num, -1) + cls_position
        return torch.cat([cls, proxies, patches.reshape(b, -1, patches.shape[-1])], dim=1)


def proxy_guided_core(cls_tokens: int, frames: int, patches: int) -> AttentionCore:
    """Attention over ``[M cls/proxy tokens, frames x patches]``: each frame's patches attend to the M tokens
    and their own frame (keys in that order, as the official ``forward2``), the M tokens to everything."""
    m, n, length = cls_tokens, frames, patches

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, _, d = q.shape

        def per_frame(x: torch.Tensor) -> torch.Tensor:  # [B, h, N, M + L, d]
            shared = x[:, :, :m].unsqueeze(2).expand(b, h, n, m, d)
            return torch.cat([shared, x[:, :, m:].reshape(b, h, n, length, d)], dim=3)

        frame_out = attend(q[:, :, m:].reshape(b, h, n, length, d), per_frame(k), per_frame(v))
        cls_out = attend(q[:, :, :m], k, v)
        return torch.cat([cls_out, frame_out.reshape(b, h, n * length, d)], dim=2)

    return core


@dataclass
class VisionOutput:
    embeddings: torch.Tensor  # [B, M + T*L, D], output of ViPEmbeddings
    last_hidden_state: torch.Tensor  # [B, M + T*L, D], before post_layernorm
    pooled: torch.Tensor  # [B, D], post_layernorm of the CLS token


class ViPVisionTransformer(nn.Module):
    """``CLIPVisionTransformer`` of CLIP-ViP (``pre_layrnorm`` is the official spelling)."""

    def __init__(self, config: ClipVipConfig):
        super().__init__()
        v = config.vision
        self.cls_tokens = 1 + config.add_cls_num
        self.embeddings = ViPEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(v.hidden_size)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            HFEncoderLayer(v.hidden_size, v.num_attention_heads, v.intermediate_size, v.hidden_act)
            for _ in range(v.num_hidden_layers)
        )
        self.post_layernorm = nn.LayerNorm(v.hidden_size)

    def forward(self, pixels: torch.Tensor) -> VisionOutput:
        embeddings, x = self._encode(pixels, class_token_only=False)
        return VisionOutput(embeddings, x, self.post_layernorm(x[:, 0]))

    def pooled(self, pixels: torch.Tensor, class_token_only: bool) -> torch.Tensor:
        """``forward(pixels).pooled``; with ``class_token_only`` the last layer computes the CLS token alone, the
        only one the pooled output reads (``vfeat/models/class_token.py``)."""
        return self.post_layernorm(self._encode(pixels, class_token_only)[1][:, 0])

    def _encode(self, pixels: torch.Tensor, class_token_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embeddings(pixels)
        frames = pixels.shape[1]
        core = proxy_guided_core(self.cls_tokens, frames, (embeddings.shape[1] - self.cls_tokens) // frames)
        x = self.pre_layrnorm(embeddings)
        *first, last = self.encoder.layers
        for layer in first:
            x = layer(x, core)
        if class_token_only:  # the CLS row of the proxy-guided core: CLS attends to every token
            return embeddings, last(x, attend, queries=1)
        return embeddings, last(x, core)


class ClipVipModel(nn.Module):
    """The official ``CLIPModel`` of ``CLIP_ViP.py`` (the ``clipmodel`` inside ``VidCLIP``)."""

    def __init__(self, config: ClipVipConfig):
        super().__init__()
        t = config.text
        self.text_model = HFTextTransformer(
            t.vocab_size, t.max_position_embeddings, t.hidden_size, t.num_hidden_layers, t.num_attention_heads,
            t.intermediate_size, t.hidden_act,
        )
        self.vision_model = ViPVisionTransformer(config)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(t.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def get_image_features(self, pixels: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> raw video embeddings ``[B, projection_dim]``."""
        return self.visual_projection(self.vision_model.pooled(pixels, class_token_only))

    def text_pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LN state of the end token (the largest id of each row, first occurrence)."""
        hidden = self.text_model(input_ids, attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), input_ids.argmax(dim=-1)]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_projection(self.text_pooled(input_ids, attention_mask))


def hf_clip_tokenize(texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """What HF ``CLIPTokenizerFast(texts, max_length, padding="max_length", truncation=True)`` returns, from
    OpenAI's BPE: ``[SOT] + first (max_length - 2) tokens + [EOT]``, padded with EOT (49407), mask 1 on tokens."""
    bpe = openai_bpe()
    ids = torch.full((len(texts), max_length), bpe.eot_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [bpe.sot_token_id, *bpe.encode(text)[: max_length - 2], bpe.eot_token_id]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# --- the vfeat surface ---------------------------------------------------------------------------------------


class ClipVipEncoder(VideoEncoder):
    """CLIP-ViP behind :class:`VideoEncoder`: one raw embedding per clip, no per-frame output."""

    frame_level = False
    frame_outputs = False  # one embedding per clip: the store holds clips only

    def __init__(self, config: ClipVipConfig, identity: ModelIdentity):
        super().__init__()
        self.config = config
        self.clipmodel = ClipVipModel(config)
        self.embed_dim = config.projection_dim
        self.clip_len = config.temporal_size
        self.preprocess = Preprocess(config.vision.image_size, OPENAI_MEAN, OPENAI_STD, "bicubic")
        self.identity = identity
        self.class_token_only = class_token.switched_on()

    def encode_video(self, pixels: torch.Tensor) -> VideoEmbeddings:
        self.require_image_tower()
        if pixels.dim() != 5:
            raise ModelError(f"CLIP-ViP encodes [B, T, 3, H, W] clips, got a tensor of shape {tuple(pixels.shape)}")
        weight = self.clipmodel.visual_projection.weight  # the model's device and (possibly cast) dtype
        clips = self.clipmodel.get_image_features(pixels.to(weight.device, weight.dtype), self.class_token_only)
        return VideoEmbeddings(frames=None, clips=clips)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return hf_clip_tokenize(texts, self.config.max_txt_len)

    def encode_text_tokens(self, tokens: Any) -> torch.Tensor:
        """``{"input_ids", "attention_mask"}`` (or bare ids: no padding mask, as the official code without one)."""
        if isinstance(tokens, Mapping):
            ids, mask = tokens["input_ids"], tokens.get("attention_mask")
        else:
            ids, mask = tokens, None
        mask = None if mask is None else mask.to(self.device)
        return self.clipmodel.get_text_features(ids.to(self.device), mask)

    @property
    def logit_scale(self) -> float:
        return float(self.clipmodel.logit_scale.detach().float().exp())


def load_checkpoint(encoder: ClipVipEncoder, path: str, skip: tuple[str, ...] = ()) -> None:
    """Load an official ``VidCLIP`` state dict (``clipmodel.`` keys; fp32 or the fp16 of apex O2 runs, copied
    into the fp32 model; the stored logit_scale kept). ``position_ids`` buffers, which newer HF versions do
    not save, are filled with their fixed values. Keys under the ``skip`` prefixes (a tower dropped next)
    are left out."""
    state = strip_prefix(read_state_dict(path), "module.")
    if not any(k.startswith(PREFIX) for k in state):
        state = {PREFIX + k: v for k, v in state.items()}  # a bare CLIPModel state dict
    own = encoder.state_dict()
    for key in (k for k in own if k.endswith("position_ids") and k not in state):
        state[key] = own[key]
    load_strict(encoder, state, source=path, skip=skip)


def build(spec: Mapping[str, Any], pretrained: str, config_path: str | None = None, without: str | None = None,
          **options: Any) -> ClipVipEncoder:
    """A CLIP-ViP encoder from a registry spec; ``pretrained`` is an official checkpoint path or ``"none"``;
    ``without``: ``"text"`` or ``"image"``, the tower to drop (and not to load).

    Options: ``architecture`` (as recorded in an identity; a rebuild whose resolved architecture differs
    is refused)."""
    refuse_other_options(spec.get("name", "clip-vip"), "CLIP-ViP", options, {"architecture"})
    config = resolve_config(spec.get("architecture"), config_path)
    check_expected("architecture", options.get("architecture"), config.as_official(), spec.get("name", "clip-vip"))
    sha = None
    if pretrained != "none":
        sha = weight_sha256(pretrained, spec)
    identity = ModelIdentity(
        name=spec["name"],
        pretrained=recorded_path(pretrained),
        checkpoint_sha256=sha,
        options={"config_path": recorded_path(config_path), "architecture": config.as_official()},
    )
    if pretrained == "none":
        encoder = ClipVipEncoder(config, identity)
    else:
        with no_random_init():  # load_checkpoint loads every weight strictly
            encoder = ClipVipEncoder(config, identity)
        load_checkpoint(encoder, pretrained, encoder.tower_prefixes(without))
    if without:
        encoder.drop_tower(without)
    return encoder.eval()
