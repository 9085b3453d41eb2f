"""Open-VCLIP (wengzejia1/Open-VCLIP, ICML 2023): OpenAI CLIP whose vision attention looks at neighbour frames.

In every vision block (``expand_temporal_view``) the queries of frame t attend to the keys/values of frame t+1,
frame t-1 and frame t of the same clip, in that order. At the clip edges the missing neighbour is a block of
*zeros*, not a masked one: a zero key scores 0 and so still takes softmax weight (with a zero value), exactly as
the official ``torch_utils/functional.py``; masking it instead moves the edge frames' block outputs by ~0.5.
Each frame keeps its own embedding (post-LN CLS, projected); the clip embedding is their mean. The text tower
is OpenAI's (causal mask, end token = argmax id, zero padding, 77 positions).

Released checkpoints are fine-tuned SWA files ``{"model_state": {"model.<OpenAI name>": ...}}``; at test time
the official code *patches* them with the original CLIP: ``clip[k] * r + finetuned[k] * (1 - r)``
(:func:`patch_state_dict`). ``OpenVClipEncoder.state_dict()`` has the ``model.`` + OpenAI names of those files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vfeat.errors import ModelError
from vfeat.models import class_token
from vfeat.models._layers import (
    AttentionCore,
    LayerNormFP32,
    Transformer,
    attend,
    causal_mask,
    check_expected,
    openai_bpe,
    weight_sha256,
)
from vfeat.models.base import (OPENAI_MEAN, OPENAI_STD, ModelIdentity, Preprocess, VideoEmbeddings, VideoEncoder,
                               refuse_other_options)
from vfeat.models.weights import drop_archive_extras, load_strict, no_random_init, read_state_dict, recorded_path, strip_prefix

PREFIX = "model."
TEMPORAL_MODELING = "expand_temporal_view"


@dataclass(frozen=True)
class OpenVClipConfig:
    """OpenAI ``build_model`` fields plus the clip length ``T``. Heads are stored nowhere: ``None`` means
    width // 64, as the official ``build_model`` derives them for both towers."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_layers: int
    transformer_heads: int | None = None
    vision_heads: int | None = None
    T: int = 8

    @property
    def heads(self) -> tuple[int, int]:
        """(vision, text) heads."""
        return (self.vision_heads or self.vision_width // 64, self.transformer_heads or self.transformer_width // 64)


def derive_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The architecture an OpenAI-named ViT state dict implies, as OpenAI's ``build_model`` reads it."""
    try:
        width = state_dict["visual.conv1.weight"].shape[0]
        patch = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return {
            "embed_dim": state_dict["text_projection"].shape[1],
            "image_resolution": patch * grid,
            "vision_layers": len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")}),
            "vision_width": width,
            "vision_patch_size": patch,
            "context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "transformer_width": state_dict["ln_final.weight"].shape[0],
            "transformer_layers": len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
        }
    except KeyError as exc:
        raise ModelError(f"not an OpenAI CLIP ViT state dict: no {exc.args[0]!r}") from None


def resolve_config(
    spec_architecture: Mapping[str, Any] | None,
    config_path: str | None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    source: str = "checkpoint",
) -> OpenVClipConfig:
    """The registry's ``architecture``, overridden by the JSON ``config_path``, checked against (and completed
    from) the checkpoint's shapes: a checkpoint of another size than the config is an error, not a warning."""
    arch = dict(spec_architecture or {})
    if config_path:
        try:
            arch.update(json.loads(Path(config_path).read_text()))
        except FileNotFoundError:
            raise ModelError(f"{config_path}: Open-VCLIP config not found") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{config_path}: could not read the Open-VCLIP config ({exc})") from exc
    temporal = arch.get("temporal_modeling_type", TEMPORAL_MODELING)
    if temporal != TEMPORAL_MODELING:
        raise ModelError(f"temporal_modeling_type {temporal!r} is not supported (only {TEMPORAL_MODELING!r})")
    if state_dict is not None:
        for key, value in derive_architecture(state_dict).items():
            if key in arch and int(arch[key]) != int(value):
                raise ModelError(f"{source}: the weights have {key} {value} but the architecture says {arch[key]}")
            arch[key] = int(value)
    names = {f.name for f in fields(OpenVClipConfig)}
    try:
        return OpenVClipConfig(**{k: (None if v is None else int(v)) for k, v in arch.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{config_path or 'registry architecture'}: invalid Open-VCLIP architecture ({exc})") from exc


def input_size(spec_architecture: Mapping[str, Any] | None, config_path: str | None) -> int:
    """The frame size the model will take, from its configuration alone (no weights; a checkpoint of
    another size fails its load): decoding starts on it while the model loads."""
    return resolve_config(spec_architecture, config_path).image_resolution


def patch_state_dict(
    finetuned: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor], ratio: float, source: str = "patching"
) -> dict[str, torch.Tensor]:
    """Weight patching of ``tools/test_net.py``: ``original[k] * ratio + finetuned[k] * (1 - ratio)``.

    ``ratio`` is the weight of the ORIGINAL CLIP. The product with the original is computed in the original
    file's dtype (fp16 for the conv/linear/projection tensors of OpenAI archives) before the sum promotes it to
    fp32, as in the official line; doing it in fp32 moves r = 0.3 embeddings by ~2e-4. Keys only in the
    fine-tuned file are kept as they are; keys only in the original, or shapes that differ, are errors."""
    extra = sorted(set(original) - set(finetuned))
    if extra:
        raise ModelError(f"{source}: the original CLIP has {len(extra)} key(s) the fine-tuned model lacks: {', '.join(extra[:5])}")
    wrong = [k for k in original if original[k].shape != finetuned[k].shape]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"{source}: original CLIP and fine-tuned weights differ in shape ({k}: {tuple(original[k].shape)} vs "
            f"{tuple(finetuned[k].shape)}); is the original CLIP of the same size?"
        )
    return {k: (original[k] * ratio + v * (1 - ratio) if k in original else v) for k, v in finetuned.items()}


# --- the network ---------------------------------------------------------------------------------------------


def neighbour_frames_core(frames: int) -> AttentionCore:
    """``expand_temporal_view``: keys/values of each frame = [next frame, previous frame, itself] of its clip,
    zero-filled (not masked) where the neighbour does not exist. Rows are clip-major ``[B*T, heads, L, d]``."""

    def expand(x: torch.Tensor) -> torch.Tensor:
        n, h, length, d = x.shape
        x = x.reshape(n // frames, frames, h, length, d)
        zero = x.new_zeros(n // frames, 1, h, length, d)
        following = torch.cat([x[:, 1:], zero], dim=1)
        preceding = torch.cat([zero, x[:, :-1]], dim=1)
        return torch.cat([following, preceding, x], dim=3).reshape(n, h, 3 * length, d)

    return lambda q, k, v: attend(q, expand(k), expand(v))


class TemporalVisionTransformer(nn.Module):
    """OpenAI's ``VisionTransformer`` names (``conv1``, ``ln_pre``, ``transformer``, ``ln_post``, ``proj``)."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNormFP32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNormFP32(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor, frames_per_clip: int, class_token_only: bool = False) -> torch.Tensor:
        """``[B*T, 3, H, W]`` clip-major -> ``[B*T, output_dim]``. ``class_token_only``: the last block for the
        class token alone, the only token the embedding reads (``vfeat/models/class_token.py``)."""
        if x.shape[0] % frames_per_clip:
            raise ModelError(f"{x.shape[0]} frames do not split into clips of {frames_per_clip}")
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x), neighbour_frames_core(frames_per_clip), 1 if class_token_only else None)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenVClipModel(nn.Module):
    """The official ``WCLIP``: temporal vision tower + OpenAI text tower, OpenAI parameter names."""

    def __init__(self, config: OpenVClipConfig):
        super().__init__()
        vision_heads, text_heads = config.heads
        width = config.transformer_width
        self.visual = TemporalVisionTransformer(
            config.image_resolution, config.vision_patch_size, config.vision_width, config.vision_layers,
            vision_heads, config.embed_dim,
        )
        self.transformer = Transformer(width, config.transformer_layers, text_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(max(config.context_length, 77), width))
        self.ln_final = LayerNormFP32(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_text(config)

    def _init_text(self, config: OpenVClipConfig) -> None:
        """OpenAI's ``initialize_parameters`` for the text side (random-init models only)."""
        width, layers = config.transformer_width, config.transformer_layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)

    def encode_image(self, frames: torch.Tensor, frames_per_clip: int, class_token_only: bool = False) -> torch.Tensor:
        return self.visual(frames, frames_per_clip, class_token_only)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        length = text.shape[1]
        if length > self.positional_embedding.shape[0]:
            raise ModelError(f"Text of {length} tokens is longer than the model's {self.positional_embedding.shape[0]} positions")
        x = self.token_embedding(text) + self.positional_embedding[:length]
        mask = causal_mask(length, x.dtype, x.device)
        x = self.ln_final(self.transformer(x, lambda q, k, v: attend(q, k, v, mask)))
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection


# --- the vfeat surface ---------------------------------------------------------------------------------------


class OpenVClipEncoder(VideoEncoder):
    """Open-VCLIP behind :class:`VideoEncoder`: per-frame embeddings (which depend on the clip's other frames),
    clip embedding = their mean. Frames are grouped into clips by the ``T`` axis of the input, which should be
    the ``clip_len`` the model was trained with."""

    frame_level = False

    def __init__(self, config: OpenVClipConfig, identity: ModelIdentity):
        super().__init__()
        self.config = config
        self.model = OpenVClipModel(config)
        self.embed_dim = config.embed_dim
        self.clip_len = config.T
        self.preprocess = Preprocess(config.image_resolution, OPENAI_MEAN, OPENAI_STD, "bicubic")
        self.identity = identity
        self.class_token_only = class_token.switched_on()

    def encode_video(self, pixels: torch.Tensor) -> VideoEmbeddings:
        self.require_image_tower()
        if pixels.dim() != 5:
            raise ModelError(f"Open-VCLIP encodes [B, T, 3, H, W] clips, got a tensor of shape {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        weight = self.model.visual.conv1.weight
        frames = self.model.encode_image(pixels.flatten(0, 1).to(weight.device, weight.dtype), t, self.class_token_only)
        frames = frames.reshape(b, t, -1)
        return VideoEmbeddings(frames=frames, clips=frames.float().mean(dim=1))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """OpenAI's ``clip.tokenize``: SOT + BPE + EOT, zero padded to the context length (truncated to fit)."""
        return openai_bpe()(list(texts), context_length=self.config.context_length)

    def encode_text_tokens(self, tokens: Any) -> torch.Tensor:
        ids = tokens["input_ids"] if isinstance(tokens, Mapping) else tokens
        return self.model.encode_text(ids.to(self.device))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())


def _openai_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released files wrap OpenAI names in ``model.`` (and ``module.`` when saved from DDP)."""
    return drop_archive_extras(strip_prefix(strip_prefix(state, "module."), PREFIX))


def build(spec: Mapping[str, Any], pretrained: str, config_path: str | None = None, without: str | None = None,
          **options: Any) -> OpenVClipEncoder:
    """An Open-VCLIP encoder from a registry spec; ``pretrained`` is a fine-tuned checkpoint path or ``"none"``;
    ``without``: ``"text"`` or ``"image"``, the tower to drop (and not to load).

    Options: ``clip_weights`` (the original CLIP: OpenAI archive, ``{"model_state": ...}`` or a state dict),
    ``patching_ratio`` r in [0, 1] (weight of the original CLIP, as ``TEST.PATCHING_RATIO``), and the records
    of an identity (``architecture``, ``clip_weights_sha256``), which a rebuild checks."""
    name = spec.get("name", "open-vclip")
    refuse_other_options(name, "Open-VCLIP", options, {"clip_weights", "patching_ratio", "architecture", "clip_weights_sha256"},
                         flags=("clip_weights", "patching_ratio"))
    ratio = float(options.get("patching_ratio") or 0.0)
    clip_weights = options.get("clip_weights")
    if not 0.0 <= ratio <= 1.0:
        raise ModelError(f"Invalid --patching-ratio ({ratio}). It must be in [0, 1] (the weight of the original CLIP).")
    if ratio > 0 and not clip_weights:
        raise ModelError(f"{name}: --patching-ratio {ratio} needs --clip-weights, the original CLIP the model is patched with")
    if ratio > 0 and pretrained == "none":
        raise ModelError(f"{name}: --patching-ratio {ratio} needs a fine-tuned checkpoint, not --pretrained none")

    state, sha, clip_sha = None, None, None
    if pretrained != "none":
        sha = weight_sha256(pretrained, spec)
        state = _openai_names(read_state_dict(pretrained))
        if ratio > 0:
            clip_sha = weight_sha256(clip_weights, spec, what="original CLIP weights (clip_weights)")
            check_expected("clip_weights_sha256", options.get("clip_weights_sha256"), clip_sha, clip_weights)
            original = _openai_names(read_state_dict(clip_weights))
            state = patch_state_dict(state, original, ratio, source=f"{pretrained} + {clip_weights}")
    config = resolve_config(spec.get("architecture"), config_path, state, source=str(pretrained))
    check_expected("architecture", options.get("architecture"), asdict(config), name)
    identity = ModelIdentity(
        name=spec["name"],
        pretrained=recorded_path(pretrained),
        checkpoint_sha256=sha,
        options={
            "config_path": recorded_path(config_path),
            "architecture": asdict(config),
            "patching_ratio": ratio,
            "clip_weights": recorded_path(clip_weights) if ratio > 0 else None,
            "clip_weights_sha256": clip_sha,
        },
    )
    if state is None:
        encoder = OpenVClipEncoder(config, identity)
    else:
        with no_random_init():  # every weight is loaded strictly next
            encoder = OpenVClipEncoder(config, identity)
        skip = encoder.tower_prefixes(without)
        load_strict(encoder, {PREFIX + k: v for k, v in state.items()}, source=str(pretrained), skip=skip)
    if state is not None and ratio == 0:
        encoder.advice = (f"{name}: the fine-tuned weights as they are (no --patching-ratio); Open-VCLIP's zero-shot "
                          f"evaluation patches them with the original CLIP, e.g. --clip-weights ViT-B-16.pt --patching-ratio 0.5",)
    if without:
        encoder.drop_tower(without)
    return encoder.eval()
