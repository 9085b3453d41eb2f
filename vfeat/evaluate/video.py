"""The video side of evaluation: one L2-normalised embedding per stored video, streamed from the store.

Per-frame stores: mean of the L2-normalised frame features, renormalised. Stores with clip embeddings:
the same over clips (views).
"""

from __future__ import annotations

import numpy as np

from vfeat.errors import StoreError


def _normalise(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def require_videos(store) -> None:
    """Refuse an empty store up front: every reader of it (evaluate, predict, search) would otherwise
    answer with an empty table that looks like a result."""
    if len(store) == 0:
        raise StoreError(f"{store.path}: the store holds no videos")


def video_embeddings(store) -> tuple[list[str], np.ndarray]:
    """(ids, [V, D]) in store order. Empty stores are an error naming the store."""
    require_videos(store)
    name = "clips/features" if store.has_clips else "features"
    ids, out = [], np.zeros((len(store), int(store.attrs["embed_dim"])), np.float32)
    for video_id, rows, _ in store.iter_rows(name):
        if len(rows) == 0:
            continue
        pooled = _normalise(rows).mean(axis=0)
        out[len(ids)] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        ids.append(video_id)
    return ids, out[: len(ids)]


def normalise(rows: np.ndarray) -> np.ndarray:
    return _normalise(rows)
