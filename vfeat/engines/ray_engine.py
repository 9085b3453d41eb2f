"""``--engine ray``: the same extraction, scheduled by Ray Data on a cluster.

    video list (a dataset) -> decode: CPU tasks running vfeat.workers.decode_job, one row per video
      -> model: an actor pool, the model loaded once per actor, vfeat.pipeline.encode_videos
      -> driver: shards of ``shard_size`` videos, each committed into ``manifest.json`` once closed

What a video becomes is the pipeline's business (the same decoder, and the same encode_videos the local
engine runs); this module owns only scheduling and the commit. A shard's name is a hash of its video ids,
so a rerun after a crash plans the same names and replaces an uncommitted shard instead of adding a second
copy; a shard joins the manifest only when complete, so readers never see half of one. Errors are caught per video inside each stage and
travel as failure records (an exception in a Ray stage would fail the whole job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from typing import Any, Callable, Collection, Iterable, Iterator

import numpy as np

from vfeat.decode import Resize
from vfeat.errors import InputError, VfeatError
from vfeat.extractor import ExtractSummary, store_attrs
from vfeat.models.factory import load_model
from vfeat.pipeline import RunStats, advice, check_plan, decode_resize, encode_videos, one_clip_per_video, report
from vfeat.sampling import SamplingPlan
from vfeat.shards import RAY_SHARD_PREFIX, committed_elsewhere
from vfeat.sources import VideoSource
from vfeat.store import fs
from vfeat.store.format import Failure, VideoRecord, shard_kind
from vfeat.store.reader import MANIFEST
from vfeat.store.writer import ShardWriter, commit_shards, journal_dir
from vfeat.workers import CHUNK_FRAMES, decode_job

log = logging.getLogger(__name__)

#: Videos handed to a model actor per call; encode_videos mixes their frames into model batches.
VIDEOS_PER_CALL = 4
#: CPUs a model actor reserves. On a GPU it mostly waits for the device; on CPU-only clusters (tests, small
#: jobs) half a core per actor leaves cores for the decode tasks, which each reserve one.
ACTOR_CPUS = 0.5


# -- the plan: which video goes into which shard ------------------------------------------------------

def shard_name(video_ids: Iterable[str], store_format: str, taken: Collection[str] = ()) -> str:
    """``shard-ray-<hash of the sorted ids>.<zarr|h5>``: the same videos always give the same name. A name
    already committed (its videos all failed, and are being retried) gets the next salted hash instead."""
    key, salt = "\n".join(sorted(video_ids)), 0
    while True:
        digest = hashlib.sha256((key + (f"\n#{salt}" if salt else "")).encode("utf-8")).hexdigest()[:20]
        name = f"{RAY_SHARD_PREFIX}{digest}.{store_format}"
        if name not in taken:
            return name
        salt += 1


def plan_shards(video_ids: Iterable[str], shard_size: int, store_format: str, committed: Collection[str] = ()) -> dict[str, list[str]]:
    """Sorted ids cut into runs of ``shard_size``. Committed shards are whole runs, so after a crash the
    videos left over are cut into the same runs again, under the same names."""
    ordered = sorted(video_ids)
    runs = [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]
    return {shard_name(run, store_format, committed): run for run in runs}


# -- stage 1: decode (CPU tasks) ------------------------------------------------------------------------

def decode_video(row: dict[str, Any], plan: SamplingPlan, resize: Resize, one_clip: bool) -> dict[str, Any]:
    """One video -> one row: its sampled frames (uint8 [k, S, S, 3]), the store rows each frame fills, the
    rows' timestamps; or ``error``. Never raises. :func:`decode_messages` turns the row back into messages."""
    size = resize.crop
    out = {"video_id": row["video_id"], "path": row["path"], "error": "", "info": "{}", "clip_rows": "[]",
           "frame_rows": "[]", "timestamps_ms": np.zeros(0, np.float64), "pixels": np.zeros((0, size, size, 3), np.uint8)}
    frame_rows: list[list[int]] = []
    pixels: list[np.ndarray] = []
    try:
        for message in decode_job(0, row["open_path"], plan, resize, one_clip):
            if message[0] == "video":
                _, _, info, timestamps_ms, clip_rows = message
                out.update(info=json.dumps(info), timestamps_ms=np.asarray(timestamps_ms, np.float64),
                           clip_rows=json.dumps([list(map(int, rows)) for rows in clip_rows]))
            elif message[0] == "frames":
                frame_rows.extend([list(map(int, rows)) for rows in message[2]])
                pixels.append(message[3])
            elif message[0] == "error":
                return {**out, "error": message[2]}
        if pixels:
            out.update(frame_rows=json.dumps(frame_rows), pixels=np.concatenate(pixels))
    except Exception as exc:  # decode_job records its own errors; this guards the packing above
        return {**out, "error": f"{row['path']}: {type(exc).__name__}: {exc}"}
    return out


def decode_messages(batch: dict[str, np.ndarray], job: int) -> Iterator[tuple]:
    """Row ``job`` of a batch of :func:`decode_video` rows, as the decode messages of :mod:`vfeat.workers`
    again (frames in chunks of ``CHUNK_FRAMES``, the units the local pipeline batches)."""
    if batch["error"][job]:
        yield ("error", job, str(batch["error"][job]))
        return
    yield ("video", job, json.loads(batch["info"][job]), np.asarray(batch["timestamps_ms"][job]), json.loads(batch["clip_rows"][job]))
    frame_rows, pixels = json.loads(batch["frame_rows"][job]), np.asarray(batch["pixels"][job])
    for start in range(0, len(pixels), CHUNK_FRAMES):
        yield ("frames", job, frame_rows[start:start + CHUNK_FRAMES], pixels[start:start + CHUNK_FRAMES])
    yield ("done", job)


# -- stage 2: model (actor pool) ------------------------------------------------------------------------

class EncodeVideos:
    """A model actor: loads the model once, then turns batches of decoded videos into store records
    (pickled :class:`VideoRecord` or :class:`Failure`) with the local pipeline's :func:`encode_videos`."""

    def __init__(self, model_args: dict[str, Any], plan: SamplingPlan, storage_dtype: str, batch_size: int) -> None:
        self.encoder = load_model(**model_args, towers="image")
        self.plan, self.storage_dtype, self.batch_size = plan, storage_dtype, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        sources = [VideoSource(str(video_id), str(path)) for video_id, path in zip(batch["video_id"], batch["path"])]
        messages = (message for job in range(len(sources)) for message in decode_messages(batch, job))
        try:
            records = list(encode_videos(messages, sources, self.encoder, self.plan, batch_size=self.batch_size,
                                         storage_dtype=self.storage_dtype))
        except Exception as exc:  # e.g. out of memory: every video of this batch fails, the job goes on
            records = [Failure(str(video_id), str(path), str(error) or f"{path}: model: {type(exc).__name__}: {exc}")
                       for video_id, path, error in zip(batch["video_id"], batch["path"], batch["error"])]
        return {"video_id": [r.video_id for r in records], "record": [pickle.dumps(r, protocol=5) for r in records]}


# -- stage 3: the driver writes and commits shards --------------------------------------------------------

class ShardCommitter:
    """Puts each finished video into its planned shard; a shard whose videos have all arrived is closed,
    then listed in the manifest (the commit). Only the driver runs this."""

    def __init__(self, out: str, shards: dict[str, list[str]], attrs: dict[str, Any]) -> None:
        self.out, self.attrs = out, attrs
        self.shard_of = {video_id: name for name, ids in shards.items() for video_id in ids}
        self.waiting = {name: set(ids) for name, ids in shards.items()}
        self.writers: dict[str, ShardWriter] = {}
        commit_shards(out, [])  # the manifest exists before any shard does: a half-written shard is never visible

    def take(self, record: VideoRecord | Failure) -> bool:
        """Store one result; False for a video already stored this run (a retried task's duplicate)."""
        name = self.shard_of.get(record.video_id)
        if name is None or record.video_id not in self.waiting[name]:
            return False
        writer = self.writers.get(name) or self._open(name)
        if isinstance(record, Failure):
            writer.fail(record)
        else:
            writer.add(record)
        self.waiting[name].discard(record.video_id)
        if not self.waiting[name]:
            self.writers.pop(name).close()
            commit_shards(self.out, [name])
        return True

    def _open(self, name: str) -> ShardWriter:
        path = fs.join(self.out, name)
        for leftover in (path, journal_dir(path)):  # an uncommitted shard of a killed run: start it afresh
            fs.remove(leftover)
        self.writers[name] = ShardWriter(path, self.attrs)
        return self.writers[name]

    def missing(self) -> list[str]:
        """Videos still without a result (only a failed job leaves any)."""
        return sorted(v for ids in self.waiting.values() for v in ids)


# -- the engine -------------------------------------------------------------------------------------------

def run_ray(sources: list[VideoSource], out: str, *, model: str, pretrained: str | None, plan: SamplingPlan,
            model_config: str | None, device: str, precision: str, dtype: str, batch_size: int, store_format: str | None,
            address: str | None = None, gpus_per_worker: float = 0.0, shard_size: int = 1000, num_workers: int | None = None,
            on_start: Callable[[int, int], None] | None = None, on_progress: Callable[[RunStats, int], None] | None = None,
            **model_options: Any) -> ExtractSummary:
    """Extract ``sources`` into the directory store ``out`` on a Ray cluster; committed videos are skipped.

    Only the driver writes to the store; each model actor loads its own model on ``device`` (the driver's
    copy, on the CPU, only describes the store).
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'vfeat[ray]'") from None
    if shard_kind(out) is not None:
        raise InputError(f"--engine ray writes a directory of shards; --out {out} names a single shard.")
    if shard_size < 1:
        raise InputError(f"Invalid --shard-size ({shard_size}). It must be >= 1.")
    if gpus_per_worker < 0:
        raise InputError(f"Invalid --gpus-per-worker ({gpus_per_worker}). It must be >= 0.")
    if num_workers is not None and num_workers < 1:
        raise InputError(f"Invalid --ray-workers ({num_workers}). It must be >= 1.")
    started = time.perf_counter()
    model_args = dict(name=model, pretrained=pretrained, config=model_config, device=device, precision=precision, **model_options)
    attrs, resize, one_clip = _from_driver_copy(model_args, plan, dtype)
    committed = _remove_uncommitted(out)
    done = committed_elsewhere(out, own_shard="", attrs=attrs)
    todo = [s for s in sources if s.video_id not in done]
    if on_start:
        on_start(len(todo), len(sources) - len(todo))
    stats, failures = RunStats(), []
    summary = ExtractSummary(out=out, videos_total=len(sources), videos_skipped=len(sources) - len(todo), videos_ok=0,
                             videos_failed=0, frames=0, seconds=0.0, failures=failures)
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, **({} if address else {"include_dashboard": False}), log_to_driver=False)
    try:
        workers = num_workers or _default_workers(gpus_per_worker)
        attrs["hardware"] = {"engine": "ray", "model_workers": workers, "gpus_per_worker": gpus_per_worker,
                             "device": "cuda" if gpus_per_worker > 0 else "cpu"}
        committer = ShardCommitter(out, plan_shards([s.video_id for s in todo], shard_size, store_format or "zarr", committed), attrs)
        dataset = _dataset(todo, plan, resize, one_clip, model_args, dtype, batch_size, workers, gpus_per_worker)
        given = {s.video_id: s.path for s in todo}
        for row in dataset.iter_rows():
            record = _as_given(pickle.loads(row["record"]), given)
            if committer.take(record):
                if isinstance(record, Failure):
                    failures.append(record)
                report(record, stats, on_progress)
        if committer.missing():  # never seen; would mean Ray dropped rows. Their shards stay uncommitted.
            raise VfeatError(f"the Ray job returned no result for {len(committer.missing())} video(s), e.g. "
                             f"{committer.missing()[0]}; rerun the command to retry them.")
    finally:
        if owns_ray:
            ray.shutdown()
    summary.videos_ok, summary.videos_failed, summary.frames = stats.videos_ok, stats.videos_failed, stats.frames
    summary.video_seconds = stats.video_seconds
    summary.seconds = time.perf_counter() - started
    return summary


def _from_driver_copy(model_args: dict[str, Any], plan: SamplingPlan, dtype: str) -> tuple[dict[str, Any], Resize, bool]:
    """Store attributes, decode size and clip mode from a CPU copy of the model (a bad model name or flag is
    reported here, not in a remote traceback)."""
    encoder = load_model(**{**model_args, "device": "cpu"}, towers="image")
    check_plan(encoder, plan)
    for line in advice(encoder, plan):
        log.warning("%s", line)
    return store_attrs(encoder, plan, dtype), decode_resize(encoder), one_clip_per_video(encoder, plan)


def _dataset(todo: list[VideoSource], plan: SamplingPlan, resize: Resize, one_clip: bool, model_args: dict[str, Any],
             storage_dtype: str, batch_size: int, workers: int, gpus_per_worker: float) -> Any:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own
    items = [{"video_id": s.video_id, "path": s.path, "open_path": fs.absolute(s.path)} for s in sorted(todo, key=lambda s: s.video_id)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map(decode_video, fn_kwargs={"plan": plan, "resize": resize, "one_clip": one_clip}, num_cpus=1)
    return dataset.map_batches(
        EncodeVideos, fn_constructor_kwargs={"model_args": _absolute_files(model_args), "plan": plan,
                                             "storage_dtype": storage_dtype, "batch_size": batch_size},
        batch_size=VIDEOS_PER_CALL, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=ACTOR_CPUS,
        **({"num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {}),
    )


def _default_workers(gpus_per_worker: float) -> int:
    """One actor per ``gpus_per_worker`` GPUs of the cluster; one actor on CPU-only clusters."""
    import ray

    if gpus_per_worker <= 0:
        return 1
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < gpus_per_worker:
        raise InputError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s). On an autoscaling "
                         "cluster, say how many model actors to start with --ray-workers.")
    return int(gpus // gpus_per_worker)


def _remove_uncommitted(out: str) -> set[str]:
    """Remove the shards of killed runs that never reached the manifest (never visible; this run redoes
    their videos). Returns the committed shard names."""
    names = fs.listdir(out)
    listed = set(json.loads(fs.read_text(fs.join(out, MANIFEST))).get("shards", [])) if MANIFEST in names else set()
    for name in names:
        if name.startswith(RAY_SHARD_PREFIX) and name not in listed:
            fs.remove(fs.join(out, name))
    return listed


def _as_given(record: VideoRecord | Failure, given: dict[str, str]) -> VideoRecord | Failure:
    """A failure names the file as the user gave it, as the local engine's do: the tasks opened it by its
    absolute path (:func:`vfeat.store.fs.absolute`: actors and tasks do not share the driver's working
    directory), which their messages carry."""
    path = given.get(record.video_id)
    if not isinstance(record, Failure) or path is None or fs.absolute(path) == path:
        return record
    return Failure(record.video_id, record.path, record.error.replace(fs.absolute(path), path))


def _absolute_files(model_args: dict[str, Any]) -> dict[str, Any]:
    return {k: fs.absolute(v) if isinstance(v, str) and k != "name" and os.path.exists(v) else v for k, v in model_args.items()}
