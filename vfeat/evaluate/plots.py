"""Figures: confusion matrix / per-class bars (classification), recall@K curve (retrieval), and the
per-video texts x time heatmap of ``predict``. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from vfeat.errors import InputError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str) -> None:
    """Refuse a --plot file type matplotlib cannot write before any work is done, not after it (no suffix
    means PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = Path(path).suffix.lower().lstrip(".")
    supported = FigureCanvasAgg.get_supported_filetypes()
    if suffix and suffix not in supported:
        raise InputError(f"Invalid --plot {path}: cannot write .{suffix} figures; use one of "
                         f"{', '.join('.' + s for s in sorted(supported))}.")


def plot_result(result: dict[str, Any], path: str) -> str:
    """One figure of ``result`` at ``path`` (no suffix: PNG, the suffix added); returns the file written."""
    plt = _plt()
    if result["type"] == "classification":
        classes = list(result["per_class_accuracy"])
        preds = result["predictions"]
        if len(classes) <= 60:
            matrix = np.zeros((len(classes), len(classes)))
            for t, p in zip(preds["true"], preds["pred"]):
                matrix[t, p] += 1
            fig, ax = plt.subplots(figsize=(max(4, len(classes) * 0.3), max(4, len(classes) * 0.3)))
            ax.imshow(matrix, cmap="Blues")
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{result['task']}: top-1 {result['metrics']['top1']:.1f}%")
        else:
            values = [v if v is not None else 0.0 for v in result["per_class_accuracy"].values()]
            fig, ax = plt.subplots(figsize=(12, 4))
            ax.bar(range(len(values)), values)
            ax.set_xlabel("class")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"{result['task']}: per-class accuracy")
    elif result["type"] == "retrieval":
        curve = result["t2v_recall_curve"]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([int(k) for k in curve], list(curve.values()), marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("text-to-video recall@K (%)")
        ax.set_title(result["task"])
    else:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(["accuracy"], [result["metrics"]["accuracy"]])
    fig.tight_layout()
    target = path if Path(path).suffix else f"{path}.png"
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def plot_timelines(labels: list[str], timelines: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> list[str]:
    """One heatmap (labels x time, probability) per video; several videos -> ``<stem>_<video id>.png`` (the
    id with anything but letters, digits, '.', '-' and '_' replaced, so a file name says which video)."""
    plt = _plt()
    written: list[str] = []
    base = Path(path)
    for video_id, (stamps, probs) in timelines.items():
        target = base
        if len(timelines) > 1:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("_") or "video"
            target = base.with_name(f"{base.stem}_{safe}{base.suffix or '.png'}")
            if str(target) in written:  # two ids that differ only in replaced characters
                target = base.with_name(f"{base.stem}_{safe}_{len(written)}{base.suffix or '.png'}")
        fig, ax = plt.subplots(figsize=(8, 1 + 0.35 * len(labels)))
        seconds = np.asarray(stamps) / 1000.0
        extent = (float(seconds[0]), float(seconds[-1]) if len(seconds) > 1 else float(seconds[0]) + 1, len(labels) - 0.5, -0.5)
        ax.imshow(probs.T, aspect="auto", cmap="viridis", extent=extent, vmin=0, vmax=1)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("time (s)")
        ax.set_title(video_id, fontsize=8)
        fig.tight_layout()
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(str(target))
    return written
