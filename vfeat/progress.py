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

    #: terminals narrower than this get the short bar: count, frames/s and ETA (the long one would be cut)
    WIDE = 120

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = time.perf_counter()
        self.wide = True
        self.todo = self.done = 0  # kept without a bar too: an interrupted run says how far it got

    def on_start(self, todo: int, skipped: int) -> None:
        self.todo = todo
        if skipped:
            self.console.print(f"resuming: {skipped} video(s) already in the store, {todo} to go")
        if not self.enabled or todo == 0:
            return
        self.wide = self.console.width >= self.WIDE
        timing = [TimeElapsedColumn()] if self.wide else []
        self.progress = Progress(
            TextColumn("[bold]extract"), BarColumn(bar_width=40 if self.wide else 10), MofNCompleteColumn(),
            TextColumn("videos"), TextColumn("{task.fields[rate]}"), *timing, TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not sys.stderr.isatty() and not self.enabled,
        )
        self.progress.start()
        self.task = self.progress.add_task("extract", total=todo, rate="")
        self.started = time.perf_counter()

    def on_progress(self, stats: RunStats, frames: int) -> None:
        self.done = done = stats.videos_ok + stats.videos_failed
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{_short(stats.frames / elapsed)} frames/s {_short(done / elapsed)} videos/s"
        if self.wide:
            rate += f" {stats.video_seconds / elapsed:.1f}x real time"
        self.progress.update(self.task, completed=done, rate=rate)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _short(rate: float) -> str:
    """Three significant digits or so (0.42, 16.3, 611): the line must fit 80 columns."""
    return f"{rate:.2f}" if rate < 10 else f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"
