"""A decode-process entry point that fails on purpose, for tests of the model process's side. It lives in a
module of its own because a spawned process imports its target by name."""

from __future__ import annotations

import os
from multiprocessing import connection
from typing import Any

from vfeat.workers import worker_main


def dies_halfway_through_its_first_frames_message(*args: Any) -> None:
    """vfeat's decode process, except that the first one to start under ``VFEAT_TEST_DIE_ONCE`` (a marker
    file's path) writes half of its first ``frames`` message to the model process and exits with status 3:
    the model process is left with a message that never ends, as when a process is killed mid-write."""
    try:
        os.close(os.open(os.environ["VFEAT_TEST_DIE_ONCE"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # another process died already: this one works
        return worker_main(*args)
    send = connection.Connection._send

    def half_then_exit(self: Any, buf: Any, *rest: Any) -> None:
        if b"frames" in bytes(buf[:64]):
            send(self, bytes(buf[: len(buf) // 2]), *rest)
            os._exit(3)
        send(self, buf, *rest)

    connection.Connection._send = half_then_exit  # type: ignore[method-assign]
    worker_main(*args)
