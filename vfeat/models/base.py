"""The one surface every model family implements.

The pipeline and the evaluator only talk to :class:`VideoEncoder`; a family file (``clip.py``,
``clip_vip.py``, ``open_vclip.py``) adapts its network to it. Plain CLIP is the case where frames are
encoded independently, so the pipeline may batch frames across videos (``frame_level = True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from vfeat.errors import ModelError


@dataclass(frozen=True)
class Preprocess:
    """How frames must be prepared: resize the short side to ``image_size`` (``interpolation``) and
    centre-crop ``image_size`` x ``image_size`` (``resize_mode`` "shortest"; "squash": straight to
    ``image_size`` x ``image_size``; "longest": the long side to ``image_size``, padded with black), scale to
    [0, 1], normalise with ``mean``/``std``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }


def refuse_other_options(model: str, family: str, given: Iterable[str], accepted: Iterable[str],
                         flags: Iterable[str] = ()) -> None:
    """A family's build refuses options it does not take, named as the flags a user typed (``--wise-with``,
    not ``wise_with``); ``accepted`` also holds the records a rebuild passes (``architecture``)."""
    other = sorted(set(given) - set(accepted))
    if other:
        typed = ", ".join("--" + k.replace("_", "-") for k in other)
        takes = ", ".join("--" + f.replace("_", "-") for f in sorted(flags)) or "none of these options"
        raise ModelError(f"{model}: {typed} {'does' if len(other) == 1 else 'do'} not apply to {family} (it takes {takes}).")


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VideoEmbeddings:
    """Output of :meth:`VideoEncoder.encode_video`: raw (not normalised) projected embeddings."""

    frames: torch.Tensor | None  # [B, T, D], or None for models with no per-frame output (CLIP-ViP)
    clips: torch.Tensor  # [B, D]


@dataclass
class ModelIdentity:
    """What a store records so that evaluation can rebuild exactly the same model (text tower included)."""

    name: str  # registry / open_clip name as the user gave it, e.g. "ViT-B/16" or "clip-vip-b32"
    pretrained: str  # tag ("openai", "laion2b_s32b_b82k"), a file path, or "none" (random init)
    checkpoint_sha256: str | None = None  # of the weight file when pretrained is a path
    options: dict[str, Any] = field(default_factory=dict)  # family options that change the numbers

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "options": dict(self.options),
        }


class VideoEncoder(nn.Module):
    """Common surface of every model vfeat runs.

    Subclasses set ``embed_dim``, ``preprocess``, ``frame_level`` and ``identity`` and implement
    :meth:`encode_video`, :meth:`tokenize` and :meth:`encode_text_tokens`.
    """

    embed_dim: int
    preprocess: Preprocess
    identity: ModelIdentity
    #: True when each frame's embedding does not depend on the other frames (plain CLIP), so frames of
    #: different videos may share a batch and ``encode_frames`` is available.
    frame_level: bool = False
    #: False for models with clip-level outputs only (CLIP-ViP): the store then holds clips only.
    frame_outputs: bool = True
    #: Frames per clip the model was trained with (None: any number).
    clip_len: int | None = None
    #: What a user should know about the settings the model was built with (not wrong, but not what its
    #: release evaluates with): said once per extraction run, as a warning line.
    advice: tuple[str, ...] = ()
    #: The vision tower's last block runs for the class token only, the one token the embedding reads
    #: (``vfeat/models/class_token.py``); set by the families that can, False turns it off.
    class_token_only: bool = False

    def encode_video(self, pixels: torch.Tensor) -> VideoEmbeddings:
        """``pixels`` [B, T, 3, H, W], preprocessed -> per-frame [B, T, D] (or None) and clip [B, D]."""
        raise NotImplementedError

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` [N, 3, H, W] -> [N, D]. Only for ``frame_level`` models."""
        raise NotImplementedError(f"{type(self).__name__} encodes whole clips, not single frames")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Texts -> the token tensor(s) :meth:`encode_text_tokens` takes."""
        raise NotImplementedError

    def encode_text_tokens(self, tokens: Any) -> torch.Tensor:
        """Tokens from :meth:`tokenize` (or the official token ids) -> raw text embeddings [N, D]."""
        raise NotImplementedError

    #: Attributes of the wrapped model that belong to the text side only (open_clip's CLIP and CustomTextCLIP,
    #: CLIP-ViP, Open-VCLIP); ``logit_scale`` is kept, the store records it.
    TEXT_PARTS = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                  "attn_mask", "text", "text_model")
    #: ... and to the image side only.
    IMAGE_PARTS = ("visual", "vision_model", "visual_projection")
    text_dropped: bool = False
    image_dropped: bool = False

    def drop_tower(self, tower: str) -> None:
        """Free the ``"text"`` or ``"image"`` tower: extraction never embeds text (about 40% of a ViT-B CLIP's
        weights, RAM or GPU memory the batches can use), evaluation never encodes frames (70% of ViT-L/14's)."""
        for owner in self.children():  # the wrapped model (open_clip's CLIP, ClipVipModel, OpenVClipModel)
            for name in tower_parts(owner, tower):
                setattr(owner, name, None)
        if tower == "text":
            self.text_dropped = True
        else:
            self.image_dropped = True

    def drop_text_tower(self) -> None:
        self.drop_tower("text")

    def tower_prefixes(self, tower: str | None) -> tuple[str, ...]:
        """State-dict key prefixes of the ``tower``'s parts (none for ``None``), for a load that leaves them out
        (:func:`load_strict`'s ``skip``) because the tower is dropped right after."""
        if tower is None:
            return ()
        return tuple(f"{child}.{name}" for child, owner in self.named_children() for name in tower_parts(owner, tower))

    def require_image_tower(self) -> None:
        if self.image_dropped:
            raise RuntimeError("this encoder was loaded for text only (towers='text'): load the model again to encode frames")

    def encode_text(self, texts: Sequence[str] | torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Texts or already tokenised ids -> raw (not normalised) text embeddings [N, D]."""
        if self.text_dropped:
            raise RuntimeError("this encoder was loaded for extraction (text tower dropped): load the model again to embed text")
        if isinstance(texts, (torch.Tensor, dict)):
            return self.encode_text_tokens(texts)
        return self.encode_text_tokens(self.tokenize(list(texts)))

    @property
    def logit_scale(self) -> float:
        """The similarity scale, exp() of the stored parameter."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


#: The towers a model can be loaded without (``load_model(towers=...)`` keeps the other one).
TOWERS = ("text", "image")


def tower_parts(module: nn.Module, tower: str) -> list[str]:
    """Names of ``module``'s direct attributes that belong to ``tower`` (``"text"`` or ``"image"``) only."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, not {tower!r}")
    names = VideoEncoder.TEXT_PARTS if tower == "text" else VideoEncoder.IMAGE_PARTS
    return [n for n in names if n in module._modules or n in module._parameters or n in module._buffers]
