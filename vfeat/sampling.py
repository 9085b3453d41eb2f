"""Which frames to keep: pure functions of the frame timestamps (no decoding, no torch).

The rule for time-based plans is the one a player follows: for each target time t, the frame on screen at
t is the last frame whose presentation time is <= t (times measured from the first frame). Each target gives
one row, so a plan asking for more frames than the video has repeats frames rather than inventing times.

- ``fps F``: targets k / F for k = 0 .. ceil(D * F) - 1 (at least one target, so a video shorter than 1/F
  still gives its first frame).
- ``num_frames N``: targets at segment centres (k + 0.5) * D / N.
- ``clips V x T @ S``: V views spread evenly over the frame indices, each T frames S source frames apart
  (index based, as clip models are trained), indices past the end clamped to the last frame.
- ``all``: every decoded frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfeat.errors import InputError


@dataclass(frozen=True)
class SamplingPlan:
    """The user's sampling settings; recorded in the store so a resumed run cannot mix two plans."""

    fps: float | None = None
    num_frames: int | None = None
    clips: int | None = None
    clip_len: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        chosen = [name for name, value in (("--fps", self.fps), ("--num-frames", self.num_frames), ("--clips", self.clips)) if value is not None]
        if len(chosen) > 1:
            raise InputError(f"Choose one sampling mode, not {' and '.join(chosen)}.")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise InputError(f"Invalid --fps ({self.fps}). It must be > 0.")
        if self.num_frames is not None and self.num_frames < 1:
            raise InputError(f"Invalid --num-frames ({self.num_frames}). It must be >= 1.")
        if self.clips is not None:
            if self.clips < 1:
                raise InputError(f"Invalid --clips ({self.clips}). It must be >= 1.")
            if self.clip_len is None or self.stride is None:
                raise InputError("--clips needs --clip-len (frames per clip) and --stride (source frames between them), "
                                 "e.g. --clips 3 --clip-len 8 --stride 4.")
            if self.clip_len < 1:
                raise InputError(f"Invalid --clip-len ({self.clip_len}). With --clips it must be >= 1.")
            if self.stride < 1:
                raise InputError(f"Invalid --stride ({self.stride}). With --clips it must be >= 1.")
        elif self.clip_len is not None or self.stride is not None:
            raise InputError("--clip-len and --stride only apply with --clips.")

    @property
    def mode(self) -> str:
        if self.fps is not None:
            return "fps"
        if self.num_frames is not None:
            return "num_frames"
        if self.clips is not None:
            return "clips"
        return "all"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        for key in ("fps", "num_frames", "clips", "clip_len", "stride"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplingPlan":
        return cls(**{k: data[k] for k in ("fps", "num_frames", "clips", "clip_len", "stride") if k in data})


@dataclass(frozen=True)
class Selection:
    """Rows to produce for one video: ``frame_indices[i]`` is the decoded frame (in presentation order)
    that row i shows. ``clip_rows`` groups rows into clips (one list of row numbers per clip) when the
    plan is clip-based or the whole selection is one clip; empty for frame-only plans."""

    frame_indices: np.ndarray  # int64 [rows]
    clip_rows: list[list[int]]


def target_times_s(plan: SamplingPlan, duration_s: float) -> np.ndarray:
    """Target times (seconds from the first frame) for the time-based plans."""
    if plan.fps is not None:
        count = max(1, math.ceil(round(duration_s * plan.fps, 9)))
        return np.arange(count, dtype=np.float64) / plan.fps
    if plan.num_frames is not None:
        k = np.arange(plan.num_frames, dtype=np.float64)
        return (k + 0.5) * duration_s / plan.num_frames
    raise ValueError(f"plan {plan.mode} has no target times")


def frames_on_screen(timestamps_s: np.ndarray, targets_s: np.ndarray) -> np.ndarray:
    """For each target, the index of the last frame whose time is <= target (the first frame for targets
    before it). ``timestamps_s`` must be sorted ascending."""
    idx = np.searchsorted(timestamps_s, targets_s + 1e-9, side="right") - 1
    return np.clip(idx, 0, len(timestamps_s) - 1).astype(np.int64)


def clip_frame_indices(num_frames: int, clips: int, clip_len: int, stride: int) -> np.ndarray:
    """[clips, clip_len] source-frame indices: views spread evenly (first view at the start, last one
    ending at the last frame), clamped to the video when it is shorter than one clip's span."""
    span = (clip_len - 1) * stride + 1
    room = max(num_frames - span, 0)
    if clips == 1:
        starts = np.array([room // 2])
    else:
        starts = np.round(np.arange(clips) * room / (clips - 1)).astype(np.int64)
    grid = starts[:, None] + np.arange(clip_len)[None, :] * stride
    return np.minimum(grid, num_frames - 1).astype(np.int64)


def select_frames(plan: SamplingPlan, timestamps_s: np.ndarray, duration_s: float, one_clip: bool = False) -> Selection:
    """Apply ``plan`` to one video's sorted frame times (seconds from its first frame).

    ``one_clip``: the model consumes the whole selection as a single clip (clip models with
    ``--num-frames``), so the selection is also reported as one clip.
    """
    n = len(timestamps_s)
    if n == 0:
        raise ValueError("a video with no frames has nothing to select")
    if plan.mode == "all":
        indices = np.arange(n, dtype=np.int64)
    elif plan.mode == "clips":
        grid = clip_frame_indices(n, plan.clips, plan.clip_len, plan.stride)  # type: ignore[arg-type]
        rows = [list(range(c * grid.shape[1], (c + 1) * grid.shape[1])) for c in range(grid.shape[0])]
        return Selection(grid.reshape(-1), rows)
    else:
        indices = frames_on_screen(timestamps_s, target_times_s(plan, duration_s))
    rows = [list(range(len(indices)))] if one_clip else []
    return Selection(indices, rows)
