"""Export to the per-video files of the older ``video_features`` tool, for code that still reads them:
``<stem>_clip.npy`` (features), ``<stem>_timestamps_ms.npy`` and ``<stem>_fps.npy``, or one pickle per
video with the same keys. A video id's folders are kept, so ids that share a stem do not collide, and
always under the destination: an absolute id (from a file list) loses its leading ``/``, a ``..`` becomes
``__``. A name the file system could not hold (over 255 bytes with its ``_timestamps_ms.npy``) is cut, with
a hash of the id that keeps it unique, and said so."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from vfeat.errors import InputError
from vfeat.store.reader import open_store

FORMATS = ("npy", "pickle")
#: the longest ending each format adds to a video's stem
ENDINGS = {"npy": "_timestamps_ms.npy", "pickle": ".pkl"}
NAME_MAX = 255  # bytes in a file name, on Linux and macOS file systems

log = logging.getLogger(__name__)


def export_store(store_path: str, dest: str, to: str = "npy") -> int:
    if to not in FORMATS:
        raise InputError(f"Invalid --to ({to}). Choose from: {', '.join(FORMATS)}.")
    root = Path(dest)
    count = 0
    with open_store(store_path) as store:
        table = store.videos()
        fps_by_id = dict(zip(table["id"], table["fps"]))
        places = export_places(list(table["id"]), to)
        # rows streamed in large reads (per frame, or per clip with its start time), not a read per video
        for video_id, features, stamps in store.iter_rows("features" if store.has_frames else "clips/features"):
            rel = places[video_id]
            folder = root.joinpath(*rel.parent.parts)
            folder.mkdir(parents=True, exist_ok=True)
            stem = rel.stem
            arrays = {"clip": features, "timestamps_ms": stamps, "fps": np.array(fps_by_id[video_id])}
            if to == "npy":
                for key, value in arrays.items():
                    np.save(folder / f"{stem}_{key}.npy", value)
            else:
                with open(folder / f"{stem}.pkl", "wb") as handle:
                    pickle.dump(arrays, handle)
            count += 1
    return count


def export_places(video_ids: list[str], to: str = "npy") -> dict[str, PurePosixPath]:
    """Each id's path under the destination (folders kept, never outside it; a stem too long for a file name
    cut); two ids that would land on the same files are an error before anything is written."""
    places: dict[str, PurePosixPath] = {}
    taken: dict[tuple[str, str], str] = {}
    cut: list[str] = []
    for video_id in video_ids:
        parts = ["__" if part == ".." else part for part in PurePosixPath(video_id).parts if part not in ("/", ".")]
        place = PurePosixPath(*parts) if parts else PurePosixPath("_")
        stem = _fitting_stem(place.stem, video_id, ENDINGS[to])
        if stem != place.stem:
            place = place.with_name(stem + place.suffix)
            cut.append((place.parent / stem).as_posix())
        key = (str(place.parent), place.stem)
        if key in taken and taken[key] != video_id:
            raise InputError(f"videos '{taken[key]}' and '{video_id}' would be exported to the same files "
                             f"({place.parent}/{place.stem}_*); export them from separate stores")
        taken[key] = video_id
        places[video_id] = place
    if cut:
        log.warning("%d video id(s) too long for a file name were cut, with a hash of the id: %s%s", len(cut),
                    ", ".join(cut[:2]), ", ..." if len(cut) > 2 else "")
    return places


def _fitting_stem(stem: str, video_id: str, ending: str) -> str:
    """``stem`` if ``stem + ending`` fits in a file name; else its start, ``~`` and 8 hex digits of the id."""
    if len((stem + ending).encode()) <= NAME_MAX:
        return stem
    mark = "~" + hashlib.sha256(video_id.encode()).hexdigest()[:8]
    room = NAME_MAX - len((mark + ending).encode())
    while len(stem.encode()) > room:
        stem = stem[:-1]
    return stem + mark
