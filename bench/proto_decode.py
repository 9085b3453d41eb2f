"""Prototypes of decode changes, measured by ``bench/investigate.py`` (nothing in vfeat/ uses this).

- ``decode_selected_skip``: same contract as :func:`vfeat.decode.decode_selected`, but packets are
  dropped before decoding when no wanted frame can come out of them: whole GOPs without a target, and
  the tail of a GOP once all of its targets came out (the GOP-tail skip). GOP boundaries are the
  keyframe packets, found with one demux pass (which vfeat's ``probe`` already makes: it could keep the
  keyframe flags). Safe for closed GOPs (IDR keyframes: x264's default); with open GOPs a wanted leading
  picture of the next GOP keeps the previous GOP's tail from being skipped (its pts is below the next
  keyframe's pts, so the GOP is not finished until it came out).
- ``patched_worker_main``: vfeat's decode worker entry point with the decoder's thread count and/or the
  GOP-tail skip switched by environment variables, so that ``vfeat.extract`` can be run end to end with
  a prototype without touching vfeat/ (spawned workers re-import modules: the switch must travel as
  environment, not as a monkeypatch of the parent).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np


def keyframe_pts(path: str) -> np.ndarray:
    """Sorted pts of the keyframe packets (a demux pass: no decoding)."""
    from vfeat.decode import _open, _video_stream

    container = _open(path)
    try:
        stream = _video_stream(container, path)
        keys = [int(p.pts) for p in container.demux(stream) if p.size and p.is_keyframe and p.pts is not None]
    finally:
        container.close()
    return np.unique(np.asarray(keys, dtype=np.int64))


def decode_selected_skip(path: str, wanted_pts: np.ndarray, resize: Any, threads: str | int = "AUTO",
                         keys: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    import av

    from vfeat.decode import _open, _to_rgb, _video_stream
    from vfeat.errors import DecodeError

    wanted_sorted = np.unique(np.asarray(wanted_pts, dtype=np.int64))
    wanted = set(int(p) for p in wanted_sorted)
    keys = keyframe_pts(path) if keys is None else keys
    # the end (exclusive pts) of the GOP each wanted frame lies in: GOP g spans [keys[g], keys[g+1])
    gop_of = np.searchsorted(keys, wanted_sorted, side="right") - 1
    remaining: dict[int, int] = {}
    for g in gop_of:
        remaining[int(g)] = remaining.get(int(g), 0) + 1
    container = _open(path)
    yielded = 0
    try:
        stream = _video_stream(container, path)
        if threads == "AUTO":
            stream.thread_type = "AUTO"
        else:
            stream.thread_type = "SLICE" if int(threads) > 1 else "NONE"
            stream.codec_context.thread_count = int(threads)
        gop = -1
        skipping = False
        try:
            for packet in container.demux(stream):
                if packet.size and packet.is_keyframe and packet.pts is not None:
                    gop = int(np.searchsorted(keys, int(packet.pts), side="right") - 1)
                    # skip a whole GOP that holds no target (and whose frames no earlier target needs)
                    skipping = remaining.get(gop, 0) == 0 and all(remaining.get(g, 0) == 0 for g in range(gop))
                if skipping and packet.size:
                    continue
                for frame in packet.decode():
                    stamp = frame.pts if frame.pts is not None else frame.dts
                    if stamp is None or int(stamp) not in wanted:
                        continue
                    wanted.discard(int(stamp))
                    g = int(np.searchsorted(keys, int(stamp), side="right") - 1)
                    remaining[g] -= 1
                    quarter_turns = int(round((frame.rotation or 0) / 90.0)) % 4
                    yield int(stamp), _to_rgb(frame, quarter_turns, resize)
                    yielded += 1
                if not wanted:
                    break
                # GOP tail: every target up to the end of the current GOP came out -> drop packets until
                # the next keyframe
                if packet.size and all(remaining.get(g, 0) == 0 for g in range(gop + 1)):
                    skipping = True
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{path}: decoding failed ({exc.strerror or exc})") from None
    finally:
        container.close()
    if wanted:
        raise DecodeError(f"{path}: decoded {yielded} of {yielded + len(wanted)} selected frames")


def decode_selected_threads(path: str, wanted_pts: np.ndarray, resize: Any, threads: int) -> Iterator[tuple[int, np.ndarray]]:
    """vfeat's decode_selected with a fixed decoder thread count (frame threading when > 1)."""
    import vfeat.decode as d

    wanted = set(int(p) for p in wanted_pts)
    container = d._open(path)
    yielded = 0
    try:
        stream = d._video_stream(container, path)
        stream.thread_type = "FRAME" if threads > 1 else "NONE"
        stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp is None or int(stamp) not in wanted:
                continue
            quarter_turns = int(round((frame.rotation or 0) / 90.0)) % 4
            yield int(stamp), d._to_rgb(frame, quarter_turns, resize)
            yielded += 1
            if yielded >= len(wanted):
                break
    finally:
        container.close()


def install_from_env() -> None:
    """Switch vfeat.workers' decoder per ``VFEAT_PROTO_SKIP`` (1: GOP-tail skip) and
    ``VFEAT_PROTO_THREADS`` (AUTO or a number)."""
    import vfeat.workers as w

    skip = os.environ.get("VFEAT_PROTO_SKIP") == "1"
    threads = os.environ.get("VFEAT_PROTO_THREADS", "AUTO")
    if not skip and threads == "AUTO":
        return
    if skip:
        w.decode_selected = lambda path, wanted, resize: decode_selected_skip(path, wanted, resize, threads)
    else:
        w.decode_selected = lambda path, wanted, resize: decode_selected_threads(path, wanted, resize, int(threads))


def patched_worker_main(*args: Any) -> None:
    install_from_env()
    from vfeat.workers import worker_main

    worker_main(*args)
