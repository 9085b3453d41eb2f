"""The append and read logic shared by both shard formats, over a tiny array interface.

A backend hands out :class:`Tree` objects whose arrays support ``shape``, slicing, ``resize`` and
assignment (zarr arrays and h5py datasets both do). All ordering rules of the format live here:
rows first, per-video metadata next, ``offsets`` last (the commit), so a crash at any point leaves the
committed part intact and the rest is trimmed by :func:`repair`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from vfeat.store.format import (FORMAT_NAME, CLIP_ARRAYS, FAILURE_ARRAYS, FRAME_ARRAYS, LATER_VIDEO_ARRAYS, VIDEO_ARRAYS,
                                 Batch, Failure)
from vfeat.store.spool import SpooledRows, row_blocks


class Tree(Protocol):
    attrs: dict[str, Any]

    def has(self, name: str) -> bool: ...
    def array(self, name: str) -> Any: ...
    def create(self, name: str, dtype: str, width: int | None = None, length: int = 0) -> Any: ...
    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray: ...
    def top_names(self) -> set[str]: ...


def initialise(tree: Tree, attrs: dict[str, Any]) -> None:
    """Create the empty arrays of a new shard and write its attributes."""
    dim = int(attrs["embed_dim"])
    dtype = attrs["dtype"]
    if attrs["has_frames"]:
        tree.create("features", dtype, dim)
        for name, kind in FRAME_ARRAYS.items():
            tree.create(name, kind)
    if attrs["has_clips"]:
        tree.create("clips/features", dtype, dim)
        for name, kind in CLIP_ARRAYS.items():
            tree.create(name, kind)
        _set(tree.create("clips/offsets", "int64", length=1), np.zeros(1, np.int64))
    for name, kind in {**VIDEO_ARRAYS, **FAILURE_ARRAYS}.items():
        tree.create(name, kind)
    tree.attrs.update(attrs)
    _set(tree.create("offsets", "int64", length=1), np.zeros(1, np.int64))  # last: the shard exists from here on


def _set(array: Any, values: np.ndarray) -> None:
    array.resize((len(values),) + tuple(array.shape[1:]))
    if len(values):
        array[:] = values


def _extend(array: Any, values: np.ndarray, start: int) -> None:
    """Write ``values`` at ``start`` (growing the array); earlier content stays untouched."""
    stop = start + len(values)
    array.resize((stop,) + tuple(array.shape[1:]))
    if len(values):
        array[start:stop] = values


def _extend_rows(array: Any, parts: list[np.ndarray | SpooledRows], start: int) -> None:
    """Write the rows of several videos from ``start``, a bounded block at a time: short videos are joined
    into one write, a long (spooled) video is copied from its file without ever being whole in memory."""
    width = tuple(array.shape[1:])
    for block in row_blocks(parts, array.dtype):
        _extend(array, block.reshape((-1,) + width), start)
        start += len(block)


def _commit_entries(tree: Tree) -> int:
    """Entries of ``offsets``. vfeat creates it holding [0]; an absent or empty one (another writer, or an
    older vfeat that created it empty first) means the shard is still being created. Its creator may also
    be starting it anew while we look (a sibling process recreating a shard it found half made), so an
    ``offsets`` that vanishes between two looks counts as absent; a shard with a commit is never removed."""
    try:
        return int(tree.array("offsets").shape[0]) if tree.has("offsets") else 0
    except (KeyError, FileNotFoundError):
        return 0


def _has_commit_record(tree: Tree) -> bool:
    return _commit_entries(tree) > 0


def committed_videos(tree: Tree) -> int:
    """Videos committed so far; 0 for a shard another process is still creating (no ``offsets`` yet)."""
    return max(_commit_entries(tree) - 1, 0)


def repair(tree: Tree) -> None:
    """Trim anything written after the last commit (a crash between rows and ``offsets``)."""
    n = committed_videos(tree)
    offsets = tree.read("offsets")
    rows = int(offsets[-1])
    if tree.has("features"):
        for name in ("features", *FRAME_ARRAYS):
            if tree.array(name).shape[0] != rows:
                tree.array(name).resize((rows,) + tuple(tree.array(name).shape[1:]))
    if tree.has("clips/offsets"):
        clip_offsets = tree.array("clips/offsets")
        if clip_offsets.shape[0] != n + 1:
            clip_offsets.resize((n + 1,))
        clips = int(tree.read("clips/offsets")[-1])
        for name in ("clips/features", *CLIP_ARRAYS):
            if tree.array(name).shape[0] != clips:
                tree.array(name).resize((clips,) + tuple(tree.array(name).shape[1:]))
    for name, kind in VIDEO_ARRAYS.items():
        if name in LATER_VIDEO_ARRAYS and not tree.has(name):  # a store from before this array: its videos read as unknown
            tree.create(name, kind)
        length = tree.array(name).shape[0]
        if length != n:
            tree.array(name).resize((n,))
        if name in LATER_VIDEO_ARRAYS and length < n:  # created above, or not written by an older vfeat's appends
            tree.array(name)[length:n] = np.full(n - length, LATER_VIDEO_ARRAYS[name], dtype=kind)


def read_ids(tree: Tree) -> list[str]:
    count = committed_videos(tree)
    return list(tree.read("videos/id", 0, count)) if count else []


_TOP_NAMES = {name.split("/")[0] for name in (*FRAME_ARRAYS, *CLIP_ARRAYS, *VIDEO_ARRAYS, *FAILURE_ARRAYS)}
_TOP_NAMES |= {"features", "offsets"}


def interrupted_creation(tree: Tree) -> bool:
    """A shard whose creation was cut short (or is still running in another process): nothing but vfeat
    arrays, no ``offsets`` (or not yet its first entry) and no attributes but ours. It holds no committed
    video and may be created anew."""
    if _has_commit_record(tree) or dict(tree.attrs).get("format", FORMAT_NAME) != FORMAT_NAME:
        return False
    return tree.top_names() <= _TOP_NAMES


def append(tree: Tree, batch: Batch) -> int:
    """Append ``batch`` (videos already in the shard are skipped: replaying a journal part is harmless).
    Returns the number of videos added."""
    repair(tree)
    present = set(read_ids(tree))
    videos, seen = [], set()
    for record in batch.videos:
        if record.video_id not in present and record.video_id not in seen:
            videos.append(record)
            seen.add(record.video_id)
    n = committed_videos(tree)
    offsets = tree.read("offsets")
    if videos:
        if tree.has("features"):
            lengths = [len(v.timestamps_ms) for v in videos]
            start = int(offsets[-1])
            _extend_rows(tree.array("features"), [v.features for v in videos], start)  # type: ignore[misc]
            _extend_rows(tree.array("timestamps_ms"), [v.timestamps_ms for v in videos], start)
            new_offsets = start + np.cumsum(lengths, dtype=np.int64)
        else:
            new_offsets = np.zeros(len(videos), np.int64)
        if tree.has("clips/offsets"):
            clip_offsets = tree.read("clips/offsets")
            clip_start = int(clip_offsets[-1])
            _extend_rows(tree.array("clips/features"), [v.clip_features for v in videos], clip_start)  # type: ignore[misc]
            _extend_rows(tree.array("clips/start_ms"), [v.clip_start_ms for v in videos], clip_start)  # type: ignore[misc]
            _extend_rows(tree.array("clips/end_ms"), [v.clip_end_ms for v in videos], clip_start)  # type: ignore[misc]
            counts = [len(v.clip_features) for v in videos]
            _extend(tree.array("clips/offsets"), clip_start + np.cumsum(counts, dtype=np.int64), n + 1)
        for name, kind in VIDEO_ARRAYS.items():
            field = name.split("/", 1)[1]
            if field == "id":
                values = np.array([v.video_id for v in videos], dtype=object)
            elif field == "path":
                values = np.array([v.path for v in videos], dtype=object)
            elif name in LATER_VIDEO_ARRAYS:
                values = np.array([v.info.get(field, LATER_VIDEO_ARRAYS[name]) for v in videos], dtype=kind)
            else:
                values = np.array([v.info[field] for v in videos], dtype=kind)
            _extend(tree.array(name), values, n)
        _extend(tree.array("offsets"), new_offsets, n + 1)  # the commit
    _record_failures(tree, batch, present | seen)
    return len(videos)


def _record_failures(tree: Tree, batch: Batch, succeeded: set[str]) -> None:
    """Failures are rewritten as a whole (small): a retried video that now succeeded or failed again
    replaces its old record; a video that succeeded never keeps a failure."""
    if not batch.failures and not batch.videos:
        return
    old = read_failures(tree)
    replaced = {f.video_id for f in batch.failures} | succeeded
    kept = [f for f in old if f.video_id not in replaced]
    latest = {f.video_id: f for f in batch.failures if f.video_id not in succeeded}
    merged = kept + list(latest.values())
    if merged == old:
        return
    for name in FAILURE_ARRAYS:
        field = name.split("/", 1)[1]
        _set(tree.array(name), np.array([getattr(f, "video_id" if field == "id" else field) for f in merged], dtype=object))


def read_failures(tree: Tree) -> list[Failure]:
    ids = tree.read("failures/id")
    paths = tree.read("failures/path")
    errors = tree.read("failures/error")
    count = min(len(ids), len(paths), len(errors))
    return [Failure(str(ids[i]), str(paths[i]), str(errors[i])) for i in range(count)]
