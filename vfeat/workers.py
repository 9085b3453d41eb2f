"""Decode workers: one video in, a stream of small messages out (frames already upright, resized and
cropped, as uint8). Runs in worker processes, or inline when ``--workers 0``.

Messages (tuples, cheap to pickle):
- ``("video", job, info, timestamps_ms [rows], clip_rows)``: probe + plan, sent before any frame;
- ``("frames", job, rows, pixels)``: ``pixels`` uint8 [k, S, S, 3]; ``rows[i]`` lists the store rows that
  show frame i (a frame is decoded once even when several targets land on it). From a worker process
  ``pixels`` may instead be :class:`~vfeat.frame_ring.RingSlots`: where the frames wait in shared memory;
- ``("done", job)`` or ``("error", job, message)``.

A decode process also says ``("took", job)`` as it takes a video and ``("exit", held_s)`` at the end:
``held_s``, the seconds it waited for the model process to take its frames (:class:`FrameCredits`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterator

import numpy as np

from vfeat.decode import Resize, decode_selected, probe
from vfeat.errors import VfeatError
from vfeat.frame_ring import FrameRing, RingWriter
from vfeat.sampling import SamplingPlan, select_frames
from vfeat.store.fingerprint import file_fingerprint

CHUNK_FRAMES = 16


class RowsOfFrame:
    """Which store rows show each wanted frame (several when targets repeat a frame), as two arrays rather
    than a dict of lists: in "all frames" mode a 2-hour video has a row per frame."""

    def __init__(self, row_pts: np.ndarray) -> None:
        self.order = np.argsort(row_pts, kind="stable")  # rows grouped by pts, in row order within a group
        self.wanted, self.first = np.unique(row_pts[self.order], return_index=True)
        self.end = np.append(self.first[1:], len(row_pts))

    def __getitem__(self, pts: int) -> list[int]:
        i = int(np.searchsorted(self.wanted, pts))
        return self.order[self.first[i] : self.end[i]].tolist()


def decode_job(job: int, path: str, plan: SamplingPlan, resize: Resize, one_clip: bool) -> Iterator[tuple[Any, ...]]:
    """Yield the messages for one video; any failure becomes an ``error`` message naming the file."""
    try:
        probed = probe(path)
        selection = select_frames(plan, probed.timestamps_s, probed.info.duration_s, one_clip=one_clip)
        rows_of = RowsOfFrame(probed.pts[selection.frame_indices])
        timestamps_ms = probed.timestamps_ms[selection.frame_indices]
        info = {**probed.info.as_dict(), **file_fingerprint(path)}  # what the file was: a rerun notices a change
        yield ("video", job, info, timestamps_ms, selection.clip_rows)
        rows: list[list[int]] = []
        pixels: list[np.ndarray] = []
        for pts, image in decode_selected(path, rows_of.wanted, resize, probed.skip, shown_pts=probed.shown_pts):
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


class FrameCredits:
    """The decoded frames this process may still send before the model process has taken them: it starts
    with its share of the frame budget and the model process gives them back, over the same connection,
    as it takes frames (:mod:`vfeat.decode_processes`). Bounding frames rather than messages lets a process
    run ahead through many short videos (three messages each) while the model process is busy."""

    def __init__(self, conn: Any, frames: int) -> None:
        self.conn, self.left = conn, frames
        self.waited_s = 0.0  # held back by the model process: a model-bound run, not a decode-bound one
        self.model_reading = False

    def acquire(self) -> None:
        """Take a credit, waiting for the model process to give some back if none is left. The first thing
        it sends is no credit at all but word that it reads frames now (before, it was loading its model):
        waits until then are not the model holding decoding back, and are not counted."""
        while self.left == 0:
            started = time.perf_counter()
            credits = self.conn.recv()
            if self.model_reading:
                self.waited_s += time.perf_counter() - started
            self.model_reading = True
            self.left += credits
        self.left -= 1


class Outbox:
    """Messages to the parent process over ``conn``, sent in order by a thread of their own: a decode process
    decodes on while a large message waits for the model process to read it, and any thread of a device
    process may report."""

    def __init__(self, conn: Any) -> None:
        self.waiting: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._send_all, args=(conn,), name="vfeat-outbox", daemon=True)
        self.thread.start()

    def put(self, message: tuple) -> None:
        self.waiting.put(message)

    def _send_all(self, conn: Any) -> None:
        try:
            while (message := self.waiting.get()) is not None:
                conn.send(message)
        except OSError:  # the parent is gone: a decode process ends when it next waits for credits
            pass

    def close(self) -> None:
        """Send what is waiting, then stop."""
        self.waiting.put(None)
        self.thread.join()


def worker_main(jobs: Any, conn: Any, plan: SamplingPlan, resize: Resize, one_clip: bool, hwaccel: str | None,
                threads: int | None, ring: FrameRing | None, process: int, credits: int) -> None:
    """Process entry point: take ``(job, path)`` from ``jobs`` (a :class:`~vfeat.handout.VideoTaker`) until
    ``None``; send the messages on ``conn``, this process's connection to the model process.

    ``ring``: frames go into this process's slots of the shared-memory :class:`FrameRing` (number
    ``process``) and the messages carry only where they are. Without a ring the pixels travel in the
    messages. Either way at most ``credits`` decoded frames wait for the model process
    (:class:`FrameCredits`). ``hwaccel`` ("cuda"): this worker decodes on the GPU's video decoder (NVDEC)
    instead of the CPU. ``threads``: FFmpeg decoding threads of this worker (its share of the cores),
    unless the user set ``VFEAT_DECODE_THREADS`` (0: FFmpeg's default, a thread per core)."""
    import os
    import signal

    from vfeat._log import show_warnings

    # Ctrl-C reaches the whole process group: the model process stops its decode processes and says so once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    show_warnings()  # a spawned process has no logging set up: its warnings would be bare lines
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # read by vfeat.decode, in this process only
    if hwaccel:
        os.environ["VFEAT_HWACCEL"] = hwaccel
    if threads:
        os.environ.setdefault("VFEAT_DECODE_THREADS", str(threads))
    frame_credits, outbox = FrameCredits(conn, credits), Outbox(conn)
    writer = RingWriter(ring, process, frame_credits) if ring is not None else None
    try:
        while (item := jobs.take()) is not None:
            job, path = item
            outbox.put(("took", job))  # should this process die now, the model process knows which video
            for message in decode_job(job, path, plan, resize, one_clip):
                if message[0] == "frames" and writer is not None and message[3].shape[1:] == writer.frame_shape:
                    for through_ring in writer.write(*message[1:]):
                        outbox.put(through_ring)
                    continue
                if message[0] == "frames":
                    for _ in range(len(message[3])):
                        frame_credits.acquire()
                outbox.put(message)
        outbox.put(("exit", frame_credits.waited_s))
    except (EOFError, ConnectionError):  # the model process is gone (killed): nobody is left to decode for
        pass
    finally:
        outbox.close()
        if writer is not None:
            writer.close()
            ring.close()
