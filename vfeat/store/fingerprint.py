"""What a stored video's file looked like when it was read (size and modification time, as make and rsync
compare files), so that a rerun notices a file that changed since: a store only appends, so without a
word it would keep the old file's features under the video's id."""

from __future__ import annotations

import math
import os
from typing import Iterable

from vfeat.errors import VfeatError
from vfeat.sources import VideoSource
from vfeat.store import fs
from vfeat.store.format import LATER_VIDEO_ARRAYS


def file_fingerprint(path: str) -> dict[str, float]:
    """``file_size`` and ``file_mtime`` (seconds) of a local file; the unknown values for a URL."""
    if fs.is_url(path):
        return _unknown()
    try:
        stat = os.stat(path)
    except OSError:
        return _unknown()
    return {"file_size": int(stat.st_size), "file_mtime": float(stat.st_mtime)}


def _unknown() -> dict[str, float]:
    return {name.split("/", 1)[1]: value for name, value in LATER_VIDEO_ARRAYS.items()}


def changed_on_disk(out: str, sources: Iterable[VideoSource]) -> list[str]:
    """Ids of the videos of ``sources`` stored in ``out`` whose file's size or modification time is not what
    it was when it was stored. Not compared: stores on object storage, files that are gone or remote, and
    videos stored without a fingerprint (by a vfeat before it)."""
    from vfeat.store.reader import open_store

    if fs.is_url(out) or not fs.exists(out):
        return []
    try:
        with open_store(out) as store:
            table = store.videos(columns=("id", "file_size", "file_mtime"))
    except VfeatError:
        return []  # no committed video yet
    stored = {video_id: (size, mtime) for video_id, size, mtime in zip(table["id"], table["file_size"], table["file_mtime"])}
    changed = []
    for source in sources:
        if source.video_id not in stored:
            continue
        size, mtime = stored[source.video_id]
        if size < 0 or math.isnan(mtime):
            continue
        now = file_fingerprint(source.path)
        if now["file_size"] >= 0 and (now["file_size"], now["file_mtime"]) != (int(size), float(mtime)):
            changed.append(source.video_id)
    return changed
