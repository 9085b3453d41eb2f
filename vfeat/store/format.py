"""The store's public layout, written once here and documented in ``docs/store.md``.

One shard is one Zarr v3 group (``*.zarr``) or one HDF5 file (``*.h5``) with the same tree. A directory
holding shards is one dataset. Video ``i`` owns rows ``offsets[i]:offsets[i+1]`` of the row arrays and
clips ``clips/offsets[i]:clips/offsets[i+1]``. ``offsets`` is written last when videos are appended, so
its length is the committed video count: a reader ignores rows past ``offsets[-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfeat.store.spool import SpooledRows

FORMAT_NAME = "vfeat-store"
FORMAT_VERSION = 1

SHARD_SUFFIXES = {".zarr": "zarr", ".h5": "h5", ".hdf5": "h5"}

# Row arrays (one row per stored frame) and per-video arrays, with their dtypes.
FRAME_ARRAYS = {"timestamps_ms": "float64"}
VIDEO_ARRAYS: dict[str, str] = {
    "videos/id": "str",
    "videos/path": "str",
    "videos/fps": "float64",
    "videos/duration_s": "float64",
    "videos/width": "int32",
    "videos/height": "int32",
    "videos/num_frames": "int64",
    "videos/start_time_s": "float64",
    "videos/rotation": "int32",
    "videos/file_size": "int64",
    "videos/file_mtime": "float64",
}
#: what a VideoRecord's ``info`` holds: the ``videos/*`` columns but id and path
VIDEO_FIELDS = tuple(name.split("/", 1)[1] for name in VIDEO_ARRAYS if name not in ("videos/id", "videos/path"))
#: per-video arrays that stores written before them lack, and the value they read as there (also for a video
#: whose file could not be looked at: a URL)
LATER_VIDEO_ARRAYS: dict[str, Any] = {"videos/file_size": -1, "videos/file_mtime": float("nan")}
CLIP_ARRAYS = {"clips/start_ms": "float64", "clips/end_ms": "float64"}
FAILURE_ARRAYS = {"failures/id": "str", "failures/path": "str", "failures/error": "str"}

#: Root attributes that must match for a run to append to an existing store.
IDENTITY_ATTRS = ("model", "sampling", "dtype", "embed_dim", "preprocess")


@dataclass
class VideoRecord:
    """One finished video, ready to be committed: rows (per-frame and/or per-clip) and its metadata."""

    video_id: str
    path: str
    info: dict[str, Any]  # fps, duration_s, width, height, num_frames, start_time_s, rotation, file_size, file_mtime
    features: np.ndarray | SpooledRows | None  # [rows, D] per-frame embeddings (a long video's in a spool file), or None (clip-only models)
    timestamps_ms: np.ndarray  # [rows] presentation time of each stored frame, from the first frame
    clip_features: np.ndarray | None = None  # [clips, D]
    clip_start_ms: np.ndarray | None = None
    clip_end_ms: np.ndarray | None = None


@dataclass
class Failure:
    video_id: str
    path: str
    error: str


@dataclass
class Batch:
    """What one commit appends: finished videos, plus failures to (re)record."""

    videos: list[VideoRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def shard_kind(path: str) -> str | None:
    """'zarr' / 'h5' from a shard path's suffix, None for anything else (a directory of shards)."""
    lowered = str(path).rstrip("/").lower()
    for suffix, kind in SHARD_SUFFIXES.items():
        if lowered.endswith(suffix):
            return kind
    return None


#: model options that only later versions record: a record without one is compared without it
LATER_MODEL_OPTIONS = ("config_sha256",)


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Whether two records of a store setting are the same setting (:func:`comparable_setting`), where a
    model option that one of them was written before is left out of the other."""
    if key == "model" and isinstance(a, dict) and isinstance(b, dict):
        a, b = without_later_options(a, b), without_later_options(b, a)
    return comparable_setting(key, a) == comparable_setting(key, b)


def without_later_options(model: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``model`` without the :data:`LATER_MODEL_OPTIONS` that ``other`` (an older record) lacks."""
    options, known = dict(model.get("options") or {}), other.get("options") or {}
    later = [k for k in LATER_MODEL_OPTIONS if k in options and k not in known]
    return {**model, "options": {k: v for k, v in options.items() if k not in later}} if later else model


def comparable_setting(key: str, value: Any) -> Any:
    """The part of a store setting that must be the same: for a model read from weight files, their sha256,
    not the paths they were read from (the same file by a symlink, a relative path or a new folder is the same
    model); a configuration file by its content (``config_sha256``), not its path or name. (Records from
    before ``config_sha256``: the weight files fix the architecture's shapes, so its path goes too.)"""
    if key != "model" or not isinstance(value, dict):
        return value
    options = dict(value.get("options") or {})
    if options.get("config_sha256"):
        for name_key in ("architecture", "model_config", "config_path"):  # the file's stem and path
            options.pop(name_key, None)
    if not value.get("checkpoint_sha256"):
        return {**value, "options": options} if "options" in value else value
    for path_key, sha_key in (("wise_with", "wise_sha256"), ("clip_weights", "clip_weights_sha256")):
        if options.get(sha_key):
            options.pop(path_key, None)
    for path_key in ("model_config", "config_path"):
        options.pop(path_key, None)
    return {**{k: v for k, v in value.items() if k != "pretrained"}, "options": options}
