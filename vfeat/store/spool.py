"""One video's embedding rows, kept in memory while small and spooled to a file while large, so that
memory does not grow with video length.

A 2-hour video in "all frames" mode has some 200,000 rows (about 200 MB at 512-d float16) that must all
exist before the video can be committed. :class:`RowBuffer` collects them as the model produces them;
once a video is larger than ``VFEAT_ROWS_IN_MEMORY_MB`` (default 32), every block of rows that is
complete is written to a spool file and dropped from memory. The finished video then carries a
:class:`SpooledRows` (a file name) instead of an array, and the writer copies it into the shard block by
block (:func:`row_blocks`). Spool files live in the shard's journal folder, so a journal part that names
one survives a crash with it; the writer deletes the file once the video is committed.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

#: Rows per spooled block (and per write when a spooled video is copied into a shard).
BLOCK_ROWS = 8192
SPOOL_PREFIX = "rows-"


def in_memory_limit() -> int:
    """Bytes of rows a video may hold in memory before it is spooled (``VFEAT_ROWS_IN_MEMORY_MB``)."""
    return int(float(os.environ.get("VFEAT_ROWS_IN_MEMORY_MB", "32")) * 2**20)


@dataclass(frozen=True)
class SpooledRows:
    """A finished video's rows [rows, dim] in a raw C-order file of ``dtype`` (what a
    :class:`~vfeat.store.format.VideoRecord` carries instead of an array for a long video)."""

    path: str
    shape: tuple[int, int]
    dtype: str

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        count = (stop - start) * self.shape[1]
        rows = np.fromfile(self.path, dtype=dtype, count=count, offset=start * self.shape[1] * dtype.itemsize)
        if rows.size != count:
            raise OSError(f"{self.path}: spool file is shorter than its {self.shape[0]} rows")
        return rows.reshape(stop - start, self.shape[1])

    def exists(self) -> bool:
        return os.path.isfile(self.path) and os.path.getsize(self.path) == self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def row_blocks(parts: Sequence[np.ndarray | SpooledRows], dtype: np.dtype, max_rows: int | None = None) -> Iterator[np.ndarray]:
    """The rows of several videos, in order, as arrays of about ``max_rows`` rows (default
    :data:`BLOCK_ROWS`): in-memory videos are joined (one write for many short videos), spooled ones read
    back a block at a time. A block is what a shard write holds (zarr encodes it once more)."""
    max_rows = max_rows or BLOCK_ROWS
    group: list[np.ndarray] = []
    held = 0
    for part in parts:
        if isinstance(part, SpooledRows):
            if group:
                yield _joined(group, dtype)
                group, held = [], 0
            for start in range(0, len(part), max_rows):
                yield part.read(start, min(len(part), start + max_rows)).astype(dtype, copy=False)
            continue
        group.append(part)
        held += len(part)
        if held >= max_rows:
            yield _joined(group, dtype)
            group, held = [], 0
    if group:
        yield _joined(group, dtype)


def _joined(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    # a single video already in ``dtype`` is passed through without a copy
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.asarray(joined).astype(dtype, copy=False)


class RowBuffer:
    """Collects one video's ``rows`` x ``dim`` embeddings in any order (a row is written once or, for
    overlapping clips, again with the same meaning) and hands back an array or a :class:`SpooledRows`.

    Small videos (and any video when ``spool_dir`` is None) live in one array. Larger ones keep only the
    blocks still being filled; a complete block goes to ``<spool_dir>/rows-<uuid>.bin`` at once."""

    def __init__(self, rows: int, dim: int, dtype: np.dtype, spool_dir: str | None = None) -> None:
        self.shape, self.dtype = (rows, dim), np.dtype(dtype)
        self.spooled = spool_dir is not None and rows * dim * self.dtype.itemsize > in_memory_limit()
        if not self.spooled:
            self.array = np.zeros(self.shape, self.dtype)
            return
        os.makedirs(spool_dir, exist_ok=True)  # type: ignore[arg-type]
        self.path = os.path.join(spool_dir, f"{SPOOL_PREFIX}{uuid.uuid4().hex}.bin")  # type: ignore[arg-type]
        self.file = open(self.path, "wb")
        self.file.truncate(rows * dim * self.dtype.itemsize)
        self.blocks: dict[int, np.ndarray] = {}
        self.filled = np.zeros(rows, bool)  # 1 byte a row
        self.written: set[int] = set()

    def __setitem__(self, rows: Sequence[int] | np.ndarray, value: np.ndarray) -> None:
        if not self.spooled:
            self.array[rows] = value
            return
        rows = np.asarray(rows, np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(value, self.dtype), (len(rows), self.shape[1]))
        for block in np.unique(rows // BLOCK_ROWS).tolist():
            here = rows // BLOCK_ROWS == block
            mine, vectors = rows[here], values[here]
            if block in self.written:  # an overlapping clip rewrote a row of a block already spooled
                self._write_rows(mine, vectors)
                continue
            start, stop = self._bounds(block)
            if block not in self.blocks:
                self.blocks[block] = np.zeros((stop - start, self.shape[1]), self.dtype)
            self.blocks[block][mine - start] = vectors
            self.filled[mine] = True
            if self.filled[start:stop].all():
                self._spool(block)

    def __getitem__(self, rows: Sequence[int]) -> np.ndarray:
        """Some rows back (a frame-level model's clip means), from memory or the spool file."""
        if not self.spooled:
            return self.array[rows]
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        self.file.flush()
        for i, row in enumerate(rows):
            block = row // BLOCK_ROWS
            if block in self.blocks:
                out[i] = self.blocks[block][row - block * BLOCK_ROWS]
            else:
                out[i] = np.fromfile(self.path, self.dtype, count=self.shape[1], offset=row * self._row_bytes())
        return out

    def finish(self) -> np.ndarray | SpooledRows:
        """All rows, once every one has been set: the array, or the synced spool file."""
        if not self.spooled:
            return self.array
        for block in list(self.blocks):
            self._spool(block)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return SpooledRows(self.path, self.shape, self.dtype.str)

    def discard(self) -> None:
        """Drop a video that failed midway (its spool file included)."""
        if self.spooled:
            self.file.close()
            if os.path.exists(self.path):
                os.remove(self.path)

    def _bounds(self, block: int) -> tuple[int, int]:
        return block * BLOCK_ROWS, min(self.shape[0], (block + 1) * BLOCK_ROWS)

    def _row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def _spool(self, block: int) -> None:
        start, _ = self._bounds(block)
        self.file.seek(start * self._row_bytes())
        self.file.write(np.ascontiguousarray(self.blocks.pop(block)))
        self.written.add(block)

    def _write_rows(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        for row, vector in zip(rows.tolist(), vectors):
            self.file.seek(row * self._row_bytes())
            self.file.write(np.ascontiguousarray(vector))
