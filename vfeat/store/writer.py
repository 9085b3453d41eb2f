"""Commit finished videos into a shard so that a crash at any moment loses no committed video and never
duplicates one.

Finished videos are buffered and flushed as a journal part (``<shard>.journal/part-*.pkl``, written
atomically), then merged into the shard. Zarr shards merge after every flush; HDF5 shards merge when the
writer closes (each HDF5 merge rewrites the file, see :mod:`vfeat.store.backends`). Opening a shard first
replays any parts a crashed run left behind; replay skips ids already in the shard, so a crash between a
merge and the part's deletion is harmless. The part's deletion is the last step of a commit.

A long video's rows are not in its part but in a spool file beside it (``rows-*.bin``, see
:mod:`vfeat.store.spool`), deleted after the part; spool files no part names are garbage of a killed run.
Parts merge in appends of up to 64 MB of rows (an append's cost hardly depends on its size), so memory holds
that much, however many parts an HDF5 run leaves.

During a run, parts are written by one writer thread while the pipeline goes on decoding and encoding,
and a Zarr shard merges the parts written so far at most every ``merge_seconds`` (5): a merge costs ~0.1 s
whether it holds 32 videos or 500, and with many short videos merging every part took a core's worth of
the model process. At most one part is in flight, so parts stay in order.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import numpy as np

from vfeat.errors import StoreError
from vfeat.store import fs
from vfeat.store.backends import open_read, transaction
from vfeat.store.format import IDENTITY_ATTRS, Batch, Failure, VideoRecord, same_setting, shard_kind
from vfeat.store.reader import MANIFEST
from vfeat.store.spool import SPOOL_PREFIX, SpooledRows
from vfeat.store.tree import append, initialise, interrupted_creation, read_ids

JOURNAL_SUFFIX = ".journal"


def journal_dir(shard: str) -> str:
    return str(shard).rstrip("/") + JOURNAL_SUFFIX


def check_compatible(path: str, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to mix models, sampling, storage dtype or preprocessing in one store."""
    for key in IDENTITY_ATTRS:
        if not same_setting(key, existing.get(key), wanted.get(key)):
            raise StoreError(
                f"{path}: store was written with {key}={existing.get(key)!r}; this run uses {wanted.get(key)!r}. "
                "Write to a new --out path, or rerun with the store's settings."
            )


def commit_shards(directory: str, names: Iterable[str]) -> None:
    """List shards in ``directory/manifest.json``, the commit record of a directory store: only listed shards
    are visible to readers. The manifest is rewritten whole (atomic rename, or one PUT on object stores); a
    new one starts from the shards already visible, so shards written before it stay in the dataset."""
    path = fs.join(directory, MANIFEST)
    if fs.exists(path):
        listed = json.loads(fs.read_text(path)).get("shards", [])
    else:
        listed = [name for name in fs.listdir(directory) if shard_kind(name) is not None]
        fs.makedirs(directory)
    shards = sorted(set(listed) | set(names))
    if fs.exists(path) and shards == sorted(listed):
        return
    fs.write_bytes_atomic(path, (json.dumps({"shards": shards}, indent=1) + "\n").encode("utf-8"))


class ShardWriter:
    """Appends videos to one shard (created on first use). Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str, attrs: dict[str, Any], flush_videos: int | None = None, flush_seconds: float = 20.0,
                 merge_seconds: float = 5.0) -> None:
        kind = shard_kind(path)
        if kind is None:
            raise StoreError(f"{path}: a shard path must end in .zarr or .h5")
        self.path, self.kind, self.attrs = str(path), kind, attrs
        # VFEAT_FLUSH_VIDEOS: commit more often (tests of crash recovery use 1).
        self.flush_videos = flush_videos or int(os.environ.get("VFEAT_FLUSH_VIDEOS", "32"))
        self.flush_seconds, self.merge_seconds = flush_seconds, merge_seconds
        self._pending = Batch()
        self._last_flush = time.monotonic()
        self._parts: list[str] = []
        self._writer: ThreadPoolExecutor | None = None  # the writer thread, started by the first flush
        self._in_flight: Future | None = None
        self._unmerged: dict[str, Batch] = {}  # Zarr: parts written since the last merge, still in memory
        self._last_merge = time.monotonic()
        create = not fs.exists(self.path)
        if not create:
            with open_read(self.path, kind) as tree:
                if interrupted_creation(tree):
                    create = True
                elif not tree.has("offsets"):
                    raise StoreError(f"{self.path}: exists but is not a vfeat store")
                else:
                    check_compatible(self.path, tree.attrs, attrs)
        if create:
            with transaction(self.path, kind, create=True) as tree:
                initialise(tree, attrs)
        self._remove_leftovers()
        self._merge_parts(self._list_parts())
        self._remove_orphan_spools()
        with open_read(self.path, kind) as tree:
            self.committed: set[str] = set(read_ids(tree))

    # -- public -------------------------------------------------------------------------------------
    @property
    def spool_dir(self) -> str:
        """Where the pipeline spools long videos' rows: the journal folder of a local shard (a part naming a
        spool file survives a crash with it); a local temporary folder for a shard on an object store."""
        if fs.is_url(self.path):
            return os.path.join(tempfile.gettempdir(), "vfeat-spool")
        return fs.local(journal_dir(self.path))

    def add(self, record: VideoRecord) -> None:
        self._pending.videos.append(record)
        self.committed.add(record.video_id)
        self._maybe_flush()

    def fail(self, failure: Failure) -> None:
        self._pending.failures.append(failure)
        self._maybe_flush()

    def flush(self) -> None:
        """Make everything added so far durable (a journal part), merging it now for Zarr."""
        self._write(self._take_pending())

    def close(self) -> None:
        try:
            self.flush()
            self._merge_parts(self._list_parts())
            if not fs.listdir(journal_dir(self.path)):
                fs.remove(journal_dir(self.path))
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if len(self._pending.videos) + len(self._pending.failures) >= self.flush_videos or due:
            batch = self._take_pending()
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vfeat-writer")
            self._in_flight = self._writer.submit(self._write, batch, False)

    def _take_pending(self) -> Batch:
        """The batch to write next, once the part in flight is done (its error, if any, is raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()
        batch, self._pending = self._pending, Batch()
        self._last_flush = time.monotonic()
        return batch

    def _write(self, batch: Batch, merge: bool = True) -> None:
        """Write ``batch`` as a journal part (atomically: the commit). A Zarr shard merges the parts now
        (``merge``) or once ``merge_seconds`` have passed since its last merge."""
        if batch.videos or batch.failures:
            part = fs.join(journal_dir(self.path), f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.pkl")
            fs.makedirs(journal_dir(self.path))
            fs.write_atomic(part, lambda handle: pickle.dump(batch, handle, protocol=5))
            self._parts.append(part)
            if self.kind == "zarr":
                self._unmerged[part] = batch
        if self.kind == "zarr" and (merge or time.monotonic() - self._last_merge >= self.merge_seconds):
            self._merge_parts(self._parts, in_memory=self._unmerged)
            self._unmerged = {}
            self._last_merge = time.monotonic()

    def _remove_leftovers(self) -> None:
        """Temp files a killed run left: half-written journal parts and HDF5 merge copies. Neither was
        ever committed (commits are renames), so they are garbage."""
        folder = journal_dir(self.path)
        for name in fs.listdir(folder):
            if name.endswith(".tmp"):
                fs.remove(fs.join(folder, name))
        if not fs.is_url(self.path):
            parent = os.path.dirname(os.path.abspath(fs.local(self.path)))
            prefix = os.path.basename(fs.local(self.path).rstrip("/")) + "."
            for name in os.listdir(parent):
                if name.startswith(prefix) and name.endswith(".tmp") and len(name) == len(prefix) + 32 + 4:
                    os.remove(os.path.join(parent, name))
        if fs.isdir(folder) and not fs.listdir(folder):
            fs.remove(folder)

    def _list_parts(self) -> list[str]:
        folder = journal_dir(self.path)
        return [fs.join(folder, name) for name in fs.listdir(folder) if name.startswith("part-") and name.endswith(".pkl")]

    def _merge_parts(self, parts: list[str], in_memory: dict[str, Batch] | None = None) -> None:
        """Append the parts' videos to the shard, then delete the parts and the spool files they name.

        Parts are appended together, up to :data:`JOIN_BYTES` of rows at a time: an append costs the same
        array resizes and writes (~0.07 s in Zarr, ~0.01 s in HDF5) whether it holds one part or hundreds.
        Parts this process just wrote are taken from ``in_memory`` rather than read back."""
        if not parts:
            return
        spools: list[SpooledRows] = []
        with transaction(self.path, self.kind, create=False) as tree:
            for batch in _batches_to_append(sorted(parts), in_memory or {}):
                spools += [v.features for v in batch.videos if isinstance(v.features, SpooledRows)]
                batch.videos = [v for v in batch.videos if _rows_present(v)]
                append(tree, batch)
        for part in parts:
            fs.remove(part)
        for spool in spools:
            spool.remove()
        self._parts = [p for p in self._parts if p not in parts]

    def _remove_orphan_spools(self) -> None:
        """Spool files of videos that never reached a journal part (the run was killed first)."""
        if fs.is_url(self.path):
            return
        folder = journal_dir(self.path)
        for name in fs.listdir(folder):
            if name.startswith(SPOOL_PREFIX):
                fs.remove(fs.join(folder, name))


def _rows_present(record: Any) -> bool:
    """A part replayed after a crash may name a spool file that is gone (a shard on an object store whose
    run died on another machine): that video was never committed and is extracted again."""
    if isinstance(record.features, SpooledRows) and not record.features.exists():
        print(f"vfeat: {record.path}: its rows were spooled on another machine and are gone; it will be extracted again",
              file=sys.stderr)
        return False
    return True


#: Parts are joined into one append until their rows in memory reach this size (a spooled video's rows
#: stay in its file and do not count).
JOIN_BYTES = 64 << 20


def _batches_to_append(parts: list[str], in_memory: dict[str, Batch]) -> Iterator[Batch]:
    """``parts`` in order, joined into batches of up to :data:`JOIN_BYTES` of rows; a part is taken from
    ``in_memory`` when this process still holds it, else read back from disk."""
    joined, size = Batch(), 0
    for part in parts:
        batch = in_memory[part] if part in in_memory else _read_part(part)
        joined.videos += batch.videos
        joined.failures += batch.failures
        size += sum(_bytes_in_memory(v) for v in batch.videos)
        if size >= JOIN_BYTES:
            yield joined
            joined, size = Batch(), 0
    if joined.videos or joined.failures:
        yield joined


def _bytes_in_memory(record: VideoRecord) -> int:
    arrays = (record.features, record.timestamps_ms, record.clip_features, record.clip_start_ms, record.clip_end_ms)
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


def _read_part(part: str) -> Batch:
    with fs.open_binary(part) as handle:
        return pickle.load(handle)
