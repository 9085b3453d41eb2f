"""videos -> decode workers -> batches across videos -> model -> writer. The only module that knows all three.

Decoding runs in worker processes that hand frames over through shared memory, at most a bounded number
waiting (memory stays bounded whatever the video length); the model runs here, on batches that mix frames
(or clips) of several videos so short videos still fill a batch, one batch in flight on a GPU while the
next is gathered; a video is handed to the writer when all its rows are encoded.

Public pieces, shared by the local :func:`run` and the Ray engine's model actors:
:func:`check_plan`, :func:`decode_resize` and :func:`one_clip_per_video` (what the decoder must deliver),
:func:`encode_videos` (decode messages in, finished records out) and :func:`report` (counting them).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from vfeat.decode import Resize
from vfeat.errors import InputError, WorkerError
from vfeat.frame_ring import FrameRing, RingSlots
from vfeat.models.base import VideoEncoder
from vfeat.sampling import SamplingPlan
from vfeat.sources import VideoSource
from vfeat.store.format import Failure, VideoRecord
from vfeat.store.spool import RowBuffer
from vfeat.workers import CHUNK_FRAMES, decode_job, worker_main


@dataclass
class _Video:
    """A video being assembled: rows arrive in chunks, embeddings fill in as batches run."""

    source: VideoSource
    info: dict[str, Any]
    timestamps_ms: np.ndarray
    clip_rows: list[list[int]]
    frame_features: RowBuffer | None = None  # [rows, D] in the storage dtype, spooled to disk when large
    clip_features: np.ndarray | None = None  # [clips, D], in the storage dtype
    rows_encoded: int = 0
    clips_encoded: int = 0
    decoded: bool = False
    pixels: dict[int, np.ndarray] = field(default_factory=dict)  # clip models: rows waiting for their clip
    next_clip: int = 0
    failed: bool = False  # decoding failed midway: rows of it still in a batch are dropped, not written


@dataclass
class RunStats:
    videos_ok: int = 0
    videos_failed: int = 0
    frames: int = 0
    video_seconds: float = 0.0  # duration of the videos stored: with wall time, how many times real time
    decode_wait_s: float = 0.0
    model_s: float = 0.0


def report(result: VideoRecord | Failure, stats: RunStats, on_progress: Callable[[RunStats, int], None] | None = None) -> None:
    """Count one finished video, say on stderr why a failed one was skipped, and tell ``on_progress``
    (with the frames it added). Every engine reports its videos through here."""
    if isinstance(result, Failure):
        stats.videos_failed += 1
        print(f"vfeat: skipped {result.error}", file=sys.stderr)
        frames = 0
    else:
        frames = len(result.timestamps_ms)
        stats.videos_ok += 1
        stats.frames += frames
        stats.video_seconds += float(result.info.get("duration_s") or 0.0)
    if on_progress:
        on_progress(stats, frames)


@dataclass
class _InFlight:
    """A batch queued on the device. Its outputs are read back only after the next batch is queued, so the
    host gathers batch N+1 while the GPU computes batch N instead of both taking turns."""

    units: list[tuple[_Video, Any, int]]  # (video, rows or clip index, frames): the pixels are on the device
    outputs: list[torch.Tensor | None]  # on the host: [frames, D]; or clip models' [clips, D] and [clips, T, D] | None
    ready: Any = None  # a CUDA event recorded after the copies back; None where the outputs are ready at once


class Batcher:
    """Collects encodable units across videos and runs the model when a batch is full. On a GPU one batch
    stays in flight: :meth:`run` queues the new batch, then hands out the previous one's outputs, and
    :meth:`flush` hands out the last. The CPU computes a batch as it is queued, so there its outputs go out
    at once (and progress does not lag a batch behind)."""

    #: keep a batch in flight on the CPU too: the GPU's order of events, for tests without a GPU
    in_flight_on_cpu = False

    def __init__(self, encoder: VideoEncoder, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.encoder, self.device, self.dtype = encoder, device, dtype
        self.frame_level = encoder.frame_level
        size = encoder.preprocess.image_size
        self.mean = torch.tensor(encoder.preprocess.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(encoder.preprocess.std, device=device).view(1, 3, 1, 1) * 255.0
        self.batch_size = batch_size
        self.units: list[tuple[_Video, Any, np.ndarray]] = []  # (video, rows or clip index, uint8 pixels)
        self.pending = 0
        self.size = size
        self.in_flight: _InFlight | None = None
        self.asynchronous = self.device.type == "cuda"
        self.keep_in_flight = self.asynchronous or self.in_flight_on_cpu
        self.seconds = 0.0  # time spent in the model (and host<->device copies), waits for the device included

    def add(self, video: _Video, key: Any, pixels: np.ndarray) -> None:
        self.units.append((video, key, pixels))
        self.pending += len(pixels)
        if self.pending >= self.batch_size:
            self.run()

    def run(self) -> None:
        """Queue the units collected so far on the device, then hand out the batch queued before them
        (on the CPU: and this one)."""
        if not self.units:
            return
        units, self.units, self.pending = self.units, [], 0
        started = time.perf_counter()
        try:
            queued = self._launch(units)
        finally:
            self.seconds += time.perf_counter() - started
        self._collect()
        self.in_flight = queued
        if not self.keep_in_flight:
            self._collect()

    def flush(self) -> None:
        """Run what is collected and hand out every output: the end of the input."""
        self.run()
        self._collect()

    def _stage(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """The batch's pixels in one host tensor, in page-locked memory on a GPU (the copy to the device
        then runs asynchronously), filled by a single copy."""
        shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
        host = torch.empty(shape, dtype=torch.uint8, pin_memory=self.asynchronous)
        np.concatenate(arrays, out=host.numpy())
        return host

    def _normalise(self, host: torch.Tensor) -> torch.Tensor:
        tensor = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((tensor - self.mean) / self.std).to(self.dtype).contiguous(memory_format=torch.channels_last)

    def _to_host(self, out: torch.Tensor | None) -> torch.Tensor | None:
        if out is None:
            return None
        out = out.float()
        if not self.asynchronous:
            return out
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        return host.copy_(out, non_blocking=True)

    @torch.inference_mode()
    def _launch(self, units: list[tuple[_Video, Any, np.ndarray]]) -> _InFlight:
        pixels = self._normalise(self._stage([u[2] for u in units]))
        if self.frame_level:
            outputs = [self._to_host(self.encoder.encode_frames(pixels))]
        else:  # units hold whole clips, [T, S, S, 3] each
            result = self.encoder.encode_video(pixels.reshape(len(units), -1, 3, self.size, self.size))
            outputs = [self._to_host(result.clips), self._to_host(result.frames)]
        ready = None
        if self.asynchronous:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return _InFlight([(video, key, len(frames)) for video, key, frames in units], outputs, ready)

    def _collect(self) -> None:
        """Wait for the batch in flight and write its outputs into its videos."""
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return
        if flight.ready is not None:
            started = time.perf_counter()
            flight.ready.synchronize()
            self.seconds += time.perf_counter() - started
        if self.frame_level:
            out = flight.outputs[0].numpy()
            at = 0
            for video, rows_per_frame, frames in flight.units:
                if not video.failed:
                    for i, rows in enumerate(rows_per_frame):
                        video.frame_features[rows] = out[at + i]  # type: ignore[index]
                        video.rows_encoded += len(rows)
                at += frames
            return
        clip_out = flight.outputs[0].numpy()
        frame_out = None if flight.outputs[1] is None else flight.outputs[1].numpy()
        for i, (video, clip_index, _) in enumerate(flight.units):
            if video.failed:
                continue
            video.clip_features[clip_index] = clip_out[i]  # type: ignore[index]
            video.clips_encoded += 1
            rows = video.clip_rows[clip_index]
            if frame_out is not None:
                video.frame_features[rows] = frame_out[i]  # type: ignore[index]
            video.rows_encoded += len(rows)


def _finish(video: _Video, encoder: VideoEncoder, plan: SamplingPlan, dtype: np.dtype) -> VideoRecord:
    ts = video.timestamps_ms
    with_clips = bool(video.clip_rows) and (plan.mode == "clips" or not encoder.frame_level)
    if with_clips and video.clip_features is None:  # frame-level model: a clip is the mean of its frames
        video.clip_features = np.stack([video.frame_features[rows].astype(np.float32).mean(axis=0) for rows in video.clip_rows])  # type: ignore[index]
    record = VideoRecord(
        video_id=video.source.video_id,
        path=video.source.path,
        info={k: video.info[k] for k in ("fps", "duration_s", "width", "height", "num_frames", "start_time_s", "rotation")},
        features=None if video.frame_features is None else video.frame_features.finish(),
        timestamps_ms=ts,
    )
    if with_clips:
        record.clip_features = video.clip_features.astype(dtype, copy=False)  # type: ignore[union-attr]
        record.clip_start_ms = np.array([ts[rows[0]] for rows in video.clip_rows], dtype=np.float64)
        record.clip_end_ms = np.array([ts[rows[-1]] for rows in video.clip_rows], dtype=np.float64)
    return record


def _discard(video: _Video | None) -> None:
    """Drop a video that will not be stored; its rows still in a batch are then not written."""
    if video is None:
        return
    video.failed = True
    if video.frame_features is not None:
        video.frame_features.discard()


def _push_ready_clips(video: _Video, batch: Batcher) -> None:
    while video.next_clip < len(video.clip_rows):
        rows = video.clip_rows[video.next_clip]
        if not all(r in video.pixels for r in rows):
            return
        batch.add(video, video.next_clip, np.stack([video.pixels[r] for r in rows]))
        for r in rows:
            video.pixels.pop(r, None)
        video.next_clip += 1


# -- what the decoder must deliver for a model ------------------------------------------------------------

def check_plan(encoder: VideoEncoder, plan: SamplingPlan) -> None:
    """Refuse, before any work, a plan the model cannot encode: clip models need clips, not single frames."""
    if not encoder.frame_level and plan.mode in ("fps", "all"):
        raise InputError(
            f"{encoder.identity.name} encodes whole clips: use --num-frames N (one clip per video) or --clips V --clip-len T --stride S."
        )


def decode_resize(encoder: VideoEncoder) -> Resize:
    """Frames leave the decoder at the model's input size, resized with the model's interpolation."""
    pre = encoder.preprocess
    return Resize(short_side=pre.image_size, crop=pre.image_size, interpolation=_swscale_name(pre.interpolation))


def one_clip_per_video(encoder: VideoEncoder, plan: SamplingPlan) -> bool:
    """A clip model sampling N frames per video (not ``--clips``) encodes them as the video's one clip."""
    return not encoder.frame_level and plan.mode != "clips"


def _swscale_name(interpolation: str) -> str:
    return {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "POINT", "lanczos": "LANCZOS"}.get(interpolation.lower(), "BICUBIC")


# -- decoded videos -> model -> records ---------------------------------------------------------------------

def encode_videos(messages: Iterable[tuple], sources: Sequence[VideoSource], encoder: VideoEncoder, plan: SamplingPlan, *,
                  batch_size: int = 64, storage_dtype: str = "float16", stats: RunStats | None = None,
                  spool_dir: str | None = None) -> Iterator[VideoRecord | Failure]:
    """Decode messages (the protocol of :mod:`vfeat.workers`; ``job`` indexes ``sources``) in, each video's
    :class:`VideoRecord` (or :class:`Failure`) out as soon as all its rows are encoded. Model batches mix
    frames (or clips) of every video in flight. ``stats.model_s`` gets the time spent in the model.

    ``spool_dir``: where a long video's rows go once they outgrow memory (:mod:`vfeat.store.spool`); its
    record then names a file there. ``None`` keeps every video in memory (records that travel to another
    machine)."""
    batch = Batcher(encoder, batch_size, encoder.device, getattr(encoder, "compute_dtype", torch.float32))
    store_dtype = np.dtype(storage_dtype)
    videos: dict[int, _Video] = {}

    def finished() -> Iterator[VideoRecord]:
        for job in [j for j, v in videos.items() if v.decoded and v.rows_encoded == len(v.timestamps_ms)]:
            yield _finish(videos.pop(job), encoder, plan, store_dtype)

    try:
        for message in messages:
            kind, job = message[0], message[1]
            if kind == "video":
                _, _, info, timestamps_ms, clip_rows = message
                video = _Video(sources[job], info, timestamps_ms, clip_rows)
                if encoder.frame_outputs:
                    video.frame_features = RowBuffer(len(timestamps_ms), encoder.embed_dim, store_dtype, spool_dir)
                if clip_rows and not encoder.frame_level:
                    video.clip_features = np.zeros((len(clip_rows), encoder.embed_dim), store_dtype)
                videos[job] = video
            elif kind == "frames":
                _, _, rows, pixels = message
                video = videos[job]
                if encoder.frame_level:
                    batch.add(video, rows, pixels)
                else:
                    for row_list, image in zip(rows, pixels):
                        for row in row_list:
                            video.pixels[row] = image
                    _push_ready_clips(video, batch)
                yield from finished()  # a batch that ran may have encoded the last rows of a decoded video
            elif kind == "done":
                videos[job].decoded = True
                if not encoder.frame_level:
                    _push_ready_clips(videos[job], batch)
                yield from finished()
            elif kind == "error":
                _discard(videos.pop(job, None))
                yield Failure(sources[job].video_id, sources[job].path, message[2])
        batch.flush()
        yield from finished()
    finally:
        for video in videos.values():  # cut short: what was spooled for unfinished videos is garbage
            _discard(video)
        if stats is not None:
            stats.model_s += batch.seconds


# -- the local engine: decode processes on this machine ----------------------------------------------------

#: decode processes that use the GPU's video decoder under ``--hwaccel`` (beside the CPU ones): NVDEC
#: needs several sessions in flight to keep its engines busy (7 on an H100/H200)
HWACCEL_WORKERS = 4

#: decoded frames the queue holds per decode process, at least. A worker takes a unit per frame before it
#: sends a message of up to CHUNK_FRAMES: with less than a message's worth each, all workers could hold
#: part of the budget and none could send.
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


def _messages_inline(jobs: list[tuple[int, str]], plan: SamplingPlan, resize: Resize, one_clip: bool) -> Iterator[tuple]:
    for job, path in jobs:
        yield from decode_job(job, path, plan, resize, one_clip)


class _DecodeProcesses:
    """The decode processes of one run and the video each took. One that dies while decoding a video (a
    crash inside the decoder on a bad file, the out-of-memory killer) costs that video only: it is
    reported failed, and a new process takes over the videos still queued (its frames through the pipe:
    the dead one's ring slots are abandoned). One that dies before taking any video is not replaced, so
    processes that cannot start are not started again and again.

    Deaths are decided in queue order: a dead process gets a ``("dead", number)`` marker put on the results
    queue behind whatever it sent before it died, so its last ``done`` is always read first."""

    def __init__(self, ctx: Any, job_queue: Any, results: Any, decode_args: tuple, threads: int, paths: dict[int, str]) -> None:
        self.ctx, self.job_queue, self.results = ctx, job_queue, results
        self.decode_args, self.threads, self.paths = decode_args, threads, paths  # worker_main's budget, plan, resize, one_clip
        self.procs: list[Any] = []
        self.hwaccels: list[str | None] = []  # each process's
        self.took: dict[int, int] = {}  # process number -> the job it took last
        self.ended: set[int] = set()  # jobs whose decoding ended: done, error, or their process died
        self.gone: set[int] = set()  # process numbers that said "exit" or were found dead
        self.marked: set[int] = set()  # dead processes whose marker is on its way
        self.checked = time.monotonic()

    @property
    def running(self) -> int:
        return len(self.procs) - len(self.gone)

    def start(self, hwaccel: str | None, ring: FrameRing | None) -> None:
        number = len(self.procs)
        args = (self.job_queue, self.results, *self.decode_args, hwaccel, self.threads, ring, number)
        self.procs.append(self.ctx.Process(target=worker_main, args=args, daemon=True))
        self.hwaccels.append(hwaccel)
        self.procs[-1].start()

    def look_for_deaths(self, every_s: float = 1.0) -> None:
        """Put a marker behind the last messages of each process found dead (at most every ``every_s``)."""
        if time.monotonic() - self.checked < every_s:
            return
        self.checked = time.monotonic()
        for number, proc in enumerate(self.procs):
            if number not in self.gone and number not in self.marked and proc.exitcode is not None:
                self.marked.add(number)
                self.results.put(("dead", number))

    def on_message(self, message: tuple) -> tuple | None:
        """Book-keeping for one message; what to pass on (None: nothing), a failure for a dead process's video."""
        kind = message[0]
        if kind == "took":
            self.took[message[2]] = message[1]
            return None
        if kind == "exit":
            self.gone.add(message[1])
            return None
        if kind == "dead":
            return self._dead(message[1])
        if kind in ("done", "error"):
            self.ended.add(message[1])
        return message

    def _dead(self, number: int) -> tuple | None:
        if number in self.gone:  # its "exit" came first: it ended as it should
            return None
        self.gone.add(number)
        job = self.took.get(number)
        if job is None:  # died before taking a video: not replaced (see the class)
            return None
        self.job_queue.put(None)  # the new process's end of work, in case the dead one had taken its own
        self.start(self.hwaccels[number], None)
        if job in self.ended:
            return None
        self.ended.add(job)
        code = self.procs[number].exitcode
        how = _signal_name(-code) if code < 0 else f"exit code {code}"
        return ("error", job, f"{self.paths[job]}: the decode process died ({how}) while decoding it: a crash inside the "
                              "decoder, or the out-of-memory killer; the other videos go on")

    def decoding(self) -> list[str]:
        return [self.paths[job] for job in self.took.values() if job not in self.ended]

    def stop(self) -> None:
        for proc in (p for p in self.procs if p.pid is not None):  # the started ones
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)


def _messages_from_workers(jobs: list[tuple[int, str]], plan: SamplingPlan, resize: Resize, one_clip: bool, workers: int,
                           stats: RunStats, hwaccel: str | None = None, hwaccel_workers: int = 0,
                           frame_budget: int = 0) -> Iterator[tuple]:
    """Start ``workers`` CPU decode processes and ``hwaccel_workers`` that decode on the ``hwaccel``
    device; all take videos from one queue (the faster take more) and their messages come back as they
    come, the frames through shared memory where it can (:mod:`vfeat.frame_ring`). At most
    ``frame_budget`` decoded frames wait for this process, and at least :data:`FRAMES_PER_DECODER` per
    decode process. A process that dies while decoding a video fails that video (an ``error`` message)
    and is replaced (:class:`_DecodeProcesses`)."""
    ctx = mp.get_context("spawn")
    decoders = [None] * workers + ([hwaccel] * hwaccel_workers if hwaccel else [])
    job_queue = ctx.Queue()
    results = ctx.Queue()
    frames_waiting = max(frame_budget, FRAMES_PER_DECODER * len(decoders))
    budget = ctx.Semaphore(frames_waiting)
    ring = FrameRing.create(ctx, len(decoders), -(-frames_waiting // len(decoders)),
                            None if resize is None else (resize.crop, resize.crop, 3))
    for item in jobs:
        job_queue.put(item)
    for _ in decoders:
        job_queue.put(None)
    processes = _DecodeProcesses(ctx, job_queue, results, (budget, plan, resize, one_clip),
                                 decoder_threads(len(decoders)), dict(jobs))
    try:
        for decoder in decoders:
            processes.start(decoder, ring)
        while processes.running:
            start = time.perf_counter()
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                message = None
            finally:
                stats.decode_wait_s += time.perf_counter() - start
            processes.look_for_deaths()
            message = None if message is None else processes.on_message(message)
            if message is None:
                continue
            if message[0] == "frames" and isinstance(message[3], RingSlots):
                message = (*message[:3], ring.take(message[3]))  # type: ignore[union-attr]
            elif message[0] == "frames":
                for _ in range(len(message[3])):
                    budget.release()
            yield message
        if len(processes.ended) < len(jobs):  # videos left that no process took: none could start
            raise WorkerError(_workers_died([p.exitcode for p in processes.procs], processes.decoding()))
    finally:
        processes.stop()
        # jobs no worker took (the workers died, or the run was interrupted) must not hold this process at
        # exit: a queue's feeder thread waits to hand them over, and the interpreter waits for it
        job_queue.cancel_join_thread()
        if ring is not None:
            ring.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _workers_died(exit_codes: list[int | None], decoding: list[str]) -> str:
    """Why no decode worker is left. Killed by a signal: the out-of-memory killer, or the decoder crashed on
    a video (named when its decoding had begun). Exited with an error before any work: usually Python's
    spawn start method, under which each worker re-imports the caller's main module, which fails for code
    read from stdin and re-runs unguarded scripts."""
    signals = sorted({_signal_name(-code) for code in exit_codes if code is not None and code < 0})
    if signals:
        where = f" while decoding {', '.join(decoding)}" if decoding else ""
        return (f"decode processes were killed by {'/'.join(signals)}{where} (exit codes {exit_codes}): the "
                "out-of-memory killer, or a crash inside the decoder. What was stored is kept: rerun the same command to "
                "resume, and leave a video out if it brings the decoder down again")
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    hint = ("decode workers are spawned processes that import your main module: put the vfeat calls of a script "
            "under `if __name__ == \"__main__\":`, run it from a file (not stdin), or pass workers=0 (--workers 0)")
    if main and not os.path.isfile(main):
        hint = f"the main module {main!r} is not a file the decode workers can import: " + hint
    return f"all decode workers exited unexpectedly (exit codes {exit_codes}); {hint}"


def run(sources: list[VideoSource], encoder: VideoEncoder, plan: SamplingPlan, commit: Callable[[VideoRecord], None],
        fail: Callable[[Failure], None], batch_size: int = 64, workers: int | None = None, storage_dtype: str = "float16",
        on_progress: Callable[[RunStats, int], None] | None = None, spool_dir: str | None = None,
        hwaccel: str | None = None, hwaccel_workers: int | None = None) -> RunStats:
    """Encode ``sources`` and hand each finished video to ``commit`` (failures to ``fail``); long videos'
    rows are spooled under ``spool_dir`` (see :func:`encode_videos`). With ``hwaccel``,
    ``hwaccel_workers`` decode processes (default :data:`HWACCEL_WORKERS`) decode on that device beside
    the ``workers`` CPU ones."""
    stats = RunStats()
    if not sources:
        return stats
    resize, one_clip = decode_resize(encoder), one_clip_per_video(encoder, plan)
    jobs = [(i, s.path) for i, s in enumerate(sources)]
    workers = default_workers(encoder.device) if workers is None else workers
    hw = (HWACCEL_WORKERS if hwaccel_workers is None else hwaccel_workers) if hwaccel else 0
    messages: Iterable[tuple] = (
        _messages_inline(jobs, plan, resize, one_clip) if workers + hw == 0
        else _messages_from_workers(jobs, plan, resize, one_clip, workers, stats, hwaccel, hw,
                                    frame_budget=2 * batch_size)
    )
    for result in encode_videos(messages, sources, encoder, plan, batch_size=batch_size, storage_dtype=storage_dtype, stats=stats,
                                spool_dir=spool_dir):
        if isinstance(result, Failure):
            fail(result)
        else:
            commit(result)
        report(result, stats, on_progress)
    return stats
