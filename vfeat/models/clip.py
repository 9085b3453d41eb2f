"""Plain CLIP (every open_clip architecture) behind the :class:`VideoEncoder` surface.

Frames are encoded independently, so this is the ``frame_level`` case: the pipeline batches frames of
many videos together, and a clip's embedding is the mean of its frames' embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from vfeat.errors import InputError, ModelError
from vfeat.models.base import ModelIdentity, Preprocess, VideoEmbeddings, VideoEncoder, tower_parts
from vfeat.models.class_token import class_token_only, image_embedding
from vfeat.models.registry import OPENAI_ALIASES, open_clip_arch
from vfeat.models.weights import (drop_archive_extras, interpolate_state_dicts, load_strict, no_random_init, read_state_dict,
                                  recorded_path, require_weight_file, sha256_file, strip_prefix, under_prefixes)

RANDOM = "none"


class ClipEncoder(VideoEncoder):
    frame_level = True

    def __init__(self, model: torch.nn.Module, make_tokenizer: Callable[[], Any], preprocess: Preprocess,
                 identity: ModelIdentity) -> None:
        super().__init__()
        self.model = model
        self._make_tokenizer = make_tokenizer  # built on first use: extraction never tokenizes
        self._tokenizer: Any = None
        self.preprocess = preprocess
        self.identity = identity
        self.embed_dim = int(getattr(model.visual, "output_dim", 0) or _probe_dim(model, preprocess))
        self.class_token_only = class_token_only(model.visual)

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        self.require_image_tower()
        weight = self.model.visual.conv1.weight if hasattr(self.model.visual, "conv1") else next(self.model.visual.parameters())
        pixels = pixels.to(weight.device, weight.dtype)  # fp32 pixels into an fp16/bf16 model (the pipeline casts already)
        if self.class_token_only:  # the same embeddings as encode_image, with less of the last block
            return image_embedding(self.model.visual, pixels)
        return self.model.encode_image(pixels)

    def encode_video(self, pixels: torch.Tensor) -> VideoEmbeddings:
        b, t = pixels.shape[:2]
        frames = self.encode_frames(pixels.flatten(0, 1)).reshape(b, t, -1)
        return VideoEmbeddings(frames=frames, clips=frames.float().mean(dim=1))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer(list(texts))

    def encode_text_tokens(self, tokens: Any) -> torch.Tensor:
        if isinstance(tokens, dict):
            tokens = tokens["input_ids"]
        return self.model.encode_text(tokens.to(self.device))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())


def _probe_dim(model: torch.nn.Module, preprocess: Preprocess) -> int:
    with torch.no_grad():
        size = preprocess.image_size
        return int(model.encode_image(torch.zeros(1, 3, size, size)).shape[-1])


def _register_config(config_path: str) -> str:
    """Make an open_clip model-config JSON usable by name (its file stem)."""
    import open_clip

    path = Path(config_path)
    if not path.is_file():
        raise ModelError(f"--model-config {config_path}: file not found")
    open_clip.add_model_config(path)
    return path.stem


def input_size_guess(name: str, config_path: str | None = None) -> int | None:
    """The input size the model ``name`` will have, read from its architecture file without importing
    open_clip (1-2 s) or reading weights: the decode processes can start while the model loads. A guess
    (``None`` when the file says nothing plain): :func:`build`'s model has the last word."""
    if config_path:
        path = Path(config_path)
    else:
        spec = importlib.util.find_spec("open_clip")  # finds the package without running it
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "model_configs" / f"{open_clip_arch(name)}.json"
    try:
        size = json.loads(path.read_text())["vision_cfg"]["image_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) else None


def _config_sha256(config: dict[str, Any] | None) -> str:
    """The architecture a configuration file registered (open_clip's dict), hashed as canonical JSON: the
    same for a copy under another name, another for an edit that keeps every weight's shape (pool_type)."""
    return hashlib.sha256(json.dumps(config or {}, sort_keys=True).encode()).hexdigest()


def build(name: str, pretrained: str | None = None, config_path: str | None = None, wise_with: str | None = None,
          alpha: float | None = None, cache_dir: str | None = None, without: str | None = None,
          weights_tag: str | None = None) -> ClipEncoder:
    """Build a CLIP encoder.

    ``pretrained``: an open_clip tag (downloaded once into the hub cache), a local weight file (OpenAI
    TorchScript archive, open_clip / OpenAI state dict), or ``"none"`` for random weights (tests and
    benchmarks only). OpenAI names default to their ``openai`` weights. ``wise_with`` + ``alpha``:
    WiSE-FT, weights ``(1 - alpha) * pretrained + alpha * wise_with``. ``without``: ``"text"`` or
    ``"image"``, the tower to drop (a weight file's load then leaves its weights out). ``weights_tag``: the
    open_clip tag whose weights a local file holds, so that it is preprocessed (mean, std, resize mode) and
    activated (QuickGELU or GELU) as the tag is, not as the architecture's defaults.
    """
    import open_clip

    arch = _register_config(config_path) if config_path else open_clip_arch(name)
    if arch not in open_clip.list_models():
        raise ModelError(f"Unknown CLIP architecture '{name}'. Run `vfeat models` for the list.")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        if "openai" in tags:
            pretrained = "openai"
        else:
            raise ModelError(f"--pretrained is required for {name}: one of {', '.join(tags) or '(no published tags)'}, a local file, or 'none'.")
    is_file = pretrained != RANDOM and (os.path.sep in pretrained or os.path.exists(pretrained) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))
    tag_cfg: dict[str, Any] = {}
    if weights_tag is not None:
        if not is_file:
            raise InputError("--weights-tag names the tag whose weights a local --pretrained FILE holds; "
                             f"--pretrained {pretrained} is not a file.")
        if weights_tag not in tags:
            raise InputError(f"--weights-tag {weights_tag} is not a tag of {arch}; tags: {', '.join(tags) or '(none)'}.")
        tag_cfg = dict(open_clip.get_pretrained_cfg(arch, weights_tag))
    if is_file:
        require_weight_file(pretrained)  # before the model is built
        if weights_tag is not None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        else:
            quick_gelu = name in OPENAI_ALIASES  # OpenAI's own weights were trained with QuickGELU
    elif pretrained == RANDOM:
        quick_gelu = False
    elif pretrained in tags:
        quick_gelu = bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu", False))
    else:
        raise ModelError(
            f"--pretrained '{pretrained}' is neither a file nor a known tag for {arch}; tags: {', '.join(tags) or '(none)'}."
        )
    config_quick_gelu = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    identity_options: dict[str, Any] = {"architecture": arch, "quick_gelu": quick_gelu or config_quick_gelu}
    checkpoint_sha = None
    if pretrained in tags and not is_file:
        model = _download(arch, pretrained, quick_gelu, cache_dir)
    elif is_file:
        with ThreadPoolExecutor(max_workers=1) as pool:
            checksum = pool.submit(sha256_file, pretrained)  # read beside the load: hashlib releases the GIL
            with no_random_init(), _without_random_init_warning():  # _load_file loads every weight strictly
                model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
            # the tower dropped below is not loaded at all (a WiSE mix needs every weight of both files)
            skip = tuple(tower_parts(model, without)) if without and wise_with is None else ()
            _load_file(model, pretrained, skip)
            checkpoint_sha = checksum.result()
    else:
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    if wise_with is not None:
        if alpha is None:
            raise ModelError("--wise-with needs --alpha (the weight of the second checkpoint, in [0, 1]).")
        second = _file_state_dict(wise_with)
        mixed = interpolate_state_dicts(_persistent_state(model), second, alpha, source=f"--wise-with {wise_with}")
        load_strict(model, mixed, wise_with)
        identity_options.update({"wise_with": recorded_path(str(wise_with)), "wise_sha256": sha256_file(wise_with), "alpha": float(alpha)})
    model.eval()
    if tag_cfg:  # as open_clip's own load of the tag: its mean, std, interpolation and resize mode
        from open_clip.transform import merge_preprocess_dict

        open_clip.set_model_preprocess_cfg(model, merge_preprocess_dict(open_clip.get_model_preprocess_cfg(model), tag_cfg))
        identity_options["weights_tag"] = weights_tag
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    preprocess = Preprocess(
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")),
    )
    if config_path:  # a file may change, or another file take its name: known by its content
        identity_options["model_config"] = recorded_path(str(config_path))
        identity_options["config_sha256"] = _config_sha256(open_clip.get_model_config(arch))
    recorded = recorded_path(str(pretrained)) if is_file else str(pretrained)
    identity = ModelIdentity(name=name, pretrained=recorded, checkpoint_sha256=checkpoint_sha, options=identity_options)
    encoder = ClipEncoder(model, lambda: _tokenizer(arch, name), preprocess, identity)
    if without:
        encoder.drop_tower(without)
    return encoder


def _tokenizer(arch: str, name: str) -> Any:
    """open_clip's tokenizer of ``arch``; SigLIP's and other Hugging Face tokenizers need ``transformers``,
    which vfeat does not require (extraction never tokenizes): one clear error where it is missing."""
    import open_clip

    try:
        return open_clip.get_tokenizer(arch)
    except (ImportError, RuntimeError) as exc:
        if "transformers" not in str(exc):
            raise
        raise ModelError(f"{name}: its text tokenizer needs the transformers package: pip install transformers") from None


class _RandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that a model built without a tag is "initialized randomly"; not so
    when vfeat loads a weight file into it next, and a Python caller would see the false warning."""
    quiet = _RandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def _persistent_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _file_state_dict(path: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The file's weights in fp32 (OpenAI's archives are fp16), but for those under the ``skip`` prefixes."""
    state = drop_archive_extras(read_state_dict(path))
    if all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    return {k: v.float() if v.is_floating_point() and not under_prefixes(k, skip) else v for k, v in state.items()}


def _load_file(model: torch.nn.Module, path: str, skip: tuple[str, ...] = ()) -> None:
    """Every weight of ``path`` into ``model``, strictly, but for those under the ``skip`` prefixes."""
    state = _file_state_dict(path, skip)
    own = model.state_dict()
    # Non-persistent buffers some versions save (attn_mask) are not weights.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("attn_mask")}
    load_strict(model, state, path, skip)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _download(arch: str, tag: str, quick_gelu: bool, cache_dir: str | None) -> torch.nn.Module:
    """Weights by tag through open_clip (hub cache first). Offline, only the cache is tried, so a missing
    weight fails at once with one clear message instead of minutes of retries."""
    import logging

    import huggingface_hub.constants as hub_constants
    import open_clip

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    offline_before = hub_constants.HF_HUB_OFFLINE
    if not offline_before and not _hub_reachable():
        hub_constants.HF_HUB_OFFLINE = True
    try:
        with no_random_init():  # open_clip loads the checkpoint strictly, and require_pretrained makes sure it did
            return open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu, cache_dir=cache_dir,
                                          require_pretrained=True)
    except Exception:  # network, hub and cache errors come in many types
        raise ModelError(
            f"Could not get the '{tag}' weights for {arch}: they are not in the cache and could not be downloaded. "
            f"Pass a local copy of them instead: --pretrained /path/to/{arch}.pt --weights-tag {tag} (an OpenAI .pt "
            "archive or an open_clip state dict; the tag gives them its preprocessing), or run once online to fill the cache."
        ) from None
    finally:
        hub_constants.HF_HUB_OFFLINE = offline_before
