"""``load_model``: the one front door from a model name to a ready :class:`VideoEncoder`."""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import torch

from vfeat.errors import InputError, ModelError
from vfeat.models.base import VideoEncoder
from vfeat.models.registry import check_name, get_spec
from vfeat.models.weights import recorded_path

#: Registry ``family`` -> module with ``build(spec, pretrained, config_path=None, **options)`` and
#: ``input_size(spec_architecture, config_path)``.
FAMILIES = {"clip_vip": "vfeat.models.clip_vip", "open_vclip": "vfeat.models.open_vclip"}

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str, flag: str = "--device") -> torch.device:
    """``auto`` -> the first GPU when there is one, else the CPU; ``cuda`` without a GPU, or a GPU number
    the machine does not have, is an error naming ``flag``."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"Invalid {flag} ({device}). Use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {device}: no CUDA GPU is available on this machine.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"{flag} {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}.")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on GPUs, fp32 on CPUs (bf16 on CPU is faster where supported but opt-in)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise InputError(f"Invalid --precision ({precision}). Choose from: auto, {', '.join(PRECISIONS)}.")
    return PRECISIONS[precision]


#: ``load_model(towers=...)`` -> the tower left out
WITHOUT = {"both": None, "image": "text", "text": "image"}


def load_model(name: str, pretrained: str | None = None, config: str | None = None, device: str = "cpu",
               precision: str = "fp32", towers: str = "both", **options: Any) -> VideoEncoder:
    """Build the model ``name`` with weights ``pretrained`` (tag, path or "none") on ``device``.

    ``config``: an architecture file (open_clip JSON for CLIP; official config for video families).
    ``towers``: ``"image"`` for extraction, ``"text"`` for evaluation: the other tower is dropped, and a
    weight file's load leaves it out (ViT-L/14: 70% of the weights are the image tower's, 30% the text's).
    Family options (``clip_weights``, ``patching_ratio``, ``wise_with``, ``alpha``) pass through.
    """
    if towers not in WITHOUT:
        raise ValueError(f"towers must be one of {sorted(WITHOUT)}, not {towers!r}")
    with torch.random.fork_rng(devices=[]):
        if pretrained == "none":
            torch.manual_seed(0)  # random weights are reproducible, so evaluation rebuilds the same text tower
        encoder = _build(name, pretrained, config, options, WITHOUT[towers])
    if config is not None:  # evaluation must rebuild the same architecture from the store's attributes
        encoder.identity.options.setdefault("model_config", recorded_path(str(config)))
    target = resolve_device(device)
    dtype = resolve_precision(precision, target)
    encoder = encoder.to(target).eval()
    if dtype != torch.float32:
        # the similarity scale stays fp32: the store records it, and bf16 turns OpenAI's 100 into 98.9
        scales = {n: p.detach().clone() for n, p in encoder.named_parameters() if n.endswith("logit_scale")}
        encoder = encoder.to(dtype)
        for n, p in encoder.named_parameters():
            if n in scales:
                p.data = scales[n]
    encoder.compute_dtype = dtype  # type: ignore[attr-defined]
    return encoder


class InputGuess(NamedTuple):
    """What a model will take, guessed before it is loaded (:func:`input_guess`)."""

    image_size: int
    interpolation: str
    frame_level: bool  # frames encoded one by one (CLIP), not whole clips


def input_guess(name: str, config: str | None = None) -> InputGuess | None:
    """The frames the model ``name`` will take, guessed from its configuration before it is loaded (no
    weights, no open_clip import), so that decoding can start meanwhile; ``None`` where only loading tells
    (a hub or local-directory CLIP, a configuration that does not say). A guess: the loaded model's
    :attr:`~VideoEncoder.preprocess` decides, and a run whose guess was wrong starts its decoding again.
    Interpolation: bicubic, that of every OpenAI, CLIP-ViP, Open-VCLIP and nearly every open_clip checkpoint."""
    spec = get_spec(name)
    if spec is not None:  # a video family: the registry's architecture, or the --model-config over it
        if spec["family"] not in FAMILIES:
            return None
        family = importlib.import_module(FAMILIES[spec["family"]])
        try:
            size = family.input_size(spec.get("architecture"), config)
        except Exception:  # noqa: BLE001 - a guess: the load says what is wrong with the configuration
            return None
        return InputGuess(size, "bicubic", frame_level=False)
    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    from vfeat.models import clip

    size = clip.input_size_guess(name, config)
    return None if size is None else InputGuess(size, "bicubic", frame_level=True)


def _build(name: str, pretrained: str | None, config: str | None, options: dict[str, Any], without: str | None) -> VideoEncoder:
    spec = get_spec(name)
    options = {k: v for k, v in options.items() if v is not None}
    if spec is None:
        if config is None:
            check_name(name)
        from vfeat.models import clip

        unknown = set(options) - {"wise_with", "alpha", "cache_dir", "weights_tag"}
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(unknown))
            raise InputError(f"{flags} do{'es' if len(unknown) == 1 else ''} not apply to CLIP model {name} "
                             "(video models only: see `vfeat models`).")
        encoder: VideoEncoder = clip.build(name, pretrained, config_path=config, without=without, **options)
    else:
        family = FAMILIES.get(spec["family"])
        if family is None:
            raise ModelError(f"{name}: unknown family '{spec['family']}' (known: {', '.join(FAMILIES)})")
        if pretrained is None:
            raise ModelError(f"{name} needs --pretrained: a checkpoint file ({spec.get('weights', 'see vfeat models')}) or 'none'.")
        module = importlib.import_module(family)
        encoder = module.build(spec, pretrained, config_path=config, without=without, **options)
    return encoder
