"""``evaluate``: zero-shot classification, retrieval and multiple choice from a feature store.

Reads only the store (video embeddings) and the store's own model (its text tower). Every result carries
the model, checkpoint hash, task file, templates, counts and vfeat version, so a number can be traced.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vfeat.errors import InputError
from vfeat.evaluate import metrics
from vfeat.evaluate.annotations import (build_retrieval_index, examples, match_ids, read_captions, read_multiple_choice,
                                         read_split, split_files)
from vfeat.evaluate.tasks import Task, labels_for, load_task, task_from_files
from vfeat.evaluate.text import TextTower, class_embeddings, embed_texts
from vfeat.evaluate.video import video_embeddings
from vfeat.store import fs
from vfeat.store.reader import open_store


@dataclass
class Result:
    task: str
    type: str
    metrics: dict[str, float]
    counts: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return {"task": self.task, "type": self.type, **provenance, "counts": self.counts, "metrics": self.metrics,
                **self.details, "notes": self.notes}


def resolve_tasks(task: str | None, classes: str | None, templates: str | None, captions: str | None,
                  multiple_choice: str | None) -> list[Task]:
    """The tasks named on the command line (comma-separated), with --classes/--templates replacing those parts
    of their classification tasks; without --task, one custom task per annotation file given."""
    tasks = [load_task(name) for name in [t.strip() for t in (task or "").split(",") if t.strip()]]
    if tasks:
        for flag, path in (("--classes", classes), ("--templates", templates)):
            if path:
                _require_type(flag, "classification", tasks)
        return [task_from_files(classes, templates, base=t) if (classes or templates) and t.type == "classification"
                else t for t in tasks]
    if classes or templates:
        tasks.append(task_from_files(classes, templates))
    if captions:
        tasks.append(Task(name="retrieval", type="retrieval", captions={"format": "generic"}))
    if multiple_choice:
        tasks.append(Task(name="multiple_choice", type="multiple_choice"))
    if not tasks:
        raise InputError("Nothing to evaluate: pass --task, --classes, --captions or --multiple-choice.")
    return tasks


# Flags that only some task types use, and the annotation file each type needs (one per run).
_FLAG_TYPE = {"--labels": "classification", "--captions": "retrieval", "--dsl": "retrieval",
              "--multiple-choice": "multiple_choice"}
_FILE_FLAG = {"retrieval": ("--captions", "video_id,caption CSV"),
              "multiple_choice": ("--multiple-choice", "video_id,candidate_1..N,answer_index CSV")}


def _require_type(flag: str, kind: str, tasks: list[Task]) -> None:
    if not any(t.type == kind for t in tasks):
        have = ", ".join(f"{t.name}: {t.type.replace('_', ' ')}" for t in tasks)
        raise InputError(f"{flag} only applies to {kind.replace('_', ' ')} tasks, and this run has none ({have}).")


def check_flags(tasks: list[Task], given: dict[str, Any]) -> None:
    """No flag is silently ignored: one that no task of the run uses, or a task without its annotation file,
    is an error naming the flag, raised before the store or the model is read."""
    names = [t.name for t in tasks]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice:
        raise InputError(f"--task names {twice} twice.")
    for flag, kind in _FLAG_TYPE.items():
        if given.get(flag):
            _require_type(flag, kind, tasks)
    for kind, (flag, layout) in _FILE_FLAG.items():
        need = [t for t in tasks if t.type == kind]
        if need and not given.get(flag):
            expected = (need[0].captions or {}).get("file") or layout
            raise InputError(f"Task {need[0].name} is {kind.replace('_', ' ')}: pass {flag} FILE ({expected}).")
        if len(need) > 1:
            raise InputError(f"{flag} names one file, but {len(need)} tasks need one each "
                             f"({', '.join(t.name for t in need)}); evaluate them in separate runs.")
    for t in tasks:
        if t.type == "classification" and t.labels.get("from") == "csv" and not given.get("--labels"):
            raise InputError(f"Task {t.name} takes labels from a CSV: pass --labels FILE (video_id,label).")


def evaluate(features: str, task: str | None = None, *, classes: str | None = None, templates: str | None = None,
             labels: str | None = None, captions: str | None = None, multiple_choice: str | None = None,
             dsl: bool = False, device: str = "cpu", pretrained: str | None = None,
             model_config: str | None = None, weights_dir: str | None = None,
             split: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Evaluate the store ``features`` on each task; returns one result dict per task. ``split``: split files
    (or globs), whose videos alone are evaluated (:func:`~vfeat.evaluate.annotations.read_split`)."""
    tasks = resolve_tasks(task, classes, templates, captions, multiple_choice)
    check_flags(tasks, {"--labels": labels, "--captions": captions, "--multiple-choice": multiple_choice, "--dsl": dsl})
    split_paths = split_files(split or [])
    listed = [video for path in split_paths for video in read_split(path)]
    with open_store(features) as store:
        attrs = store.attrs
        ids, videos = video_embeddings(store)
    split_notes: list[str] = []
    if split_paths:
        ids, videos, split_notes = _in_split(ids, videos, listed)
    text_tower = TextTower(attrs, device=device, pretrained=pretrained, model_config=model_config, weights_dir=weights_dir)
    model = attrs.get("model", {})
    given: dict[str, Any] = {flag: fs.absolute(value) for flag, value in (
        ("store", features), ("classes", classes), ("templates", templates), ("labels", labels), ("captions", captions),
        ("multiple_choice", multiple_choice)) if value}
    if split_paths:
        given["split"] = [fs.absolute(str(p)) for p in split_paths]
    results = []
    for t in tasks:
        if t.type == "classification":
            result = _classification(t, ids, videos, text_tower, labels)
        elif t.type == "retrieval":
            result = _retrieval(t, ids, videos, text_tower, captions, dsl)
        else:
            result = _multiple_choice(t, ids, videos, text_tower, multiple_choice)
        provenance = {
            "model": model, "store": features, "task_file": str(t.path) if t.path else None,
            "inputs": given,  # where the annotations came from, absolute: a result file says what it measured
            "templates": list(t.templates), "vfeat_version": attrs.get("vfeat_version"),
            "hardware": {"machine": platform.machine(), "processor": platform.processor(), "device": device},
        }
        results.append(result.as_dict(provenance))
        if split_paths:
            results[-1]["counts"].update(split_listed=len(set(listed)), split_stored=len(ids))
            results[-1]["notes"] = split_notes + results[-1]["notes"]
    return results


def _in_split(ids: list[str], videos: np.ndarray, listed: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """The stored videos a split lists (ids matched as annotation ids are), and a note of what it lists that
    the store lacks (a split evaluated on part of its videos is not the official number)."""
    match = match_ids(listed, ids)
    if not match.mapping:
        raise InputError(f"No stored video is in the split ({len(set(listed))} listed, e.g. {examples(sorted(set(listed)))}).")
    kept = set(match.mapping.values())
    mask = np.array([video_id in kept for video_id in ids])
    note = f"split: {len(kept)} of {len(set(listed))} listed videos are in the store"
    if match.unmatched_annotations:
        note += f"; missing: {examples(match.unmatched_annotations)}"
    return [i for i, k in zip(ids, mask) if k], videos[mask], [note]


def _classification(task: Task, ids: list[str], videos: np.ndarray, text_tower: TextTower, labels_csv: str | None) -> Result:
    if not task.templates:
        raise InputError(f"Task {task.name} has no templates.")
    y, report = labels_for(task, ids, labels_csv=labels_csv)
    keep = y >= 0
    if not keep.any():
        raise InputError(f"No stored video got a label for task {task.name}: {report.summary()}")
    text = class_embeddings(text_tower, task.prompts())
    scores = videos[keep] @ text.T
    result = metrics.classification_metrics(scores, y[keep])
    per_class = result.pop("per_class_accuracy")
    result.pop("num_samples", None)
    counts = {"videos_in_store": len(ids), "videos_evaluated": int(keep.sum()), "videos_without_label": int((~keep).sum()),
              "labels_without_video": len(report.without_video), "classes": len(task.classes),
              "unknown_labels": report.unknown_labels}
    details = {"per_class_accuracy": {c: (None if np.isnan(a) else a) for c, a in zip(task.classes, per_class)},
               "predictions": {"ids": [i for i, k in zip(ids, keep) if k], "true": y[keep].tolist(),
                               "pred": np.argmax(scores, axis=1).tolist()}}
    return Result(task.name, task.type, result, counts, details, [report.summary()])


def _retrieval(task: Task, ids: list[str], videos: np.ndarray, text_tower: TextTower, captions_path: str, dsl: bool) -> Result:
    fmt = task.captions.get("format", "generic") if task.captions else "generic"
    options = {k: task.captions[k] for k in ("subset", "level") if task.captions and k in task.captions}
    pairs = read_captions(captions_path, fmt, **options)
    index = build_retrieval_index(pairs, ids, strip_prefix=(task.captions or {}).get("strip_prefix", ""))
    if not index.captions:
        raise InputError(f"No caption in {captions_path} matches a stored video: {index.match.summary()}")
    position = {v: i for i, v in enumerate(ids)}
    gallery = videos[[position[v] for v in index.video_ids]]
    text = embed_texts(text_tower, index.captions)
    targets = np.asarray(index.caption_video)
    t2v = metrics.blockwise_ranks(text, gallery, targets, dsl_over="queries" if dsl else None)
    queries = np.unique(targets)
    v2t = metrics.blockwise_ranks(gallery[queries], text, queries, key_groups=targets, dsl_over="keys" if dsl else None)
    result = {**metrics.rank_summary(t2v, prefix="t2v_"), **metrics.rank_summary(v2t, prefix="v2t_")}
    counts = {"captions": len(index.captions), "videos": len(index.video_ids), "captions_without_video": index.num_dropped_captions,
              "videos_without_caption": len(index.match.unmatched_store), "dsl": dsl}
    recall_curve = {str(k): float(100.0 * np.mean(t2v <= k)) for k in (1, 2, 5, 10, 20, 50, 100)}
    return Result(task.name, task.type, result, counts, {"t2v_recall_curve": recall_curve}, [index.match.summary()])


def _multiple_choice(task: Task, ids: list[str], videos: np.ndarray, text_tower: TextTower, path: str) -> Result:
    questions = read_multiple_choice(path)
    match = match_ids([q.video_id for q in questions], ids, (task.captions or {}).get("strip_prefix", ""))
    kept = [q for q in questions if q.video_id in match.mapping]
    if not kept:
        raise InputError(f"No question in {path} matches a stored video: {match.summary()}")
    width = max(len(q.candidates) for q in kept)
    scores = np.full((len(kept), width), -np.inf)
    position = {v: i for i, v in enumerate(ids)}
    texts = list(dict.fromkeys(c for q in kept for c in q.candidates))  # one text-tower call, each text once
    text_row = {t: i for i, t in enumerate(texts)}
    emb = embed_texts(text_tower, texts)
    for row, q in enumerate(kept):
        video = videos[position[match.mapping[q.video_id]]]
        scores[row, : len(q.candidates)] = emb[[text_row[c] for c in q.candidates]] @ video
    result = metrics.multiple_choice_accuracy(scores, [q.answer for q in kept])
    result.pop("num_questions", None)
    counts = {"questions": len(questions), "questions_evaluated": len(kept), "questions_without_video": len(questions) - len(kept),
              "videos_without_question": len(match.unmatched_store)}
    return Result(task.name, task.type, result, counts, {}, [match.summary()])
