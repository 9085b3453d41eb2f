"""Decode workers: one video in, a stream of small messages out (frames already upright, resized and
cropped, as uint8). Runs in worker processes, or inline when ``--workers 0``.

Messages (tuples, cheap to pickle):
- ``("video", job, info, timestamps_ms [rows], clip_rows)``: probe + plan, sent before any frame;
- ``("frames", job, rows, pixels)``: ``pixels`` uint8 [k, S, S, 3]; ``rows[i]`` lists the store rows that
  show frame i (a frame is decoded once even when several targets land on it);
- ``("done", job)`` or ``("error", job, message)``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator

import numpy as np

from vfeat.decode import Resize, decode_selected, probe
from vfeat.errors import VfeatError
from vfeat.sampling import SamplingPlan, select_frames

CHUNK_FRAMES = 16


def decode_job(job: int, path: str, plan: SamplingPlan, resize: Resize, one_clip: bool) -> Iterator[tuple[Any, ...]]:
    """Yield the messages for one video; any failure becomes an ``error`` message naming the file."""
    try:
        probed = probe(path)
        selection = select_frames(plan, probed.timestamps_s, probed.info.duration_s, one_clip=one_clip)
        rows_of: dict[int, list[int]] = defaultdict(list)
        for row, frame_index in enumerate(selection.frame_indices):
            rows_of[int(probed.pts[frame_index])].append(row)
        timestamps_ms = probed.timestamps_s[selection.frame_indices] * 1000.0
        yield ("video", job, probed.info.as_dict(), timestamps_ms, selection.clip_rows)
        wanted = np.array(sorted(rows_of), dtype=np.int64)
        rows: list[list[int]] = []
        pixels: list[np.ndarray] = []
        for pts, image in decode_selected(path, wanted, resize, probed.skip):
            rows.append(rows_of[pts])
            pixels.append(image)
            if len(pixels) >= CHUNK_FRAMES:
                yield ("frames", job, rows, np.stack(pixels))
                rows, pixels = [], []
        if pixels:
            yield ("frames", job, rows, np.stack(pixels))
        yield ("done", job)
    except VfeatError as exc:
        yield ("error", job, str(exc))
    except Exception as exc:  # a decoder bug must not take the run down: record it against the file
        yield ("error", job, f"{path}: {type(exc).__name__}: {exc}")


def worker_main(jobs: Any, results: Any, plan: SamplingPlan, resize: Resize, one_clip: bool) -> None:
    """Process entry point: take ``(job, path)`` until ``None``, push messages onto the bounded queue."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        item = jobs.get()
        if item is None:
            results.put(("exit",))
            return
        job, path = item
        for message in decode_job(job, path, plan, resize, one_clip):
            results.put(message)
