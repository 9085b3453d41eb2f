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
    """Send warnings of the ``vfeat`` loggers to stderr, once per process, whatever the root logger's level
    (the CLI raises it to silence open_clip's chatter), and only there: a library in the CLI's process puts
    its own handler on the root logger, which would print them a second time."""
    logger = logging.getLogger("vfeat")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.WARNING)
    logger.propagate = False
