"""Several model processes on one machine (one per GPU): the videos still to do are dealt round-robin,
and each process runs the single-device pipeline into its own shard ``shard-<rank>`` of the directory
store. Shards never share a video, so the directory is one dataset to every reader. Only the parent
writes ``manifest.json``: a device process that opens its shard waits until the parent has listed it.
Each device process reports every finished video, and sends what it would print on stderr, to the parent,
which shows the progress of all of them with those lines above its progress bar.

Each device process has a connection of its own to the parent (as the decode processes have to theirs,
:mod:`vfeat.decode_processes`): the end of it, without a ``done``, is a device process that died, and no
lock is shared that a process killed mid-message (the out-of-memory killer's likeliest target is a model
process) could hold for ever."""

from __future__ import annotations

import io
import logging
import sys
import traceback
from multiprocessing import connection
from typing import Any, Callable

from vfeat._spawn import spawn_context
from vfeat.errors import VfeatError
from vfeat.sources import VideoSource
from vfeat.workers import Outbox


class _LinesToParent(io.TextIOBase):
    """A device process's stderr: whole lines go to the parent ("say" messages), which prints them on its
    own stderr. Written straight to the terminal, they would land in the middle of the parent's progress bar
    (and a test runner capturing the parent's stderr would miss them)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.pending = outbox, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.outbox.put(("say", line))
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.outbox.put(("say", self.pending))
            self.pending = ""


def _device_main(conn: Any, rank: int, out: str, device: str, workers: int | None, options: dict[str, Any],
                 log_level: int) -> None:
    from vfeat._log import show_warnings
    from vfeat.extractor import extract_sources

    try:
        sources: list[VideoSource] = conn.recv()  # sent once this process runs (see run_devices)
    except EOFError:
        return  # the parent is gone
    logging.getLogger().setLevel(log_level)  # spawned processes start with default logging
    outbox = Outbox(conn)
    sys.stderr = _LinesToParent(outbox)
    show_warnings()

    def opened(shard: str) -> None:  # the parent lists the shard; nothing is committed in it before
        outbox.put(("opened", shard))
        try:
            conn.recv()  # "listed"
        except EOFError:
            raise VfeatError(f"device {device}: the parent process is gone") from None

    def progress(stats: Any, frames: int) -> None:  # this process's running totals, after each video, as a
        # snapshot: the outbox pickles what it is given later, in its thread, and ``stats`` keeps changing
        outbox.put(("progress", (stats.videos_ok, stats.videos_failed, stats.frames, stats.video_seconds), frames))

    try:
        summary = extract_sources(sources, out, device=device, workers=workers, rank=rank, on_open=opened,
                                  on_progress=progress, **options)
        outcome = ("done", summary, None)
    except VfeatError as exc:
        outcome = ("done", None, str(exc))
    except Exception:  # report, do not hang the parent
        outcome = ("done", None, f"{device}: {traceback.format_exc(limit=3)}")
    sys.stderr.flush()  # the last line before "done": the parent stops reading this process after it
    outbox.put(outcome)
    outbox.close()


def run_devices(sources: list[VideoSource], out: str, devices: list[str], workers: int | None, options: dict[str, Any],
                on_start: Callable[[int, int], None] | None = None,
                settings: Callable[[], dict[str, Any]] | None = None,
                on_progress: Callable[[Any, int], None] | None = None):
    """``settings()``: the store attributes this run writes (from a CPU copy of the model). A store that
    already holds videos is checked against them here, before anything is reported as done or a device
    process starts; each device process checks again against its own model. ``on_progress(stats, frames)``
    gets the totals over all device processes after each video any of them finishes."""
    from vfeat.decode_processes import default_workers
    from vfeat.extractor import ExtractSummary
    from vfeat.pipeline import RunStats
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
    ctx = spawn_context()
    procs, pending = [], {}  # pending: the connection of each device process not done yet -> its rank
    for rank, device in enumerate(devices):
        ours, theirs = ctx.Pipe(duplex=True)
        procs.append(ctx.Process(target=_device_main, args=(theirs, rank, out, device, per_device, options,
                                                            logging.getLogger().level)))
        procs[-1].start()
        theirs.close()  # the process holds the only other end now: its death ends the connection
        pending[ours] = rank
    # Each process's videos go over its connection once all have started, not with its start-up data: a
    # process that dies before reading that (one that cannot start) would leave the parent
    # waiting for ever to write a long list into the start-up pipe.
    for conn, rank in pending.items():
        try:
            conn.send(todo[rank:: len(devices)])
        except (BrokenPipeError, ConnectionResetError):  # it died already: its end comes next
            pass
    summaries, errors = [], []
    heard: set[int] = set()  # ranks that have sent anything
    totals: dict[int, tuple] = {}  # rank -> (videos_ok, videos_failed, frames, video_seconds) so far
    while pending:
        for conn in connection.wait(list(pending)):
            rank = pending[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):  # ended without "done": killed (kill -9, out of memory)
                del pending[conn]
                conn.close()
                procs[rank].join(timeout=5)
                error = (f"device {devices[rank]}: its process died (exit code {procs[rank].exitcode}); the videos it "
                         "committed are kept, run the same command again to finish the rest")
                if rank not in heard and (procs[rank].exitcode or 0) > 0:  # an error before its first word: no start
                    error = (f"device {devices[rank]}: its process exited at start (exit code {procs[rank].exitcode}); "
                             "its error is printed above")
                errors.append(error)
                continue
            heard.add(rank)
            if message[0] == "opened":
                list_shard(out, message[1])
                try:
                    conn.send("listed")
                except (BrokenPipeError, ConnectionResetError):  # it has just died: its end comes next
                    pass
            elif message[0] == "say":
                print(message[1], file=sys.stderr)
            elif message[0] == "progress":
                _, totals[rank], frames = message
                if on_progress:
                    ok, failed, stored, seconds = (sum(values) for values in zip(*totals.values()))
                    on_progress(RunStats(videos_ok=ok, videos_failed=failed, frames=stored, video_seconds=seconds), frames)
            else:  # done
                _, summary, error = message
                del pending[conn]
                conn.close()
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
        # where the time went in the device process that finished last: it sets the run's wall time
        timings=dict(max(summaries, key=lambda s: s.seconds).timings) if summaries else {},
    )
