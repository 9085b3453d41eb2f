"""Sampling plans: pure functions of frame times, checked against hand-computed answers (exact rationals
where float rounding could hide an off-by-one)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from vfeat.errors import InputError
from vfeat.sampling import SamplingPlan, clip_frame_indices, frames_on_screen, select_frames, target_times_s


def cfr(count: int, rate: int) -> np.ndarray:
    """Frame times of a constant-rate video as a decoder gives them (float, with rounding)."""
    return np.arange(count) * (1.0 / rate)


# -- --fps F: targets k / F, k < ceil(D * F) ----------------------------------------------------------

@pytest.mark.parametrize("duration, fps, count", [
    (2.0, 1.0, 2),      # 0, 1
    (2.04, 1.0, 3),     # 0, 1, 2 (2.04 s video: the frame at 2.0 s exists)
    (3.0, 2.5, 8),      # ceil(7.5)
    (0.04, 1.0, 1),     # shorter than 1/F: still its first frame
    (1.9, 0.5, 1),      # ceil(0.95)
    (10.0, 1.0, 10),    # exactly 10: no 11th target at 10.0 s
])
def test_fps_target_count_and_times(duration, fps, count):
    targets = target_times_s(SamplingPlan(fps=fps), duration)
    assert len(targets) == count == max(1, math.ceil(Fraction(str(duration)) * Fraction(str(fps))))
    np.testing.assert_allclose(targets, [k / fps for k in range(count)], rtol=0, atol=1e-12)


def test_fps_count_ignores_float_noise_in_duration():
    # 0.1 * 3 = 0.30000000000000004: the duration is 0.3 s, so 10 fps gives 3 targets, not 4.
    assert len(target_times_s(SamplingPlan(fps=10), 0.1 * 3)) == 3
    # 29.97 fps, 60 frames: D = 60 * 1001 / 30000 = 2.002 s -> ceil(2.002 * 2) = 5 targets at 2 fps.
    assert len(target_times_s(SamplingPlan(fps=2), 60 * (1001 / 30000))) == 5


def test_fps_picks_frame_on_screen_25fps():
    # 25 fps, 2.04 s (51 frames); 1 fps targets 0, 1, 2 s are exactly frames 0, 25, 50.
    times = cfr(51, 25)
    sel = select_frames(SamplingPlan(fps=1), times, 51 / 25)
    assert sel.frame_indices.tolist() == [0, 25, 50]
    assert sel.clip_rows == []


def test_fps_picks_last_frame_not_after_target_ntsc():
    # 29.97 fps: frame k at k * 1001/30000 s. Target 1 s -> frame 29 (0.9676 s), frame 30 is at 1.001 s.
    times = np.array([k * 1001 / 30000 for k in range(90)])
    sel = select_frames(SamplingPlan(fps=1), times, 90 * 1001 / 30000)  # D = 3.003 s -> 4 targets
    exact = [Fraction(k * 1001, 30000) for k in range(90)]
    expected = [max(i for i, s in enumerate(exact) if s <= t) for t in (0, 1, 2, 3)]
    assert expected == [0, 29, 59, 89]
    assert sel.frame_indices.tolist() == expected


def test_fps_higher_than_native_repeats_frames():
    # 10 fps video, 0.3 s, sampled at 20 fps: targets 0, .05, .1, .15, .2, .25 -> frames 0,0,1,1,2,2.
    sel = select_frames(SamplingPlan(fps=20), cfr(3, 10), 0.3)
    assert sel.frame_indices.tolist() == [0, 0, 1, 1, 2, 2]


def test_fps_on_variable_frame_rate_times():
    # Frames at 0, .1, .15, .5, .55, 1.2 s; D = 1.3 s; 2 fps -> targets 0, .5, 1.0 -> frames 0, 3, 4.
    times = np.array([0.0, 0.1, 0.15, 0.5, 0.55, 1.2])
    sel = select_frames(SamplingPlan(fps=2), times, 1.3)
    assert sel.frame_indices.tolist() == [0, 3, 4]


def test_single_frame_video_gives_its_frame():
    sel = select_frames(SamplingPlan(fps=1), np.array([0.0]), 0.04)
    assert sel.frame_indices.tolist() == [0]
    sel = select_frames(SamplingPlan(num_frames=4), np.array([0.0]), 0.04)
    assert sel.frame_indices.tolist() == [0, 0, 0, 0]


# -- frames_on_screen: the player's rule ----------------------------------------------------------------

def test_frames_on_screen_rule_edges():
    times = np.array([0.0, 0.04, 0.08, 0.12])
    targets = np.array([0.0, 0.039999, 0.04, 0.0400001, 0.119, 0.12, 5.0, -1.0])
    assert frames_on_screen(times, targets).tolist() == [0, 0, 1, 1, 2, 3, 3, 0]


def test_frames_on_screen_exact_targets_despite_float_times():
    # k * (1/25) is not exactly k/25 in binary; the frame shown at t = k/25 is frame k for every k.
    times = cfr(1000, 25)
    targets = np.array([k / 25 for k in range(1000)])
    assert frames_on_screen(times, targets).tolist() == list(range(1000))


# -- --num-frames N: segment centres ------------------------------------------------------------------

def test_num_frames_segment_centres():
    np.testing.assert_allclose(target_times_s(SamplingPlan(num_frames=4), 10.0), [1.25, 3.75, 6.25, 8.75])


def test_num_frames_selects_on_screen_frames():
    # 25 fps, 4 s (100 frames), N = 4: centres 0.5, 1.5, 2.5, 3.5 s -> frames 12, 37, 62, 87
    # (frame 12 at 0.48 s is on screen at 0.5 s; frame 13 starts at 0.52 s).
    sel = select_frames(SamplingPlan(num_frames=4), cfr(100, 25), 4.0)
    assert sel.frame_indices.tolist() == [12, 37, 62, 87]
    assert sel.clip_rows == []


def test_num_frames_as_one_clip():
    sel = select_frames(SamplingPlan(num_frames=3), cfr(30, 10), 3.0, one_clip=True)
    assert sel.frame_indices.tolist() == [5, 15, 25]
    assert sel.clip_rows == [[0, 1, 2]]


def test_num_frames_more_than_frames_repeats():
    # 3 frames at 0, .1, .2 (D = .3), N = 6: centres .025, .075, .125, .175, .225, .275.
    sel = select_frames(SamplingPlan(num_frames=6), cfr(3, 10), 0.3)
    assert sel.frame_indices.tolist() == [0, 0, 1, 1, 2, 2]


# -- every frame, clips ---------------------------------------------------------------------------------

def test_all_frames():
    sel = select_frames(SamplingPlan(), cfr(7, 25), 0.28)
    assert sel.frame_indices.tolist() == list(range(7))
    assert SamplingPlan().mode == "all"


def test_clips_grid_spread_over_video():
    # 101 frames, 3 clips of 8 frames every 2nd frame: span 15, room 86 -> starts 0, 43, 86;
    # the last clip ends on the last frame (86 + 14 = 100).
    grid = clip_frame_indices(101, 3, 8, 2)
    assert grid.tolist() == [list(range(s, s + 16, 2)) for s in (0, 43, 86)]


def test_single_clip_is_centred():
    # 20 frames, one clip of 4 frames stride 3: span 10, room 10 -> start 5 (frames 5, 8, 11, 14).
    assert clip_frame_indices(20, 1, 4, 3).tolist() == [[5, 8, 11, 14]]


def test_clips_on_short_video_clamp_to_last_frame():
    # 5 frames, 2 clips of 4 frames stride 2: span 7 > 5 -> both start at 0; 6 is clamped to 4.
    assert clip_frame_indices(5, 2, 4, 2).tolist() == [[0, 2, 4, 4], [0, 2, 4, 4]]


def test_select_frames_clips_rows():
    sel = select_frames(SamplingPlan(clips=2, clip_len=3, stride=1), cfr(10, 10), 1.0)
    # span 3, room 7 -> starts 0 and 7.
    assert sel.frame_indices.tolist() == [0, 1, 2, 7, 8, 9]
    assert sel.clip_rows == [[0, 1, 2], [3, 4, 5]]


def test_no_frames_is_refused():
    with pytest.raises(ValueError, match="no frames"):
        select_frames(SamplingPlan(fps=1), np.array([]), 0.0)


# -- the plan record --------------------------------------------------------------------------------------

@pytest.mark.parametrize("plan, record", [
    (SamplingPlan(fps=2.0), {"mode": "fps", "fps": 2.0}),
    (SamplingPlan(num_frames=16), {"mode": "num_frames", "num_frames": 16}),
    (SamplingPlan(clips=3, clip_len=8, stride=4), {"mode": "clips", "clips": 3, "clip_len": 8, "stride": 4}),
    (SamplingPlan(), {"mode": "all"}),
])
def test_plan_record_round_trip(plan, record):
    assert plan.as_dict() == record
    assert SamplingPlan.from_dict(record) == plan


# -- bad flags: one message each ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"fps": 0.0}, "Invalid --fps (0.0). It must be > 0."),
    ({"fps": -2.0}, "Invalid --fps (-2.0). It must be > 0."),
    ({"fps": float("nan")}, "Invalid --fps (nan). It must be > 0."),
    ({"fps": float("inf")}, "Invalid --fps (inf). It must be > 0."),
    ({"num_frames": 0}, "Invalid --num-frames (0). It must be >= 1."),
    ({"clips": 0, "clip_len": 8, "stride": 1}, "Invalid --clips (0). It must be >= 1."),
    ({"clips": 2}, "--clips needs --clip-len (frames per clip) and --stride (source frames between them), e.g. "
                   "--clips 3 --clip-len 8 --stride 4."),
    ({"clips": 2, "clip_len": 8}, "--clips needs --clip-len (frames per clip) and --stride (source frames between "
                                  "them), e.g. --clips 3 --clip-len 8 --stride 4."),
    ({"clips": 2, "clip_len": 0, "stride": 1}, "Invalid --clip-len (0). With --clips it must be >= 1."),
    ({"clips": 2, "clip_len": 8, "stride": 0}, "Invalid --stride (0). With --clips it must be >= 1."),
    ({"clip_len": 8}, "--clip-len and --stride only apply with --clips."),
    ({"fps": 1.0, "num_frames": 8}, "Choose one sampling mode, not --fps and --num-frames."),
])
def test_bad_sampling_flags(kwargs, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        SamplingPlan(**kwargs)
