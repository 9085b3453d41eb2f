"""``predict`` (per-frame zero-shot labels) and ``search`` (best moments for a text query) over a store."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vfeat.errors import InputError
from vfeat.evaluate.tasks import load_task
from vfeat.evaluate.text import TextTower, class_embeddings, embed_texts
from vfeat.evaluate.video import normalise, require_videos
from vfeat.store.reader import open_store


def _rows_name(store) -> str:
    return "features" if store.has_frames else "clips/features"


def predict(features: str, texts: Sequence[str] | None = None, task: str | None = None, top: int = 1,
            device: str = "cpu", pretrained: str | None = None, model_config: str | None = None,
            weights_dir: str | None = None) -> dict[str, Any]:
    """Per-frame zero-shot scores against ``texts`` (each text is its own label) or a task's classes
    (prompt-ensembled). Returns the label names and, per row, video id, time, and the top labels with
    logit (scale * cosine) and probability (softmax over labels)."""
    if bool(texts) == bool(task):
        raise InputError("Pass either --texts or --task to predict.")
    if top < 1:
        raise InputError(f"Invalid --top ({top}). It must be >= 1.")
    with open_store(features) as store:
        require_videos(store)
        text_tower = TextTower(store.attrs, device=device, pretrained=pretrained, model_config=model_config,
                               weights_dir=weights_dir)
        if task:
            t = load_task(task)
            if t.type != "classification":
                raise InputError(f"Task {t.name} is {t.type}; predict needs a classification task or --texts.")
            labels, text = list(t.classes), class_embeddings(text_tower, t.prompts())
        else:
            labels, text = list(texts), embed_texts(text_tower, list(texts))  # type: ignore[arg-type]
        scale = text_tower.logit_scale
        k = min(top, len(labels))
        rows: list[dict[str, Any]] = []
        timelines: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for video_id, feats, stamps in store.iter_rows(_rows_name(store)):
            logits = scale * normalise(feats) @ text.T
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            timelines[video_id] = (stamps, probs)
            order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            for r in range(len(feats)):
                for rank, c in enumerate(order[r], 1):
                    rows.append({"video_id": video_id, "timestamp_ms": float(stamps[r]), "rank": rank, "label": labels[c],
                                 "logit": float(logits[r, c]), "probability": float(probs[r, c])})
    return {"labels": labels, "rows": rows, "timelines": timelines}


def search(features: str, query: str, top: int = 10, device: str = "cpu", pretrained: str | None = None,
           model_config: str | None = None, weights_dir: str | None = None) -> list[dict[str, Any]]:
    """The ``top`` stored moments (frames, or clips) most similar to ``query``: video id, time, cosine score.
    Streams the store, keeping a running top-k (bounded memory). A frame stored in several rows (``--fps``
    above the video's rate, ``--num-frames`` above its frame count) is one moment, listed once."""
    if top < 1:
        raise InputError(f"Invalid --top ({top}). It must be >= 1.")
    if not query.strip():
        raise InputError("The search query is empty.")
    with open_store(features) as store:
        require_videos(store)
        text_tower = TextTower(store.attrs, device=device, pretrained=pretrained, model_config=model_config,
                               weights_dir=weights_dir)
        q = embed_texts(text_tower, [query])[0]
        best: list[tuple[float, str, float]] = []
        for video_id, feats, stamps in store.iter_rows(_rows_name(store)):
            _, moments = np.unique(stamps, return_index=True)  # the first row of each time
            feats, stamps = feats[moments], stamps[moments]
            scores = normalise(feats) @ q
            for r in np.argsort(-scores, kind="stable")[:top]:
                best.append((float(scores[r]), video_id, float(stamps[r])))
            best = sorted(best, key=lambda x: -x[0])[:top]
    return [{"rank": i + 1, "video_id": v, "timestamp_ms": t, "score": s} for i, (s, v, t) in enumerate(best)]
