"""Process entry points for tests of their parent's side, most of which fail on purpose. They live in a
module of their own because a spawned process imports its target by name."""

from __future__ import annotations

import os
import sys
from multiprocessing import connection
from typing import Any

from vfeat.handout import VideoTaker
from vfeat.workers import worker_main


def _die_halfway_through_the_first(kind: bytes) -> bool:
    """Make this process write half of its first message of ``kind`` to its parent and exit with status 3,
    as when it is killed mid-write; only in the first process to start under ``VFEAT_TEST_DIE_ONCE`` (a
    marker file's path). True if this is that process."""
    if not _first_to_start():  # another process died already: this one works
        return False
    send = connection.Connection._send

    def half_then_exit(self: Any, buf: Any, *rest: Any) -> None:
        if kind in bytes(buf[:64]):
            send(self, bytes(buf[: len(buf) // 2]), *rest)
            os._exit(3)
        send(self, buf, *rest)

    connection.Connection._send = half_then_exit  # type: ignore[method-assign]
    return True


def dies_halfway_through_its_first_frames_message(*args: Any) -> None:
    """vfeat's decode process, the first of which leaves its first ``frames`` message half-written."""
    _die_halfway_through_the_first(b"frames")
    worker_main(*args)


def _first_to_start() -> bool:
    try:
        os.close(os.open(os.environ["VFEAT_TEST_DIE_ONCE"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def exits_at_start(*args: Any) -> None:
    """A process that cannot start: it says so and exits with status 3."""
    print("vfeat test: this process cannot start", file=sys.stderr, flush=True)
    os._exit(3)


def dies_before_taking_a_video(*args: Any) -> None:
    """vfeat's decode process, the first of which exits (status 3) at once, as one that cannot start."""
    if _first_to_start():
        os._exit(3)
    worker_main(*args)


def dies_halfway_through_its_first_progress_message(*args: Any) -> None:
    """vfeat's device process (``--devices``), the first of which leaves its first ``progress`` message
    half-written."""
    from vfeat.engines.multidevice import _device_main

    _die_halfway_through_the_first(b"progress")
    _device_main(*args)


def dies_right_after_taking_its_first_video(*args: Any) -> None:
    """vfeat's decode process, the first of which exits (status 3) as soon as it has read its first video
    from the hand-out, before it can say which: as one killed while it takes a video."""
    if _first_to_start():
        take = VideoTaker.take

        def take_then_exit(self: VideoTaker) -> Any:
            take(self)
            os._exit(3)

        VideoTaker.take = take_then_exit  # type: ignore[method-assign]
    worker_main(*args)


def takes_every_video(taker: VideoTaker, out: str) -> None:
    """Take videos until there are no more, writing ``job path`` of each to ``out``, one per line."""
    taken = []
    while (item := taker.take()) is not None:
        taken.append(item)
    with open(out, "w") as handle:
        handle.write("".join(f"{job} {path}\n" for job, path in taken))
