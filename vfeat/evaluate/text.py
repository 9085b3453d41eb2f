"""The text side of evaluation: rebuild the store's own model and embed prompts or captions, with an
on-disk cache keyed by the model identity and the exact texts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vfeat.errors import StoreError


def cache_dir() -> Path:
    return Path(os.environ.get("VFEAT_CACHE_DIR", Path.home() / ".cache" / "vfeat")) / "text"


def load_store_model(attrs: dict[str, Any], device: str = "cpu", pretrained: str | None = None):
    """The model that wrote the store (name + weights + options from its attributes). ``pretrained``
    points at the same weights when they moved; a different file (by sha256) is refused."""
    from vfeat.models.factory import load_model
    from vfeat.models.weights import sha256_file

    model = attrs.get("model") or {}
    name, stored = model.get("name"), model.get("pretrained")
    if not name:
        raise StoreError("store has no model attribute: not written by vfeat extract?")
    weights = pretrained or stored
    if model.get("checkpoint_sha256"):
        if not weights or not Path(weights).is_file():
            raise StoreError(
                f"the store's weights {stored} are not on this machine; pass the same file with --pretrained PATH"
            )
        if sha256_file(weights) != model["checkpoint_sha256"]:
            raise StoreError(
                f"--pretrained {weights} is not the checkpoint the store was written with (sha256 differs from "
                f"{model['checkpoint_sha256'][:12]}...); evaluating with another model's text tower is meaningless"
            )
    elif pretrained and pretrained != stored:
        raise StoreError(f"the store was written with pretrained={stored!r}, not {pretrained!r}")
    options = dict(model.get("options") or {})
    family_options = {k: options[k] for k in ("clip_weights", "patching_ratio") if k in options}
    if "wise_with" in options:
        family_options.update(wise_with=options["wise_with"], alpha=options["alpha"])
    config = options.get("model_config") or options.get("config_path")
    return load_model(name, weights, config=config, device=device, precision="fp32", **family_options)


def _key(identity: dict[str, Any], texts: Sequence[str]) -> str:
    blob = json.dumps({"model": identity, "texts": list(texts)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def embed_texts(encoder: Any, texts: Sequence[str], batch: int = 256, use_cache: bool = True) -> np.ndarray:
    """L2-normalised text embeddings [N, D] (float32), cached on disk per model and text list."""
    import torch

    path = cache_dir() / f"{_key(encoder.identity.as_dict(), texts)}.npy"
    if use_cache and path.is_file():
        return np.load(path)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            emb = encoder.encode_text(list(texts[start:start + batch])).float()
            chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
    out = np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out


def class_embeddings(encoder: Any, prompts: list[list[str]]) -> np.ndarray:
    """Prompt ensembling: per class, the mean of its L2-normalised template embeddings, renormalised."""
    if not prompts:
        return np.zeros((0, encoder.embed_dim), np.float32)
    per_class = len(prompts[0])
    flat = [p for row in prompts for p in row]
    emb = embed_texts(encoder, flat).reshape(len(prompts), per_class, -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)
