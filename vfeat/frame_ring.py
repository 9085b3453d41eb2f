"""Decoded frames from the decode processes to the model process through shared memory.

Through a pipe or socket a 224 px frame (150 KB) costs the receiving process ~250 us of CPU
(kernel copies in 64 KiB pieces, then unpickling): on a GPU machine, where one model process receives
thousands of frames a second, that alone would take most of a core. Here each decode process owns a ring
of frame slots in one shared block of memory: it writes a frame into its next free slot and sends only
``(process, first slot, count)``; the model process copies the frames out and gives the slots back (~55 us
a frame in all, docs/performance.md). A process writes only into slots it has credits for
(:mod:`vfeat.decode_processes`), so its slots are also the bound on its decoded frames waiting for the
model process.

The block is an anonymous memory file (Linux ``memfd_create``) whose descriptor the decode processes
inherit when they start: it has no name, so nothing is left behind however the processes end (``kill -9``
of the whole process group included), and Docker's small ``/dev/shm`` does not limit it. Frames go
through the pipe instead where there is no ``memfd_create`` (not Linux), when the frames have no fixed
size, when ``VFEAT_FRAME_RING=0``, or when the memory cannot be had.
"""

from __future__ import annotations

import logging
import mmap
import os
from multiprocessing import reduction
from typing import Any, Iterator, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)


class RingSlots(NamedTuple):
    """What a ``frames`` message carries instead of pixels: ``count`` frames from ``start`` in the ring of
    decode process ``process``."""

    process: int
    start: int
    count: int


class FrameRing:
    """``processes`` rings of ``slots`` frames of ``frame_shape`` (uint8) in one block of shared memory.
    Made by the model process and passed to each decode process as it is started (the block's descriptor
    goes with it)."""

    def __init__(self, processes: int, slots: int, frame_shape: tuple[int, ...]) -> None:
        self.processes, self.slots, self.frame_shape = processes, slots, tuple(frame_shape)
        self.fd = os.memfd_create("vfeat-frame-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            os.posix_fallocate(self.fd, 0, self.size)  # the pages now: no memory is an error here, not a SIGBUS later
            self.memory = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise

    @classmethod
    def create(cls, processes: int, slots: int, frame_shape: tuple[int, ...] | None) -> FrameRing | None:
        """A ring of ``slots`` frames per process, or None where frames must go through the pipe."""
        if frame_shape is None or os.environ.get("VFEAT_FRAME_RING", "1") == "0" or not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(processes, slots, frame_shape)
        except OSError as exc:
            logger.info("no shared memory for decoded frames (%s): they go through a pipe", exc)
            return None

    @property
    def size(self) -> int:
        return self.processes * self.slots * int(np.prod(self.frame_shape))

    def __reduce__(self) -> tuple:
        # only while a decode process is being started: its copy of the descriptor is handed to it then
        return (_attach, (reduction.DupFd(self.fd), self.processes, self.slots, self.frame_shape))

    def ring(self, process: int) -> np.ndarray:
        """Decode process ``process``'s slots, [slots, *frame_shape]."""
        per_ring = self.size // self.processes
        return np.ndarray((self.slots, *self.frame_shape), np.uint8, buffer=self.memory, offset=process * per_ring)

    def take(self, where: RingSlots) -> np.ndarray:
        """Copy frames out of the ring (model process); their slots may then be written again."""
        return self.ring(where.process)[where.start : where.start + where.count].copy()

    def close(self) -> None:
        try:
            self.memory.close()
        except BufferError:  # a view is still alive (an exception's traceback): the mapping goes with it
            pass
        os.close(self.fd)


def _attach(fd: Any, processes: int, slots: int, frame_shape: tuple[int, ...]) -> FrameRing:
    ring = FrameRing.__new__(FrameRing)
    ring.processes, ring.slots, ring.frame_shape = processes, slots, frame_shape
    ring.fd = fd.detach()
    ring.memory = mmap.mmap(ring.fd, ring.size)
    return ring


class RingWriter:
    """A decode process's side of its ring: frames go into the next slots, in order, one credit each
    (``credits.acquire()`` waits for one; the model process takes frames in the order they were sent, so
    the slots its credits come back for are always the next ones)."""

    def __init__(self, frames: FrameRing, process: int, credits: Any) -> None:
        self.process, self.slots, self.frame_shape = process, frames.ring(process), frames.frame_shape
        self.credits = credits
        self.next = 0

    def write(self, job: int, rows: list, pixels: np.ndarray) -> Iterator[tuple]:
        """The ``frames`` messages that carry ``pixels`` through the ring: one per run of slots before the
        ring wraps, each sent once its frames are written."""
        at = 0
        while at < len(pixels):
            start = self.next
            count = min(len(pixels) - at, len(self.slots) - start)
            for i in range(count):
                self.credits.acquire()
                self.slots[start + i] = pixels[at + i]
            self.next = (start + count) % len(self.slots)
            yield ("frames", job, rows[at : at + count], RingSlots(self.process, start, count))
            at += count

    def close(self) -> None:
        del self.slots  # the view must go before the memory it looks into can close
