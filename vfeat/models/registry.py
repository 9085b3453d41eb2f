"""Model names: vfeat's own registry (``configs/models/*.yaml``, the video families), OpenAI's names, and
every open_clip architecture / pretrained tag. One place answers "what can I pass to --model?"."""

from __future__ import annotations

import difflib
import fnmatch
from functools import lru_cache
from typing import Any

import yaml

from vfeat._resources import config_dir
from vfeat.errors import InputError, ModelError

#: OpenAI's released names -> (open_clip architecture, default weights). OpenAI weights use QuickGELU.
OPENAI_ALIASES: dict[str, str] = {
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
}

SPEC_KEYS = {"name", "family", "description", "weights", "architecture", "default_sampling", "preprocess", "notes"}


@lru_cache(maxsize=1)
def _specs() -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    folder = config_dir("models")
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        spec = yaml.safe_load(path.read_text()) or {}
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise ModelError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
        for key in ("name", "family"):
            if key not in spec:
                raise ModelError(f"{path}: missing required key '{key}'")
        specs[spec["name"]] = spec
    return specs


def get_spec(name: str) -> dict[str, Any] | None:
    """The registry entry of a video-family model, or None for CLIP names."""
    spec = _specs().get(name)
    return dict(spec) if spec else None


def open_clip_arch(name: str) -> str:
    """open_clip architecture for a CLIP name (OpenAI alias or open_clip name)."""
    return OPENAI_ALIASES.get(name, name.replace("/", "-"))


def list_models(pattern: str = "*") -> list[str]:
    """Every accepted --model name matching a glob ``pattern`` (case-insensitive)."""
    import open_clip

    names = list(_specs()) + list(OPENAI_ALIASES) + list(open_clip.list_models())
    return [n for n in dict.fromkeys(names) if fnmatch.fnmatch(n.lower(), pattern.lower())]


def list_pretrained(name: str) -> list[str]:
    """Known pretrained tags for a CLIP architecture (empty for registry models: they load by path)."""
    import open_clip

    if name in _specs():
        return []
    return list(open_clip.list_pretrained_tags_by_model(open_clip_arch(name)))


def check_name(name: str) -> None:
    """Raise an :class:`InputError` with close matches for an unknown model name."""
    known = list_models()
    if name in known or open_clip_arch(name) in known:
        return
    if name.startswith(("hf-hub:", "local-dir:")):
        raise InputError(f"--model {name}: open_clip's hf-hub: and local-dir: models are not supported; pass the "
                         "architecture and the weight file: --model ARCH --pretrained FILE (see `vfeat models`).")
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise InputError(f"Unknown --model '{name}'.{hint} Run `vfeat models` for the full list.")
