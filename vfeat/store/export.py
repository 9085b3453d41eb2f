"""Export to the per-video files of the older ``video_features`` tool, for code that still reads them:
``<stem>_clip.npy`` (features), ``<stem>_timestamps_ms.npy`` and ``<stem>_fps.npy``, or one pickle per
video with the same keys. A video id's folders are kept, so ids that share a stem do not collide, and
always under the destination: an absolute id (from a file list) loses its leading ``/``, a ``..`` becomes
``__``."""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from vfeat.errors import InputError
from vfeat.store.reader import open_store

FORMATS = ("npy", "pickle")


def export_store(store_path: str, dest: str, to: str = "npy") -> int:
    if to not in FORMATS:
        raise InputError(f"Invalid --to ({to}). Choose from: {', '.join(FORMATS)}.")
    root = Path(dest)
    count = 0
    with open_store(store_path) as store:
        table = store.videos()
        fps_by_id = dict(zip(table["id"], table["fps"]))
        places = export_places(list(table["id"]))
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


def export_places(video_ids: list[str]) -> dict[str, PurePosixPath]:
    """Each id's path under the destination (folders kept, never outside it); two ids that would land on
    the same files are an error before anything is written."""
    places: dict[str, PurePosixPath] = {}
    taken: dict[tuple[str, str], str] = {}
    for video_id in video_ids:
        parts = ["__" if part == ".." else part for part in PurePosixPath(video_id).parts if part not in ("/", ".")]
        place = PurePosixPath(*parts) if parts else PurePosixPath("_")
        key = (str(place.parent), place.stem)
        if key in taken and taken[key] != video_id:
            raise InputError(f"videos '{taken[key]}' and '{video_id}' would be exported to the same files "
                             f"({place.parent}/{place.stem}_*); export them from separate stores")
        taken[key] = video_id
        places[video_id] = place
    return places
