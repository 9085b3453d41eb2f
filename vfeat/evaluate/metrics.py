"""Evaluation metrics as pure numpy functions over score matrices (no torch, no I/O).

Conventions (also in docs/evaluate.md, "Metrics"):
- Rows are queries, columns are candidates; higher score = better match.
- Ranks are 1-based. Recalls and accuracies are percentages (0-100).
- Tie policy: pessimistic. A query's rank is 1 + the number of *wrong* candidates whose score is >= the best
  score among its correct candidates, so every tie is broken against the right answer (a constant score
  matrix ranks the right answer last). Ties among several correct candidates never hurt.
- Top-k with k larger than the number of candidates counts every query as a hit (top5 of 3 classes = 100%).
- NaN scores are refused (they compare false both ways and would silently corrupt ranks); -inf is allowed
  and means "never ranked above anything".
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from vfeat.errors import InputError

DEFAULT_RECALL_KS = (1, 5, 10, 50)


def _as_scores(scores, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D score matrix, got shape {arr.shape}.")
    if np.isnan(arr).any():
        raise InputError(f"{name} contains NaN at {int(np.isnan(arr).sum())} positions; scores must be numbers.")
    return arr


def _as_index(values, n: int, count: int, name: str, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name} must have one entry per row ({n}), got shape {arr.shape}.")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must hold integer {what} indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= count)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name}[{i}] = {arr[i]} is not a valid {what} index (0..{count - 1}); "
                         f"{int(bad.sum())} entries are out of range. Drop unlabeled rows before scoring.")
    return arr


def ranks_of_targets(scores, targets, key_groups=None) -> np.ndarray:
    """Pessimistic 1-based rank of each row's correct candidate(s).

    scores [N, M]; targets [N]. Without key_groups, targets[i] is the column of row i's correct candidate.
    With key_groups [M] (the group of each column, e.g. the video of each caption), targets[i] is a group id
    and all columns of that group are correct: rank = 1 + #(columns of other groups scoring >= the group's
    best score). A row whose group has no column gets rank 0 (no answer to find); callers drop those.
    """
    s = _as_scores(scores, "scores")
    n, m = s.shape
    if key_groups is None:
        t = _as_index(targets, n, m, "targets", "column")
        best = s[np.arange(n), t]
        return (s >= best[:, None]).sum(axis=1).astype(np.int64)  # counts the target itself once: 1 + wrong ties
    groups = np.asarray(key_groups).astype(np.int64)
    if groups.shape != (m,):
        raise InputError(f"key_groups must have one entry per column ({m}), got shape {groups.shape}.")
    t = np.asarray(targets).astype(np.int64)
    if t.shape != (n,):
        raise InputError(f"targets must have one entry per row ({n}), got shape {t.shape}.")
    correct = groups[None, :] == t[:, None]
    has = correct.any(axis=1)
    best = np.where(correct, s, -np.inf).max(axis=1, initial=-np.inf)
    wrong_ge = ((s >= best[:, None]) & ~correct).sum(axis=1)
    return np.where(has, 1 + wrong_ge, 0).astype(np.int64)


def rank_summary(ranks, ks: Iterable[int] = DEFAULT_RECALL_KS, prefix: str = "") -> dict:
    """Recall@k (percent of ranks <= k), median and mean rank of 1-based ranks, as {prefix}r{k} etc."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise InputError(f"rank_summary needs a non-empty 1-D array of ranks, got shape {r.shape}.")
    out = {f"{prefix}r{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out[f"{prefix}median_rank"] = float(np.median(r))
    out[f"{prefix}mean_rank"] = float(np.mean(r))
    return out


def classification_metrics(scores, labels, ks: Sequence[int] = (1, 5)) -> dict:
    """Zero-shot classification metrics from scores [N, C] and labels [N] (class indices).

    Returns top{k} for each k (percent of videos whose class ranks <= k, pessimistic ties),
    mean_class_accuracy (mean over classes present in labels of their top-1 accuracy, i.e. balanced
    accuracy), per_class_accuracy (list of C values, NaN for classes with no video), num_samples.
    """
    s = _as_scores(scores, "scores")
    n, c = s.shape
    if n == 0:
        raise InputError("classification_metrics: no labeled videos to score.")
    y = _as_index(labels, n, c, "labels", "class")
    ranks = ranks_of_targets(s, y)
    out = {f"top{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    hit = (ranks == 1).astype(np.float64)
    counts = np.bincount(y, minlength=c)
    correct = np.bincount(y, weights=hit, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, 100.0 * correct / np.maximum(counts, 1), np.nan)
    out["mean_class_accuracy"] = float(np.nanmean(per_class))
    out["per_class_accuracy"] = [float(v) for v in per_class]
    out["num_samples"] = int(n)
    return out


def retrieval_metrics(sim, caption_video, ks: Iterable[int] = DEFAULT_RECALL_KS) -> dict:
    """Text-video retrieval metrics from sim [num_captions, num_videos] and caption_video [num_captions].

    t2v: every caption is a query; its rank is the rank of its video among all videos.
    v2t: every video with at least one caption is a query over all captions; its rank is the best rank of
    its own captions (pessimistic ties against other videos' captions). Videos without captions are not
    v2t queries. Keys: t2v_r{k}, t2v_median_rank, t2v_mean_rank, the same for v2t_, num_captions,
    num_videos, num_v2t_queries.
    """
    s = _as_scores(sim, "sim")
    n_cap, n_vid = s.shape
    if n_cap == 0 or n_vid == 0:
        raise InputError(f"retrieval_metrics needs captions and videos, got sim of shape {s.shape}.")
    cv = _as_index(caption_video, n_cap, n_vid, "caption_video", "video")
    ks = tuple(ks)
    out = rank_summary(ranks_of_targets(s, cv), ks, "t2v_")
    queries = np.unique(cv)
    v2t = ranks_of_targets(s.T[queries], queries, key_groups=cv)
    out.update(rank_summary(v2t, ks, "v2t_"))
    out.update(num_captions=int(n_cap), num_videos=int(n_vid), num_v2t_queries=int(queries.size))
    return out


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def dsl(sim, temperature: float = 100.0) -> np.ndarray:
    """Dual softmax re-scoring as in CLIP-ViP's evaluation: sim * softmax(100 * sim, axis=0).

    sim is [texts, videos]; the softmax runs over texts (axis 0), i.e. each video's column is normalised.
    """
    s = _as_scores(sim, "sim")
    return s * _softmax(temperature * s, axis=0)


def multiple_choice_accuracy(scores, answers) -> dict:
    """Accuracy (percent) of picking the right candidate: scores [N, K], answers [N] (0-based).

    Pessimistic ties: a question counts as right only if its answer scores strictly above every other
    candidate. Pad questions with fewer candidates with -inf. Returns {accuracy, num_questions}.
    """
    s = _as_scores(scores, "scores")
    if s.shape[0] == 0:
        raise InputError("multiple_choice_accuracy: no questions to score.")
    a = _as_index(answers, s.shape[0], s.shape[1], "answers", "candidate")
    if np.isneginf(s[np.arange(s.shape[0]), a]).any():
        raise InputError("multiple_choice_accuracy: an answer's own score is -inf (a padded candidate).")
    ranks = ranks_of_targets(s, a)
    return {"accuracy": float(100.0 * np.mean(ranks == 1)), "num_questions": int(s.shape[0])}


def _check_blockwise(queries, keys, block):
    q = np.asarray(queries, dtype=np.float32)
    k = np.asarray(keys, dtype=np.float32)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise InputError(f"queries [N, D] and keys [M, D] must share D, got {q.shape} and {k.shape}.")
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise InputError(f"Invalid block ({block}). It must be an integer >= 1.")
    return q, k


def _key_logsumexp(q: np.ndarray, k: np.ndarray, block: int, temperature: float) -> np.ndarray:
    """log sum_over_queries exp(temperature * q @ k.T) per key, accumulated block by block."""
    lse = np.full(k.shape[0], -np.inf)
    for start in range(0, q.shape[0], block):
        s = temperature * (q[start:start + block] @ k.T).astype(np.float64)
        lse = np.logaddexp(lse, np.logaddexp.reduce(s, axis=0))
    return lse


def _scored_blocks(queries, keys, block: int, dsl_over: str | None, temperature: float):
    """Yield (start, scores_block) for queries[start:start+block] @ keys.T, DSL-rescored if asked."""
    q, k = _check_blockwise(queries, keys, block)
    if dsl_over not in (None, "queries", "keys"):
        raise InputError(f"Invalid dsl_over ({dsl_over!r}). Choose None, 'queries' or 'keys' (the text side).")
    lse = _key_logsumexp(q, k, block, temperature) if dsl_over == "queries" else None
    for start in range(0, q.shape[0], block):
        s = (q[start:start + block] @ k.T).astype(np.float64)
        if dsl_over == "queries":  # texts are the rows: each key (video) column normalised over all queries
            s = s * np.exp(temperature * s - lse[None, :])
        elif dsl_over == "keys":  # texts are the columns: each query (video) row normalised over its keys
            s = s * _softmax(temperature * s, axis=1)
        yield start, s


def blockwise_ranks(queries, keys, targets, block: int = 4096, key_groups=None,
                    dsl_over: str | None = None, temperature: float = 100.0) -> np.ndarray:
    """ranks_of_targets(queries @ keys.T, targets, key_groups) computed block by block over queries.

    Memory is O(block x M), never N x M. dsl_over names the text side when DSL re-scoring is wanted:
    'queries' for text->video (texts are rows), 'keys' for video->text (texts are columns); the result
    equals ranking dsl(texts @ videos.T) (or its transpose) densely.
    """
    t = np.asarray(targets)
    n = np.asarray(queries).shape[0]
    if t.shape != (n,):
        raise InputError(f"targets must have one entry per query ({n}), got shape {t.shape}.")
    out = np.empty(n, dtype=np.int64)
    for start, s in _scored_blocks(queries, keys, block, dsl_over, temperature):
        stop = start + s.shape[0]
        out[start:stop] = ranks_of_targets(s, t[start:stop], key_groups)
    return out


def blockwise_topk(queries, keys, k: int, block: int = 4096, dsl_over: str | None = None,
                   temperature: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k key indices and scores per query, computed in blocks: (indices [N, k'], scores [N, k']).

    k' = min(k, M). Sorted by descending score; equal scores keep the lower key index first (stable).
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"Invalid k ({k}). It must be an integer >= 1.")
    n, m = np.asarray(queries).shape[0], np.asarray(keys).shape[0]
    kk = min(int(k), m)
    idx = np.empty((n, kk), dtype=np.int64)
    val = np.empty((n, kk), dtype=np.float64)
    for start, s in _scored_blocks(queries, keys, block, dsl_over, temperature):
        # stable descending order: sort by (-score, index); argsort with kind="stable" on -s does exactly that
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        idx[start:start + s.shape[0]] = order
        val[start:start + s.shape[0]] = np.take_along_axis(s, order, axis=1)
    return idx, val
