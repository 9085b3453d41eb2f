"""The videos of a run, handed out to its decode processes through one pipe, with no lock between them.

A multiprocessing queue shared by the decode processes has a read lock, held while a process reads an
item, and for as long as it waits on an empty queue. A process killed meanwhile (the out-of-memory killer)
holds it for ever, and every other process then waits for ever in its next ``get``: the run hangs. The
queue's three named semaphores also outlive a run killed with its process group.

Here each video is one fixed-size record in a pipe (its job number; -1 means "no more videos"), and the
model process writes records only in whole blocks of at most ``PIPE_BUF`` bytes, which the kernel writes
atomically. A read of one record's size then always returns one whole record, whichever processes read
at once, with no lock to hold: a process killed while it takes a video takes only that record with it.
The paths travel once, to each process as it starts.
"""

from __future__ import annotations

import os
import queue
import select
import struct
import threading
from dataclasses import dataclass
from typing import Any

_RECORD = struct.Struct("<q")
_NO_MORE = -1
#: records per write: a write of at most PIPE_BUF bytes is never interleaved with another, nor read in part
_PER_WRITE = max(1, getattr(select, "PIPE_BUF", 512) // _RECORD.size)


@dataclass
class VideoTaker:
    """A decode process's end: the next ``(job, path)``, or None when there are no more."""

    conn: Any  # the pipe's read end (a multiprocessing Connection: it travels to a spawned process)
    paths: dict[int, str]

    def take(self) -> tuple[int, str] | None:
        record = os.read(self.conn.fileno(), _RECORD.size)
        if len(record) != _RECORD.size:  # end of file: the model process is gone
            raise EOFError("the model process closed the list of videos")
        (job,) = _RECORD.unpack(record)
        return None if job == _NO_MORE else (job, self.paths[job])


class VideoHandout:
    """The model process's end: writes the jobs, then one end-of-work record per decode process, from a
    thread of its own (a pipe holds a few thousand records; a long list waits for room there)."""

    def __init__(self, ctx: Any, jobs: list[tuple[int, str]], processes: int) -> None:
        read_end, self._write_end = ctx.Pipe(duplex=False)
        self.taker = VideoTaker(read_end, dict(jobs))
        self._records: queue.SimpleQueue = queue.SimpleQueue()
        for job, _ in jobs:
            self._records.put(job)
        for _ in range(processes):
            self.add_end()
        self._feeder = threading.Thread(target=self._feed, name="vfeat-handout", daemon=True)
        self._feeder.start()

    def add_end(self) -> None:
        """One more end-of-work record, after every job: for a process that replaces one that died (which
        may have taken its own)."""
        self._records.put(_NO_MORE)

    def _feed(self) -> None:
        fd = self._write_end.fileno()
        while (job := self._records.get()) is not None:
            block = [job]
            while len(block) < _PER_WRITE:
                try:
                    job = self._records.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._records.put(None)  # seen after this block is written
                    break
                block.append(job)
            try:
                os.write(fd, b"".join(_RECORD.pack(j) for j in block))
            except OSError:  # no reader is left (the run stops): nobody needs the rest
                return

    def close(self) -> None:
        """After the decode processes have ended. Closing the read end first ends a write still waiting
        for room (no reader left), so the feeder is done before its descriptor is closed."""
        self._records.put(None)
        self.taker.conn.close()
        self._feeder.join(timeout=5)
        self._write_end.close()
