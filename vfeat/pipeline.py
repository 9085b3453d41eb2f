"""videos -> decode workers -> batches across videos -> model -> writer. The only module that knows all three.

Decoding runs in worker processes that hand frames over through shared memory, at most a bounded number
waiting (memory stays bounded whatever the video length); the model runs here, on batches that mix frames
(or clips) of several videos so short videos still fill a batch, one batch in flight on a GPU while the
next is gathered (and a first batch of blank frames while the workers start); a video is handed to the
writer when all its rows are encoded.

Public pieces, shared by the local :func:`run` and the Ray engine's model actors:
:func:`check_plan`, :func:`decode_resize` and :func:`one_clip_per_video` (what the decoder must deliver),
:func:`encode_videos` (decode messages in, finished records out) and :func:`report` (counting them).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from vfeat.decode import Resize
from vfeat.decode_processes import HWACCEL_WORKERS, DecodeProcesses, default_workers, start_decode_processes
from vfeat.errors import InputError, ModelError
from vfeat.models.base import VideoEncoder
from vfeat.sampling import SamplingPlan
from vfeat.sources import VideoSource
from vfeat.store.format import VIDEO_FIELDS, Failure, VideoRecord
from vfeat.store.spool import RowBuffer
from vfeat.workers import decode_job


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
    decode_wait_s: float = 0.0  # the model process waited for frames: decoding bounds the run
    decoders_held_s: float | None = None  # a decode process waited for the model process to take frames (mean)
    model_s: float = 0.0
    warm_up_s: float = 0.0  # the model's first batch, on blank frames, while the decode processes start


def report(result: VideoRecord | Failure, stats: RunStats, on_progress: Callable[[RunStats, int], None] | None = None) -> None:
    """Count one finished video, print a failed one as one line (the file and why), and tell ``on_progress``
    (with the frames it added). Every engine reports its videos through here."""
    if isinstance(result, Failure):
        stats.videos_failed += 1
        print(f"vfeat: failed {result.error}", file=sys.stderr)
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
    #: warm the model up on the CPU too (see :meth:`warm_up`), for tests without a GPU
    warm_up_on_cpu = False

    def __init__(self, encoder: VideoEncoder, batch_size: int) -> None:
        self.encoder, self.device = encoder, encoder.device
        self.dtype = getattr(encoder, "compute_dtype", torch.float32)  # set by load_model's --precision
        self.frame_level = encoder.frame_level
        size = encoder.preprocess.image_size
        self.mean = torch.tensor(encoder.preprocess.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(encoder.preprocess.std, device=self.device).view(1, 3, 1, 1) * 255.0
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

    def warm_up(self, frames_per_clip: int | None = None) -> None:
        """Run one full batch of blank frames through the whole path and wait for it; its outputs go nowhere.
        A GPU's first batches pay for loading kernels, choosing matrix algorithms and allocating page-locked
        memory; done while the decode processes start (a second or so in which the model process has no
        frames anyway), that costs the run nothing. ``frames_per_clip``: a clip model's frames per clip."""
        shape = (self.size, self.size, 3)
        if self.frame_level:
            units = [(None, None, np.zeros((self.batch_size, *shape), np.uint8))]
        else:
            frames = frames_per_clip or 1
            units = [(None, i, np.zeros((frames, *shape), np.uint8)) for i in range(-(-self.batch_size // frames))]
        flight = self._launch(units)  # type: ignore[arg-type]
        if flight.ready is not None:
            flight.ready.synchronize()

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


def _warm_up_wanted(encoder: VideoEncoder) -> bool:
    """On a GPU, unless ``VFEAT_WARM_UP=0`` (to measure what it buys); on the CPU a batch of blank frames
    would take cores from decoding."""
    if os.environ.get("VFEAT_WARM_UP", "1") == "0":
        return False
    return encoder.device.type == "cuda" or Batcher.warm_up_on_cpu


def _finish(video: _Video, encoder: VideoEncoder, plan: SamplingPlan, dtype: np.dtype) -> VideoRecord:
    ts = video.timestamps_ms
    with_clips = bool(video.clip_rows) and (plan.mode == "clips" or not encoder.frame_level)
    if with_clips and video.clip_features is None:  # frame-level model: a clip is the mean of its frames
        video.clip_features = np.stack([video.frame_features[rows].astype(np.float32).mean(axis=0) for rows in video.clip_rows])  # type: ignore[index]
    record = VideoRecord(
        video_id=video.source.video_id,
        path=video.source.path,
        info={k: video.info[k] for k in VIDEO_FIELDS if k in video.info},
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
    if not takes_plan(encoder.frame_level, plan):
        raise InputError(
            f"{encoder.identity.name} encodes whole clips: use --num-frames N (one clip per video) or --clips V --clip-len T --stride S."
        )


def advice(encoder: VideoEncoder, plan: SamplingPlan) -> list[str]:
    """Settings the model runs with but was not made for, a line each: said once per run, not refused
    (a clip model takes clips of any length, but its release was trained and evaluated on one)."""
    lines = list(encoder.advice)
    per_clip = plan.clip_len if plan.mode == "clips" else plan.num_frames if one_clip_of(encoder.frame_level, plan) else None
    if encoder.clip_len and per_clip and per_clip != encoder.clip_len:
        flag = "--clip-len" if plan.mode == "clips" else "--num-frames"
        lines.append(f"{encoder.identity.name} was trained on clips of {encoder.clip_len} frames; {flag} {per_clip} gives "
                     f"clips of {per_clip} (it runs, but its embeddings are not those of the model's own setting)")
    return lines


def takes_plan(frame_level: bool, plan: SamplingPlan) -> bool:
    """Whether a model that encodes frames (``frame_level``) or whole clips can encode ``plan``'s samples."""
    return frame_level or plan.mode not in ("fps", "all")


def decode_resize(encoder: VideoEncoder) -> Resize:
    """Frames leave the decoder at the model's input size, resized with the model's interpolation and resize
    mode (open_clip's: shortest side and crop, squash, or longest side and pad)."""
    return resize_to(encoder.preprocess.image_size, encoder.preprocess.interpolation, encoder.preprocess.resize_mode)


def resize_to(image_size: int, interpolation: str, mode: str = "shortest") -> Resize:
    if mode not in ("shortest", "squash", "longest"):
        raise ModelError(f"resize mode {mode!r} is not one vfeat knows (shortest, squash, longest)")
    return Resize(short_side=image_size, crop=image_size, interpolation=_swscale_name(interpolation), mode=mode)


def one_clip_per_video(encoder: VideoEncoder, plan: SamplingPlan) -> bool:
    """A clip model sampling N frames per video (not ``--clips``) encodes them as the video's one clip."""
    return one_clip_of(encoder.frame_level, plan)


def one_clip_of(frame_level: bool, plan: SamplingPlan) -> bool:
    """:func:`one_clip_per_video` for a model known only by whether it encodes frames (not loaded yet)."""
    return not frame_level and plan.mode != "clips"


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
    batch = Batcher(encoder, batch_size)
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

def _messages_inline(jobs: list[tuple[int, str]], plan: SamplingPlan, resize: Resize, one_clip: bool) -> Iterator[tuple]:
    for job, path in jobs:
        yield from decode_job(job, path, plan, resize, one_clip)


def start_decoding(sources: list[VideoSource], plan: SamplingPlan, resize: Resize, one_clip: bool, device: torch.device,
                   batch_size: int, workers: int | None = None, hwaccel: str | None = None,
                   hwaccel_workers: int | None = None) -> DecodeProcesses | None:
    """The decode processes :func:`run` starts for ``sources`` (``None``: decode in this process). Started
    by the caller, they decode while it does something else (loads the model), up to their frame budget;
    :func:`run` then takes them over (its ``processes``)."""
    workers = default_workers(device) if workers is None else workers
    hw = (HWACCEL_WORKERS if hwaccel_workers is None else hwaccel_workers) if hwaccel else 0
    if workers + hw == 0:
        return None
    jobs = [(i, s.path) for i, s in enumerate(sources)]
    return start_decode_processes(jobs, plan, resize, one_clip, workers, hwaccel, hw, frame_budget=2 * batch_size)


def run(sources: list[VideoSource], encoder: VideoEncoder, plan: SamplingPlan, commit: Callable[[VideoRecord], None],
        fail: Callable[[Failure], None], batch_size: int = 64, workers: int | None = None, storage_dtype: str = "float16",
        on_progress: Callable[[RunStats, int], None] | None = None, spool_dir: str | None = None,
        hwaccel: str | None = None, hwaccel_workers: int | None = None,
        processes: DecodeProcesses | None = None) -> RunStats:
    """Encode ``sources`` and hand each finished video to ``commit`` (failures to ``fail``); long videos'
    rows are spooled under ``spool_dir`` (see :func:`encode_videos`). With ``hwaccel``,
    ``hwaccel_workers`` decode processes (default :data:`HWACCEL_WORKERS`) decode on that device beside
    the ``workers`` CPU ones. ``processes``: decode processes already started for exactly ``sources``, this
    model's resize and sampling (:func:`start_decoding`); run stops them when it ends."""
    stats = RunStats()
    with contextlib.ExitStack() as running:
        if processes is not None:
            running.enter_context(processes)
        if not sources:
            return stats
        resize, one_clip = decode_resize(encoder), one_clip_per_video(encoder, plan)
        messages: Iterable[tuple]
        if processes is None:
            processes = start_decoding(sources, plan, resize, one_clip, encoder.device, batch_size, workers, hwaccel,
                                       hwaccel_workers)
            if processes is not None:
                running.enter_context(processes)
        if processes is None:
            messages = _messages_inline([(i, s.path) for i, s in enumerate(sources)], plan, resize, one_clip)
        else:
            messages = processes.messages(stats)
            if _warm_up_wanted(encoder):
                started = time.perf_counter()
                Batcher(encoder, batch_size).warm_up(plan.clip_len or plan.num_frames)
                stats.warm_up_s = time.perf_counter() - started
        for result in encode_videos(messages, sources, encoder, plan, batch_size=batch_size, storage_dtype=storage_dtype,
                                    stats=stats, spool_dir=spool_dir):
            try:
                if isinstance(result, Failure):
                    fail(result)
                else:
                    commit(result)
            finally:  # an interrupt while a commit writes its journal part: the video is kept, so it counts
                report(result, stats, on_progress)
    return stats
