"""vfeat's warnings (a decoder fallback, a GPU decoder that could not start) as ``vfeat: ...`` lines on
stderr, like its other messages, in the CLI's process and in every decode worker."""

from __future__ import annotations

import logging
import sys


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it between invocations)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("vfeat: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_warnings() -> None:
    """Send warnings of the ``vfeat`` loggers to stderr, once per process, without passing them to the root
    logger (whose level the CLI raises to silence open_clip's chatter)."""
    logger = logging.getLogger("vfeat")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.WARNING)
    logger.propagate = False
