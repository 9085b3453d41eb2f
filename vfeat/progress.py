"""Progress display for long runs: videos done / total, frames per second, videos per second, speed against
real time (seconds of video per second), ETA."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vfeat.pipeline import RunStats


class ExtractProgress:
    """Callbacks for :func:`vfeat.extract` (``on_start`` / ``on_progress``) drawing a rich bar on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = time.perf_counter()

    def on_start(self, todo: int, skipped: int) -> None:
        if skipped:
            self.console.print(f"resuming: {skipped} video(s) already in the store, {todo} to go")
        if not self.enabled or todo == 0:
            return
        self.progress = Progress(
            TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not sys.stderr.isatty() and not self.enabled,
        )
        self.progress.start()
        self.task = self.progress.add_task("extract", total=todo, rate="")
        self.started = time.perf_counter()

    def on_progress(self, stats: RunStats, frames: int) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = stats.videos_ok + stats.videos_failed
        rate = f"{stats.frames / elapsed:.1f} frames/s {done / elapsed:.2f} videos/s {stats.video_seconds / elapsed:.1f}x real time"
        self.progress.update(self.task, completed=done, rate=rate)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
