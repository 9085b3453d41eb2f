"""Packet skipping (vfeat/gop.py): the decoder leaves out whole GOPs, GOP tails and disposable frames, and
the frames that come out are still exactly the frames the ffmpeg CLI decodes from the whole file."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import vfeat.decode as decode
from vfeat.decode import DecodeStats, decode_selected, probe
from vfeat.gop import GopSkipper, SkipPoints
from vfeat.sampling import SamplingPlan, select_frames

from conftest import make_video  # noqa: E402

# name -> (ffmpeg output options, whether anything can be skipped); 6 s at 25 fps, keyframe every 1 s
ENCODINGS = {
    "h264_closed_gop.mp4": (["-c:v", "libx264", "-g", "25", "-bf", "3"], True),
    "h264_open_gop.mp4": (["-c:v", "libx264", "-x264opts", "open-gop=1:keyint=25"], True),  # disposable only
    "h264_interlaced.mkv": (["-c:v", "libx264", "-g", "25", "-flags", "+ildct+ilme", "-x264opts", "interlaced=1"], True),
    "h264_annexb.ts": (["-c:v", "libx264", "-g", "25", "-f", "mpegts"], True),
    "hevc.mp4": (["-c:v", "libx265", "-x265-params", "keyint=25:log-level=error"], True),
    "hevc_open_gop.mkv": (["-c:v", "libx265", "-x265-params", "keyint=25:open-gop=1:log-level=error"], True),
    "vp9.webm": (["-c:v", "libvpx-vp9", "-g", "25", "-b:v", "200k", "-deadline", "realtime"], True),
    "mjpeg.avi": (["-c:v", "mjpeg"], True),
    "mpeg4.avi": (["-c:v", "mpeg4", "-g", "25", "-bf", "2"], False),  # not known to be safe: decoded whole
}
PLANS = {"fps1": SamplingPlan(fps=1.0), "frames5": SamplingPlan(num_frames=5), "fps4": SamplingPlan(fps=4.0)}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gop")
    return {name: make_video(folder, name, 6.0, 25, (128, 96), opts[1], None if opts[1] == "mjpeg" else "yuv420p", *opts[2:])
            for name, (opts, _) in ENCODINGS.items()}


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", ENCODINGS)
def test_skipping_gives_the_frames_ffmpeg_decodes(encoded, ffmpeg_frames, name, plan):
    path = str(encoded[name])
    got = probe(path)
    selection = select_frames(PLANS[plan], got.timestamps_s, got.info.duration_s)
    indices = np.unique(selection.frame_indices)
    stats = DecodeStats()
    decoded = dict(decode_selected(path, got.pts[indices], None, got.skip, stats))
    assert sorted(decoded) == sorted(int(p) for p in got.pts[indices])
    ours = np.stack([decoded[int(got.pts[i])] for i in indices])
    full = dict(decode_selected(path, got.pts[indices], None, None))
    assert all(np.array_equal(decoded[k], full[k]) for k in full)
    # PyAV converts interlaced frames field by field (equal to the CLI with scale=interl=1, checked by hand);
    # the CLI's default conversion treats them as progressive, so it is no oracle for them
    if "interlaced" not in name:
        assert np.array_equal(ours, ffmpeg_frames(path, indices.tolist()))
    assert stats.fallbacks == 0
    if ENCODINGS[name][1]:
        assert stats.packets_skipped > 0 and stats.packets_sent < got.info.num_frames
    else:
        assert got.skip is None and stats.packets_skipped == 0


def test_restart_points_are_idr_frames_only(encoded):
    closed = probe(str(encoded["h264_closed_gop.mp4"])).skip
    assert closed is not None and len(closed.restart_pts) == 6  # one IDR a second
    open_gop = probe(str(encoded["h264_open_gop.mp4"])).skip
    assert open_gop is not None and len(open_gop.restart_pts) == 1  # later I-frames of an open GOP are no restart
    assert len(open_gop.disposable_pts) > 0


def test_switch_off_with_environment(encoded, monkeypatch):
    path = str(encoded["h264_closed_gop.mp4"])
    got = probe(path)
    monkeypatch.setenv("VFEAT_DECODE_SKIP", "0")
    stats = DecodeStats()
    list(decode_selected(path, got.pts[[0, 75, 149]], None, got.skip, stats))
    assert stats.packets_skipped == 0


def test_missing_frames_after_skipping_are_decoded_in_full(encoded, monkeypatch, caplog):
    """If a skipping pass ever lost a frame, the full pass recovers it (and says so)."""
    path = str(encoded["h264_closed_gop.mp4"])
    got = probe(path)
    wanted = got.pts[[0, 30, 80, 140]]
    real = decode._decode

    def losing_one(path, wanted_set, resize, total, skip, stats, shown_pts):
        for stamp, image in real(path, wanted_set, resize, total, skip, stats, shown_pts):
            if skip is None or stamp != int(wanted[2]):
                yield stamp, image

    monkeypatch.setattr(decode, "_decode", losing_one)
    caplog.set_level(logging.WARNING, logger="vfeat.decode")  # other tests quiet vfeat's loggers
    stats = DecodeStats()
    out = dict(decode_selected(path, wanted, None, got.skip, stats))
    assert sorted(out) == sorted(int(p) for p in wanted) and stats.fallbacks == 1
    assert "missing after skipping" in caplog.text
    reference = dict(decode_selected(path, wanted, None, None))
    assert all(np.array_equal(out[k], reference[k]) for k in reference)


# -- the decision logic alone ---------------------------------------------------------------------------

def _run(points: SkipPoints, decode_order: list[int], wanted: list[int], delay: int = 0) -> list[int]:
    """Feed packets in decode order; a sent packet's frame comes out ``delay`` packets later (reordering)."""
    skipper, sent, queue = GopSkipper(points, np.asarray(wanted)), [], []
    for pts in decode_order:
        if skipper.send(pts):
            sent.append(pts)
            queue.append(pts)
            if len(queue) > delay:
                out = queue.pop(0)
                if out in wanted:
                    skipper.came_out(out)
    return sent


def test_whole_gops_and_tails_are_dropped():
    points = SkipPoints(np.array([0, 10, 20, 30]))
    order = list(range(40))
    sent = _run(points, order, wanted=[3, 25])
    assert sent == [0, 1, 2, 3, 20, 21, 22, 23, 24, 25]  # GOP 10-19 and 30-39 and both tails never decoded


def test_a_gop_is_finished_only_when_its_frames_came_out():
    points = SkipPoints(np.array([0, 10]))
    sent = _run(points, list(range(20)), wanted=[5], delay=2)
    assert sent == [0, 1, 2, 3, 4, 5, 6, 7]  # frame 5 comes out after packet 7 was sent


def test_wanted_leading_picture_keeps_the_next_gop_decoding():
    # decode order of an open GOP: the restart point 10 comes before its leading pictures 8 and 9
    points = SkipPoints(np.array([0, 10]))
    order = [0, 1, 2, 3, 4, 5, 6, 7, 10, 8, 9, 11, 12]
    sent = _run(points, order, wanted=[2, 9])
    assert sent[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 10] and 9 in sent and 11 not in sent


def test_unwanted_disposable_frames_are_dropped_anywhere():
    points = SkipPoints(np.array([0]), np.array([1, 2, 5, 6]))
    assert _run(points, list(range(10)), wanted=[6, 8]) == [0, 3, 4, 6, 7, 8]
