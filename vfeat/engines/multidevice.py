"""Several model processes on one machine (one per GPU): the videos still to do are dealt round-robin,
and each process runs the single-device pipeline into its own shard ``shard-<rank>`` of the directory
store. Shards never share a video, so the directory is one dataset to every reader. Only the parent
writes ``manifest.json``: a device process that opens its shard waits until the parent has listed it."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import traceback
from typing import Any, Callable

from vfeat.errors import VfeatError
from vfeat.sources import VideoSource


def _device_main(results: Any, listed: Any, rank: int, sources: list[VideoSource], out: str, device: str,
                 workers: int | None, options: dict[str, Any], log_level: int) -> None:
    import logging

    from vfeat.extractor import extract_sources

    logging.getLogger().setLevel(log_level)  # spawned processes start with default logging

    def opened(shard: str) -> None:  # the parent lists the shard; nothing is committed in it before
        results.put(("opened", rank, shard))
        while not listed.wait(timeout=1.0):
            if not mp.parent_process().is_alive():  # type: ignore[union-attr]
                raise VfeatError(f"device {device}: the parent process is gone")

    try:
        summary = extract_sources(sources, out, device=device, workers=workers, rank=rank, on_open=opened, **options)
        results.put(("done", rank, summary, None))
    except VfeatError as exc:
        results.put(("done", rank, None, str(exc)))
    except Exception:  # report, do not hang the parent
        results.put(("done", rank, None, f"{device}: {traceback.format_exc(limit=3)}"))


def run_devices(sources: list[VideoSource], out: str, devices: list[str], workers: int | None, options: dict[str, Any],
                on_start: Callable[[int, int], None] | None = None,
                settings: Callable[[], dict[str, Any]] | None = None):
    """``settings()``: the store attributes this run writes (from a CPU copy of the model). A store that
    already holds videos is checked against them here, before anything is reported as done or a device
    process starts; each device process checks again against its own model."""
    from vfeat.extractor import ExtractSummary
    from vfeat.pipeline import default_workers
    from vfeat.shards import committed_elsewhere, list_shard

    done = committed_elsewhere(out, "")
    if done and settings is not None:  # stored videos are done only if they were stored alike
        committed_elsewhere(out, "", settings())
    todo = [s for s in sources if s.video_id not in done]
    if on_start:
        on_start(len(todo), len(sources) - len(todo))
    if not todo:
        return ExtractSummary(out=out, videos_total=len(sources), videos_skipped=len(sources), videos_ok=0,
                              videos_failed=0, frames=0, seconds=0.0)
    per_device = default_workers(devices[0], len(devices)) if workers is None else max(0, workers // len(devices))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    listed = [ctx.Event() for _ in devices]
    procs = []
    for rank, device in enumerate(devices):
        part = todo[rank:: len(devices)]
        proc = ctx.Process(target=_device_main, args=(results, listed[rank], rank, part, out, device, per_device, options,
                                                       logging.getLogger().level))
        proc.start()
        procs.append(proc)
    summaries, errors, pending = [], [], set(range(len(procs)))
    while pending:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            # a device process killed (kill -9, out of memory) sends nothing: notice it instead of waiting forever
            for rank in [r for r in pending if not procs[r].is_alive() and procs[r].exitcode not in (0, None)]:
                pending.discard(rank)
                errors.append(f"device {devices[rank]}: its process died (exit code {procs[rank].exitcode}); the videos it "
                              "committed are kept, run the same command again to finish the rest")
            continue
        if message[0] == "opened":
            _, rank, shard = message
            list_shard(out, shard)
            listed[rank].set()
            continue
        _, rank, summary, error = message
        pending.discard(rank)
        (errors.append(f"device {devices[rank]}: {error}") if error else summaries.append(summary))
    for proc in procs:
        proc.join()
    if errors:
        raise VfeatError("; ".join(errors))
    return ExtractSummary(
        out=out, videos_total=len(sources), videos_skipped=len(sources) - len(todo),
        videos_ok=sum(s.videos_ok for s in summaries), videos_failed=sum(s.videos_failed for s in summaries),
        frames=sum(s.frames for s in summaries), seconds=max((s.seconds for s in summaries), default=0.0),
        failures=[f for s in summaries for f in s.failures], video_seconds=sum(s.video_seconds for s in summaries),
    )
