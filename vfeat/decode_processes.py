"""The local engine's decode processes, seen from the model process: start them, read their messages,
give back the frames they may send, and replace one that dies.

Each decode process has a connection of its own to the model process (a socket pair), and nothing else
shared but the pipe it takes videos from (:mod:`vfeat.handout`, which needs no lock). Its messages come
back in its order (the protocol of :mod:`vfeat.workers`), and the end of the connection is the end of the
process: once everything it sent is read, the model process knows whether it said ``exit`` or died, and
which video it was decoding. A multiprocessing queue shared by all of them for their results would have a write lock: a process killed
while writing (the out-of-memory killer, a crash inside FFmpeg while its queue's thread writes) would hold
it for ever, and hang the run on a half-written message.

Frames wait in the process's slots of the shared-memory :class:`~vfeat.frame_ring.FrameRing` (or travel in
the messages, see there). Either way a decode process may have a fixed number of decoded frames not yet
taken by the model process, its *credits*: it starts with them, spends one per frame, and the model
process gives them back over the same connection, in lots (:meth:`DecodeProcesses._give_back`), as it
takes frames.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from multiprocessing import connection
from typing import TYPE_CHECKING, Any, Iterator

import torch

from vfeat._spawn import spawn_context
from vfeat.decode import Resize
from vfeat.errors import WorkerError
from vfeat.frame_ring import FrameRing, RingSlots
from vfeat.handout import MAX_PATH_BYTES, VideoHandout
from vfeat.sampling import SamplingPlan
from vfeat.workers import CHUNK_FRAMES, worker_main

if TYPE_CHECKING:
    from vfeat.pipeline import RunStats

#: decode processes that use the GPU's video decoder under ``--hwaccel`` (beside the CPU ones): NVDEC
#: needs several sessions in flight to keep its engines busy (7 on an H100/H200)
HWACCEL_WORKERS = 4

#: decoded frames each decode process may have waiting for the model process, at least. A process sends
#: up to CHUNK_FRAMES at a time and, through the pipe, needs credits for all of them first.
FRAMES_PER_DECODER = 4 * CHUNK_FRAMES


def default_workers(device: torch.device | str = "cpu", processes: int = 1) -> int:
    """Decode processes for each of ``processes`` model processes on ``device``. With the model on a GPU,
    decoding is the bottleneck: every core the model processes do not need decodes. With the model on the
    CPU, the model needs the cores itself and decoding costs a fraction of it (a fifth at 1 fps on 720p):
    one core fewer than the machine has, at most 8, shared by the model processes."""
    cores = os.cpu_count() or 2
    if torch.device(device).type == "cuda":
        return max(1, (cores - processes) // processes)
    return max(1, min(8, cores - 1) // processes)


def decoder_threads(processes: int) -> int:
    """FFmpeg threads for each of ``processes`` decode processes: its share of the cores. FFmpeg's default
    (a thread per core in every process) put 15 x 17 threads on a 16-core GPU machine, and frame threading
    decodes up to a thread's worth of packets past each wanted frame before the frame comes out, work that
    GOP skipping would have saved."""
    return max(1, (os.cpu_count() or 1) // processes)


@dataclass
class _Seat:
    """One decode process's place: its slots in the ring and its hardware decoder, kept by the process
    that replaces it; its process, connection and the video it took last."""

    hwaccel: str | None
    process: Any = None
    conn: Any = None  # None once the process has ended
    took: int | None = None
    said_exit: bool = False
    held_s: float = 0.0  # what the processes of this seat waited for credits, as they said at exit
    owed: int = 0  # credits for frames taken, not yet given back


class DecodeProcesses:
    """The decode processes of one run. One that dies while decoding a video (a crash inside the decoder
    on a bad file, the out-of-memory killer) costs that video only: it is reported failed, and a new
    process takes over its seat (its ring slots, its credits) for the videos still queued. One that dies
    before taking any video is not replaced, so processes that cannot start are not started again and
    again."""

    def __init__(self, jobs: list[tuple[int, str]], decode_args: tuple, decoders: list[str | None],
                 frames_waiting: int, frame_shape: tuple[int, ...] | None) -> None:
        self.ctx = spawn_context()
        self.paths = dict(jobs)
        self.decode_args = decode_args  # worker_main's plan, resize, one_clip
        self.threads = decoder_threads(len(decoders))
        self.credits = max(FRAMES_PER_DECODER, -(-frames_waiting // len(decoders)))
        self.give_back_at = max(1, min(self.credits // 4, self.credits - CHUNK_FRAMES + 1))
        self.ended: set[int] = set()  # jobs whose decoding ended: done, error, or their process died
        self.handout = VideoHandout(self.ctx, jobs, len(decoders))
        self.ring = FrameRing.create(len(decoders), self.credits, frame_shape)
        self.seats = [_Seat(hwaccel) for hwaccel in decoders]
        self.stopped = False
        self.reading = False  # messages() has begun: the model process takes frames
        try:
            for number in range(len(self.seats)):
                self._start(number)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> DecodeProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self, number: int) -> None:
        seat = self.seats[number]
        ours, theirs = self.ctx.Pipe(duplex=True)
        args = (self.handout.taker, theirs, *self.decode_args, seat.hwaccel, self.threads, self.ring, number, self.credits)
        seat.process, seat.conn = self.ctx.Process(target=worker_main, args=args, daemon=True), ours
        seat.took, seat.said_exit, seat.owed = None, False, 0
        seat.process.start()
        theirs.close()  # the process holds the only other end now: its death ends the connection
        if self.reading:  # a process replacing one that died
            self._say_reading(seat)

    @staticmethod
    def _say_reading(seat: _Seat) -> None:
        """Tell a process that this one reads its frames from now on (:class:`~vfeat.workers.FrameCredits`:
        no credit, the first thing it receives), so that it does not count waiting for the model to load
        as waiting for the model to take frames."""
        try:
            seat.conn.send(0)
        except (BrokenPipeError, ConnectionResetError):  # it has just died: its end of the connection comes next
            pass

    def messages(self, stats: RunStats) -> Iterator[tuple]:
        """The decode messages of every process as they come (frames copied out of the ring), until every
        process has ended; ``stats.decode_wait_s`` adds up the time spent waiting for them, and at the end
        ``stats.decoders_held_s`` is the time a decode process waited for this one to take its frames (the
        mean over the processes): which of the two waited says whether decoding or the model bounds the run."""
        self.reading = True
        for seat in self.seats:
            if seat.conn is not None:
                self._say_reading(seat)
        for job in self.handout.too_long:
            self.ended.add(job)
            yield ("error", job, f"{self.paths[job]}: its path is longer than {MAX_PATH_BYTES} bytes, more than vfeat can "
                                 "hand to a decode process; rename or link the file")
        while live := {seat.conn: number for number, seat in enumerate(self.seats) if seat.conn is not None}:
            start = time.perf_counter()
            ready = connection.wait(list(live))
            stats.decode_wait_s += time.perf_counter() - start
            for conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # it ended, and everything it sent has been read
                    yield from self._ended(live[conn])
                    continue
                message = self._on_message(live[conn], message)
                if message is not None:
                    yield message
        stats.decoders_held_s = sum(seat.held_s for seat in self.seats) / len(self.seats)
        if len(self.ended) < len(self.paths):
            yield from self._lost()

    def _lost(self) -> Iterator[tuple]:
        """Videos no process reported on at the end. Every video is taken before any process's end-of-work
        record, so each was taken by a process that died before it could say so. If none worked at all
        (none said ``exit``), the processes cannot start: that stops the run."""
        if not any(seat.said_exit for seat in self.seats):
            raise WorkerError(_workers_died([s.process.exitcode for s in self.seats], self.decoding()))
        codes = sorted({s.process.exitcode for s in self.seats if not s.said_exit and s.process.exitcode is not None})
        how = ", ".join(_signal_name(-code) if code < 0 else f"exit code {code}" for code in codes) or "exit status unknown"
        for job in sorted(set(self.paths) - self.ended):
            self.ended.add(job)
            yield ("error", job, f"{self.paths[job]}: the decode process that took it died ({how}) before it began: a "
                                 "crash, or the out-of-memory killer; the other videos go on")

    def _on_message(self, number: int, message: tuple) -> tuple | None:
        seat, kind = self.seats[number], message[0]
        if kind == "took":
            seat.took = message[1]
            return None
        if kind == "exit":
            seat.said_exit = True
            seat.held_s += message[1]
            return None
        if kind in ("done", "error"):
            self.ended.add(message[1])
        if kind == "frames":
            pixels = message[3]
            if isinstance(pixels, RingSlots):
                pixels = self.ring.take(pixels)  # type: ignore[union-attr]
                message = (*message[:3], pixels)
            seat.owed += len(pixels)
            if seat.owed >= self.give_back_at:
                self._give_back(seat)
        return message

    def _give_back(self, seat: _Seat) -> None:
        """Credits go back in lots of ``give_back_at``: a process reads them only when it runs out, so a
        message per frame would pile up in the connection (a few hundred one-frame videos fill it, and
        both processes would then wait on each other). A lot is a quarter of the credits, which leaves a
        process three quarters to decode on with while the rest come back; with a small budget it is
        less: a process waiting for credits holds those of up to a message's frames (CHUNK_FRAMES - 1)
        that it has not sent yet, so once more than credits - CHUNK_FRAMES are owed they must go back."""
        try:
            seat.conn.send(seat.owed)
        except (BrokenPipeError, ConnectionResetError):  # it has just died: its end of the connection comes next
            pass
        seat.owed = 0

    def _ended(self, number: int) -> Iterator[tuple]:
        seat = self.seats[number]
        seat.conn.close()
        seat.conn = None
        seat.process.join(timeout=5)
        if seat.said_exit:
            return
        self.handout.add_end()  # in case the dead one had taken its own: for the new process, or a live one
        if seat.took is None:  # died before taking a video (see the class)
            return
        job, code = seat.took, seat.process.exitcode
        self._start(number)
        if job in self.ended:
            return
        self.ended.add(job)
        how = "exit status unknown" if code is None else _signal_name(-code) if code < 0 else f"exit code {code}"
        yield ("error", job, f"{self.paths[job]}: the decode process died ({how}) while decoding it: a crash inside the "
                             "decoder, or the out-of-memory killer; the other videos go on")

    def decoding(self) -> list[str]:
        return [self.paths[s.took] for s in self.seats if s.took is not None and s.took not in self.ended]

    def stop(self) -> None:
        """End every process and free the pipe and the ring; once (the caller that started them early and
        :func:`vfeat.pipeline.run`, which took them over, may both stop them)."""
        if self.stopped:
            return
        self.stopped = True
        for seat in self.seats:
            if seat.process is not None and seat.process.pid is not None:  # the started ones
                if seat.process.is_alive():
                    seat.process.terminate()
                seat.process.join(timeout=5)
            if seat.conn is not None:
                seat.conn.close()
                seat.conn = None
        self.handout.close()
        if self.ring is not None:
            self.ring.close()


def start_decode_processes(jobs: list[tuple[int, str]], plan: SamplingPlan, resize: Resize, one_clip: bool, workers: int,
                           hwaccel: str | None = None, hwaccel_workers: int = 0, frame_budget: int = 0) -> DecodeProcesses:
    """Start decoding ``jobs`` in ``workers`` CPU decode processes and ``hwaccel_workers`` that decode on the
    ``hwaccel`` device; all take videos from one pipe (the faster take more). At most ``frame_budget``
    decoded frames wait for the model process, and at least :data:`FRAMES_PER_DECODER` per decode process.
    Use the result as a context manager: leaving it stops the processes."""
    decoders = [None] * workers + ([hwaccel] * hwaccel_workers if hwaccel else [])
    return DecodeProcesses(jobs, (plan, resize, one_clip), decoders, frame_budget,
                           None if resize is None else (resize.crop, resize.crop, 3))


def decode_in_processes(jobs: list[tuple[int, str]], plan: SamplingPlan, resize: Resize, one_clip: bool, workers: int,
                        stats: RunStats, hwaccel: str | None = None, hwaccel_workers: int = 0,
                        frame_budget: int = 0) -> Iterator[tuple]:
    """The messages of :func:`start_decode_processes`' processes as they come; ``stats.decode_wait_s`` adds
    up the time spent waiting for them. The processes start at the first message asked for."""
    with start_decode_processes(jobs, plan, resize, one_clip, workers, hwaccel, hwaccel_workers, frame_budget) as processes:
        yield from processes.messages(stats)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _workers_died(exit_codes: list[int | None], decoding: list[str]) -> str:
    """Why no decode worker is left. Killed by a signal: the out-of-memory killer, or the decoder crashed on
    a video (named when its decoding had begun). Exited with an error before any work: a process that
    could not start (its traceback is on stderr)."""
    signals = sorted({_signal_name(-code) for code in exit_codes if code is not None and code < 0})
    if signals:
        where = f" while decoding {', '.join(decoding)}" if decoding else ""
        return (f"decode processes were killed by {'/'.join(signals)}{where} (exit codes {exit_codes}): the "
                "out-of-memory killer, or a crash inside the decoder. What was stored is kept: rerun the same command to "
                "resume, and leave a video out if it brings the decoder down again")
    return (f"all decode workers exited unexpectedly (exit codes {exit_codes}) before taking a video: their error is "
            "printed above; workers=0 (--workers 0) decodes in this process instead")
