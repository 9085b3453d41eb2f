"""``vfeat info``: what a store holds, as a plain dict (the CLI prints it as a table or JSON)."""

from __future__ import annotations

import os
from typing import Any

from vfeat.store import fs
from vfeat.store.reader import open_store


def _size_bytes(path: str) -> int | None:
    if fs.is_url(path):
        filesystem, inner = fs.filesystem(path)
        return int(filesystem.du(inner))
    path = fs.local(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def describe(path: str) -> dict[str, Any]:
    with open_store(path) as store:
        attrs = store.attrs
        model = attrs.get("model", {})
        return {
            "path": path,
            "videos": len(store),
            "frames": store.num_frames,
            "clips": store.num_clips,
            "embed_dim": attrs.get("embed_dim"),
            "dtype": attrs.get("dtype"),
            "model": model.get("name"),
            "pretrained": model.get("pretrained"),
            "checkpoint_sha256": model.get("checkpoint_sha256"),
            "model_record": model,  # everything that identifies the model (config, options): docs/store.md
            "random_weights": attrs.get("random_weights"),
            "has_frames": attrs.get("has_frames"),
            "has_clips": attrs.get("has_clips"),
            "logit_scale": attrs.get("logit_scale"),
            "precision": attrs.get("precision"),  # of the run that created the store (None: written before it was recorded)
            "format_version": attrs.get("format_version"),
            "sampling": attrs.get("sampling"),
            "preprocess": attrs.get("preprocess"),
            "normalized": attrs.get("normalized"),
            "shards": store.shards,
            "size_bytes": _size_bytes(path),
            "vfeat_version": attrs.get("vfeat_version"),
            "failures": [{"id": f.video_id, "path": f.path, "error": f.error} for f in store.failures()],
        }
