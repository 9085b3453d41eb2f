"""``vfeat.extract``: the front door of extraction. Resolves inputs, model and store, skips what is
already committed, runs the pipeline, and returns a summary (failures included)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vfeat import __version__
from vfeat.decode import Resize, check_hwaccel
from vfeat.decode_processes import DecodeProcesses
from vfeat.errors import InputError
from vfeat.models.base import VideoEncoder
from vfeat.models.factory import input_guess, load_model, resolve_device
from vfeat.pipeline import (RunStats, advice, check_plan, decode_resize, one_clip_of, one_clip_per_video, resize_to, run, start_decoding,
                            takes_plan)
from vfeat.sampling import SamplingPlan
from vfeat.request import REQUEST_ATTR, run_request
from vfeat.shards import committed_elsewhere, list_shard, recover, shard_for, stored_ids, stored_with
from vfeat.sources import VideoSource, expand_inputs, unique_sources
from vfeat.store import fs
from vfeat.store.fingerprint import changed_on_disk
from vfeat.store.lock import writer_lock
from vfeat.store.format import FORMAT_NAME, FORMAT_VERSION, Failure, shard_kind
from vfeat.store.writer import ShardWriter, journal_dir

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float16", "float32")
ENGINES = ("local", "ray")


@dataclass
class ExtractSummary:
    out: str
    videos_total: int
    videos_skipped: int
    videos_ok: int
    videos_failed: int
    frames: int
    #: Wall time of the run once its model was loaded (decoding starts during the load: see
    #: :class:`_EarlyDecoding`); all of it when the caller passed a loaded model.
    seconds: float
    failures: list[Failure] = field(default_factory=list)
    #: Total duration of the videos stored by this run: ``video_seconds / seconds`` is the speed against real time.
    video_seconds: float = 0.0
    #: Where the time went (seconds): loading the model, the model waiting for decoded frames, a decode process
    #: waiting for the model to take its frames (mean; only when decode processes ran), the model, and the
    #: last merge into the store after the last video (with ``devices``: in the slowest device process).
    #: The two waits tell a decode-bound run from a model-bound one.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.videos_failed == 0


def store_attrs(encoder: VideoEncoder, plan: SamplingPlan, storage_dtype: str) -> dict[str, Any]:
    """Root attributes: everything needed to interpret (and reproduce) the stored numbers."""
    import av
    import torch

    has_clips = plan.mode == "clips" or not encoder.frame_level
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "vfeat_version": __version__,
        "model": encoder.identity.as_dict(),
        "random_weights": encoder.identity.pretrained == "none",
        "embed_dim": int(encoder.embed_dim),
        "sampling": plan.as_dict(),
        "preprocess": encoder.preprocess.as_dict(),
        "dtype": storage_dtype,
        "normalized": False,
        "has_frames": bool(encoder.frame_outputs),
        "has_clips": bool(has_clips),
        "logit_scale": float(encoder.logit_scale),
        "precision": precision_name(encoder),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"vfeat": __version__, "torch": torch.__version__, "pyav": av.__version__, "python": platform.python_version()},
        "hardware": {"device": str(encoder.device), "cpu": platform.processor() or platform.machine(),
                     "gpu": torch.cuda.get_device_name(encoder.device) if encoder.device.type == "cuda" else None},
    }


def precision_name(encoder: VideoEncoder) -> str:
    """The precision the model computes in (``load_model`` sets it; a caller's own model: its weights')."""
    import torch

    dtype = getattr(encoder, "compute_dtype", None) or next(encoder.parameters()).dtype
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def _say_other_precision(out: str, shard: str, precision: str) -> None:
    """A store's rows computed at another precision than this run's (fp16 on a GPU, fp32 on a CPU) differ
    by more than their storage rounds away: allowed, as resuming elsewhere must be, but said once."""
    stored = stored_with(out, shard, "precision")
    others = sorted({p for p in (stored[1] if stored else []) if p and p != precision})
    if others:
        log.warning("%s: the stored videos were computed at %s precision, this run's at %s: their features differ "
                    "slightly (use --precision %s to match)", out, " and ".join(others), precision, others[0])


#: --out names ending so are files of another kind, not a directory store vfeat would create under that name
NOT_STORES = frozenset(".npy .npz .pkl .pickle .pt .pth .parquet .csv .json .jsonl .txt .mp4".split())


def _refuse_a_file_name_for_a_directory(out: str) -> None:
    suffix = os.path.splitext(out.rstrip("/"))[1].lower()
    if suffix in NOT_STORES and not out.endswith("/"):
        raise InputError(f"--out {out}: a store is a shard (.zarr, .h5) or a directory of shards, not a {suffix} file; "
                         f"write to a .zarr or .h5 store (then `vfeat export --to npy` for per-video .npy files).")


#: what ``extract(**model_options)`` passes to the model families (WiSE-FT; Open-VCLIP patching; open_clip's cache)
MODEL_OPTIONS = frozenset({"wise_with", "alpha", "clip_weights", "patching_ratio", "cache_dir", "weights_tag"})


def _refuse_unused_flags(engine: str, address: str | None, gpus_per_worker: float, shard_size: int,
                         ray_workers: int | None, hwaccel: str | None, hwaccel_workers: int | None,
                         model_options: dict[str, Any]) -> None:
    """A flag that only another flag gives a meaning is an error without it, not silently nothing."""
    ray_only = {"--address": address is not None, "--gpus-per-worker": gpus_per_worker != 0.0,
                "--shard-size": shard_size != 1000, "--ray-workers": ray_workers is not None}
    given = [flag for flag, set_ in ray_only.items() if set_]
    if engine != "ray" and given:
        raise InputError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --engine ray.")
    if hwaccel_workers is not None and hwaccel is None:
        raise InputError("--hwaccel-workers only applies with --hwaccel cuda.")
    unknown = sorted(set(model_options) - MODEL_OPTIONS)
    if unknown:
        raise InputError(f"extract() got unknown option(s) {', '.join(unknown)}; model options are "
                         f"{', '.join(sorted(MODEL_OPTIONS))}.")
    if model_options.get("alpha") is not None and model_options.get("wise_with") is None:
        raise InputError("--alpha only applies with --wise-with (the checkpoint to interpolate with).")
    if model_options.get("clip_weights") is not None and not model_options.get("patching_ratio"):
        raise InputError("--clip-weights only applies with --patching-ratio above 0 (Open-VCLIP weight patching).")


def extract(inputs: list[str], out: str, model: str = "ViT-B/32", pretrained: str | None = None, *,
            fps: float | None = None, num_frames: int | None = None, clips: int | None = None,
            clip_len: int | None = None, stride: int | None = None, file_list: str | None = None,
            model_config: str | None = None, device: str = "auto", precision: str = "auto",
            dtype: str = "float16", batch_size: int = 64, workers: int | None = None,
            store_format: str | None = None, encoder: VideoEncoder | None = None, devices: str | None = None,
            on_start: Callable[[int, int], None] | None = None,
            on_progress: Callable[[RunStats, int], None] | None = None, engine: str = "local",
            address: str | None = None, gpus_per_worker: float = 0.0, shard_size: int = 1000,
            ray_workers: int | None = None, hwaccel: str | None = None, hwaccel_workers: int | None = None,
            **model_options: Any) -> ExtractSummary:
    """Extract features of ``inputs`` into the store ``out``; committed videos are skipped.

    ``devices`` ("cuda:0,cuda:1", "all", or several CPU devices "cpu,cpu"): one model process per device,
    each writing its own shard of the directory store ``out``.
    ``engine="ray"``: Ray Data on the cluster at ``address`` (or a new local Ray instance); ``gpus_per_worker``,
    ``shard_size`` and ``ray_workers`` apply to it only (see docs/scale.md).
    ``hwaccel="cuda"``: ``hwaccel_workers`` more decode processes (default 4) decode on the GPU's video
    decoder (NVDEC) beside the ``workers`` CPU ones; the frames are the same (docs/performance.md).
    ``on_start(todo, already_stored)`` runs once the work is known; ``on_progress(stats, frames)`` after each
    finished video, with the run's totals so far (over all device processes or Ray actors) and its frames.
    Returns an :class:`ExtractSummary`; per-video failures are recorded in the store, not raised.
    """
    if engine not in ENGINES:
        raise InputError(f"Invalid --engine ({engine}). Choose from: {', '.join(ENGINES)}.")
    if dtype not in STORAGE_DTYPES:
        raise InputError(f"Invalid --dtype ({dtype}). Choose from: {', '.join(STORAGE_DTYPES)}.")
    if batch_size < 1:
        raise InputError(f"Invalid --batch-size ({batch_size}). It must be >= 1.")
    if workers is not None and workers < 0:
        raise InputError(f"Invalid --workers ({workers}). It must be >= 0 (0 decodes in the main process).")
    if hwaccel_workers is not None and hwaccel_workers < 0:
        raise InputError(f"Invalid --hwaccel-workers ({hwaccel_workers}). It must be >= 0.")
    hwaccel = None if hwaccel in (None, "", "none") else hwaccel
    _refuse_unused_flags(engine, address, gpus_per_worker, shard_size, ray_workers, hwaccel, hwaccel_workers, model_options)
    if hwaccel is not None:
        if engine == "ray":
            raise InputError("--hwaccel is not supported with --engine ray: decode on the CPU there.")
        check_hwaccel(hwaccel)
    plan = SamplingPlan(fps=fps, num_frames=num_frames, clips=clips, clip_len=clip_len, stride=stride)
    sources = unique_sources(expand_inputs(inputs, file_list))
    if not sources:
        raise InputError("No input videos: pass files, directories, globs or --file-list.")
    device_list = parse_devices(devices) if devices else [device]
    options = dict(model=model, pretrained=pretrained, plan=plan, model_config=model_config, precision=precision,
                   dtype=dtype, batch_size=batch_size, store_format=store_format, **model_options)
    if hwaccel is not None:
        options.update(hwaccel=hwaccel, hwaccel_workers=hwaccel_workers)
    if engine == "ray" and (encoder is not None or devices):
        raise InputError("--engine ray loads the model in each Ray actor: pass the model by name, and no --devices.")
    _refuse_a_file_name_for_a_directory(out)
    if not fs.is_url(out) and os.path.islink(out.rstrip("/")):
        out = os.path.realpath(out)  # the store it names: an HDF5 file is replaced whole, the link would be instead
    if len(device_list) > 1 and shard_kind(out) is not None:
        raise InputError(f"--devices writes one shard per device: --out must be a directory, not {out}.")
    with writer_lock(out):  # one writing command per store: a second one is refused at once
        recover(out)  # what killed runs committed is merged and listed before any engine decides what is done
        _say_what_changed(out, sources)
        if engine == "local" and encoder is None:
            request = run_request(model, pretrained, model_config, plan, dtype, model_options)
            finished = _finished_without_a_model(sources, out, store_format, request, on_start)
            if finished is not None:
                return finished
        if engine == "ray":
            from vfeat.engines.ray_engine import run_ray

            return run_ray(sources, out, device=device, address=address, gpus_per_worker=gpus_per_worker, shard_size=shard_size,
                           num_workers=ray_workers, on_start=on_start, on_progress=on_progress, **options)
        if len(device_list) > 1:
            from vfeat.engines.multidevice import run_devices

            def settings() -> dict[str, Any]:  # from a CPU copy of the model: the device processes load their own
                return store_attrs(load_model(model, pretrained, config=model_config, device="cpu", precision=precision,
                                              towers="image", **model_options), plan, dtype)

            return run_devices(sources, out, device_list, workers, options, on_start, settings, on_progress)
        return extract_sources(sources, out, device=device_list[0], workers=workers, encoder=encoder, on_start=on_start,
                               on_progress=on_progress, **options)


def _finished_without_a_model(sources: list[VideoSource], out: str, store_format: str | None, request: dict[str, Any],
                              on_start: Callable[[int, int], None] | None) -> ExtractSummary | None:
    """The summary of a run with nothing to do, where every video is stored by runs asked for exactly this
    one's settings (:mod:`vfeat.request`): no model is loaded to find that out. ``None`` otherwise."""
    started = time.perf_counter()
    shard = shard_for(out, store_format)
    stored = stored_with(out, shard, REQUEST_ATTR)
    if stored is None or fs.exists(journal_dir(shard)):  # a journal: videos not in the shard yet
        return None
    done, requests = stored
    if not requests or any(r != request for r in requests) or any(s.video_id not in done for s in sources):
        return None
    if on_start:
        on_start(0, len(sources))
    return ExtractSummary(out=out, videos_total=len(sources), videos_skipped=len(sources), videos_ok=0, videos_failed=0,
                          frames=0, seconds=time.perf_counter() - started, failures=[], video_seconds=0.0)


def _say_what_changed(out: str, sources: list[VideoSource]) -> None:
    """One warning for stored videos whose file changed since (they are skipped, as stored: a store only
    appends), so that old features are never kept without a word."""
    changed = changed_on_disk(out, sources)
    if changed:
        log.warning("%s: %d stored video(s) changed on disk since they were stored (size or modification time): %s%s; "
                    "the store keeps the features of the file as it was: extract changed videos into a new store",
                    out, len(changed), ", ".join(changed[:3]), ", ..." if len(changed) > 3 else "")


def parse_devices(devices: str) -> list[str]:
    """``cuda:0,cuda:1`` / ``all`` (every visible GPU) -> device names, each one checked to exist."""
    import torch

    if devices.strip() == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError("--devices all: no CUDA GPU is visible on this machine.")
        return [f"cuda:{i}" for i in range(count)]
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise InputError(f"Invalid --devices ({devices!r}). Use e.g. cuda:0,cuda:1 or all.")
    for name in names:  # here, once, rather than in every device process after it started
        resolve_device(name, flag="--devices")
    return names


def extract_sources(sources: list[VideoSource], out: str, *, model: str, pretrained: str | None, plan: SamplingPlan,
                    model_config: str | None, device: str, precision: str, dtype: str, batch_size: int,
                    workers: int | None, store_format: str | None, encoder: VideoEncoder | None = None, rank: int = 0,
                    on_start: Callable[[int, int], None] | None = None,
                    on_progress: Callable[[RunStats, int], None] | None = None,
                    on_open: Callable[[str], None] | None = None, hwaccel: str | None = None,
                    hwaccel_workers: int | None = None, **model_options: Any) -> ExtractSummary:
    """One model process: encode ``sources`` into this process's shard of ``out``. ``on_open(shard)`` runs
    once the shard exists, before any video is committed in it (default: :func:`vfeat.shards.list_shard`).

    Loading the model takes seconds (imports, weights, a GPU's start); the decode processes start first and
    decode meanwhile, and while the store is opened (:class:`_EarlyDecoding`). Settings are still checked,
    and the store opened, only once the model is loaded, as before."""
    load_started = time.perf_counter()
    shard = shard_for(out, store_format, rank)
    loaded = encoder is not None
    if loaded:
        check_plan(encoder, plan)  # before any decode process starts
    with contextlib.ExitStack() as decoding:
        early = _EarlyDecoding.start(sources, out, shard, encoder, model, model_config, plan, device, batch_size, workers,
                                     hwaccel, hwaccel_workers)
        if early is not None:
            decoding.enter_context(early.processes)  # stopped if anything below fails before run takes them
        if encoder is None:
            encoder = load_model(model, pretrained, config=model_config, device=device, precision=precision, towers="image",
                                 **model_options)
            check_plan(encoder, plan)
        model_load_s = time.perf_counter() - load_started
        if rank == 0:  # once per run, not once per device process
            for line in advice(encoder, plan):
                log.warning("%s", line)
        # the run's seconds: after the model load, which decoding may have overlapped; from the start when the
        # caller loaded the model, so that they hold all of the decoding
        started = load_started if loaded else time.perf_counter()
        attrs = store_attrs(encoder, plan, dtype)
        if not loaded:  # a caller's own model may be another than its name says: no request to match later
            attrs[REQUEST_ATTR] = run_request(model, pretrained, model_config, plan, dtype, model_options)
        elsewhere = committed_elsewhere(out, shard, attrs)  # refuses other settings before this shard exists
        with ShardWriter(shard, attrs) as writer:
            if on_open is None:
                list_shard(out, shard)  # before any commit: a manifest hides the shards it does not list
            else:
                on_open(shard)
            done = writer.committed | elsewhere
            todo = [s for s in sources if s.video_id not in done]
            if todo and rank == 0:
                _say_other_precision(out, shard, attrs["precision"])
            failures: list[Failure] = []

            def fail(failure: Failure) -> None:
                failures.append(failure)
                writer.fail(failure)

            if on_start:
                on_start(len(todo), len(sources) - len(todo))
            processes = early.processes if early is not None and early.fits(encoder, plan, todo) else None
            if early is not None and processes is None:
                early.processes.stop()  # decoding the wrong videos or at the wrong size: run starts it again
            stats = run(todo, encoder, plan, writer.add, fail, batch_size=batch_size, workers=workers,
                        storage_dtype=dtype, on_progress=on_progress, spool_dir=writer.spool_dir, hwaccel=hwaccel,
                        hwaccel_workers=hwaccel_workers, processes=processes)
            closing = time.perf_counter()  # the last merge into the shard, after the last video is encoded
    close_s = time.perf_counter() - closing
    timings = {"model_load_s": model_load_s, "warm_up_s": stats.warm_up_s, "decode_wait_s": stats.decode_wait_s,
               "decoders_held_s": stats.decoders_held_s, "model_s": stats.model_s, "store_close_s": close_s}
    return ExtractSummary(
        out=shard, videos_total=len(sources), videos_skipped=len(sources) - len(todo), videos_ok=stats.videos_ok,
        videos_failed=stats.videos_failed, frames=stats.frames, seconds=time.perf_counter() - started, failures=failures,
        video_seconds=stats.video_seconds,
        timings={k: v for k, v in timings.items() if v is not None},  # decoders_held_s: only with decode processes
    )


@dataclass
class _EarlyDecoding:
    """Decode processes started before the model is loaded and the store opened, on guesses made without
    them: the videos the store does not hold yet (:func:`~vfeat.shards.stored_ids`) and, for a model not
    loaded yet, its input size read from its configuration (:func:`~vfeat.models.factory.input_guess`).
    They decode up to their frame budget meanwhile; once the model is loaded and the store opened,
    :meth:`fits` checks the guesses, and a run whose guess was wrong (rare) starts its decoding again.
    ``VFEAT_EARLY_DECODE=0`` turns this off (to measure what it buys)."""

    processes: DecodeProcesses
    video_ids: list[str]
    resize: Resize
    one_clip: bool

    @classmethod
    def start(cls, sources: list[VideoSource], out: str, shard: str, encoder: VideoEncoder | None, model: str,
              model_config: str | None, plan: SamplingPlan, device: str, batch_size: int, workers: int | None,
              hwaccel: str | None, hwaccel_workers: int | None) -> _EarlyDecoding | None:
        if os.environ.get("VFEAT_EARLY_DECODE", "1") == "0" or workers == 0:
            return None
        if encoder is not None:
            resize, one_clip = decode_resize(encoder), one_clip_per_video(encoder, plan)
        else:
            guess = input_guess(model, model_config)
            if guess is None or not takes_plan(guess.frame_level, plan):
                return None  # not guessed, or a plan the model will refuse once loaded (check_plan)
            resize, one_clip = resize_to(guess.image_size, guess.interpolation), one_clip_of(guess.frame_level, plan)
        done = stored_ids(out, shard)
        if done is None:
            return None
        todo = [s for s in sources if s.video_id not in done]
        if not todo:
            return None
        where = encoder.device if encoder is not None else resolve_device(device)
        processes = start_decoding(todo, plan, resize, one_clip, where, batch_size, workers, hwaccel, hwaccel_workers)
        return None if processes is None else cls(processes, [s.video_id for s in todo], resize, one_clip)

    def fits(self, encoder: VideoEncoder, plan: SamplingPlan, todo: list[VideoSource]) -> bool:
        """Whether these processes decode what the run needs: its videos in its order, at its model's size,
        sampled as its model takes them."""
        return (decode_resize(encoder) == self.resize and one_clip_per_video(encoder, plan) == self.one_clip
                and [s.video_id for s in todo] == self.video_ids)
