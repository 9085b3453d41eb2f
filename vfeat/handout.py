"""The videos of a run, handed out to its decode processes through one pipe, with no lock between them.

A multiprocessing queue shared by the decode processes has a read lock, held while a process reads an
item, and for as long as it waits on an empty queue. A process killed meanwhile (the out-of-memory killer)
holds it for ever, and every other process then waits for ever in its next ``get``: the run hangs. The
queue's three named semaphores also outlive a run killed with its process group.

Here each video is one record of exactly ``PIPE_BUF`` bytes (its job number and its path; job -1 means
"no more videos"), and the model process writes one record per write, which the kernel writes whole. The
pipe then only ever holds whole records, so a read of one record's size returns exactly one, whichever
processes read at once, with no lock to hold: a process killed while it takes a video takes only that
record with it. Paths travel inside the records, so no process holds the whole list.
"""

from __future__ import annotations

import os
import queue
import select
import struct
import threading
from dataclasses import dataclass
from typing import Any

#: one record per write of at most PIPE_BUF bytes: never interleaved with another write, never read in part
RECORD_BYTES = getattr(select, "PIPE_BUF", 512)
_HEAD = struct.Struct("<qI")  # job number, path length in bytes
#: the longest path a record holds (in bytes, as the file system names it)
MAX_PATH_BYTES = RECORD_BYTES - _HEAD.size
_NO_MORE = -1
_PIPE_BYTES = 1 << 20  # room for 256 waiting records where Linux allows it (64 KiB otherwise)


def _record(job: int, path: str = "") -> bytes:
    name = os.fsencode(path)
    return (_HEAD.pack(job, len(name)) + name).ljust(RECORD_BYTES, b"\0")


@dataclass
class VideoTaker:
    """A decode process's end: the next ``(job, path)``, or None when there are no more."""

    conn: Any  # the pipe's read end (a multiprocessing Connection: it travels to a spawned process)

    def take(self) -> tuple[int, str] | None:
        record = os.read(self.conn.fileno(), RECORD_BYTES)
        if len(record) != RECORD_BYTES:  # end of file: the model process is gone
            raise EOFError("the model process closed the list of videos")
        job, length = _HEAD.unpack_from(record)
        return None if job == _NO_MORE else (job, os.fsdecode(record[_HEAD.size : _HEAD.size + length]))


class VideoHandout:
    """The model process's end: writes the jobs, then one end-of-work record per decode process, from a
    thread of its own (the pipe holds a few hundred records; the rest wait for room there). ``too_long``:
    the jobs whose path does not fit in a record, not handed out."""

    def __init__(self, ctx: Any, jobs: list[tuple[int, str]], processes: int) -> None:
        read_end, self._write_end = ctx.Pipe(duplex=False)
        self.taker = VideoTaker(read_end)
        _widen(self._write_end.fileno())
        self.too_long: list[int] = []
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()  # (job, path): a record is made as it is written
        for job, path in jobs:
            if len(os.fsencode(path)) > MAX_PATH_BYTES:
                self.too_long.append(job)
            else:
                self._waiting.put((job, path))
        for _ in range(processes):
            self.add_end()
        self._feeder = threading.Thread(target=self._feed, name="vfeat-handout", daemon=True)
        self._feeder.start()

    def add_end(self) -> None:
        """One more end-of-work record, after every job: for a process that replaces one that died (which
        may have taken its own)."""
        self._waiting.put((_NO_MORE, ""))

    def _feed(self) -> None:
        fd = self._write_end.fileno()
        while (item := self._waiting.get()) is not None:
            try:
                os.write(fd, _record(*item))
            except OSError:  # no reader is left (the run stops): nobody needs the rest
                return

    def close(self) -> None:
        """After the decode processes have ended. Closing the read end first ends a write still waiting
        for room (no reader left), so the feeder is done before its descriptor is closed."""
        self._waiting.put(None)
        self.taker.conn.close()
        self._feeder.join(timeout=5)
        self._write_end.close()


def _widen(fd: int) -> None:
    """A larger pipe where Linux allows it: fewer wake-ups of the feeder thread."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or above the system's limit: the default
        pass
