"""Export to the per-video files of the older ``video_features`` tool, for code that still reads them:
``<stem>_clip.npy`` (features), ``<stem>_timestamps_ms.npy`` and ``<stem>_fps.npy``, or one pickle per
video with the same keys. A video id's folders are kept, so ids that share a stem do not collide."""

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
        # rows streamed in large reads (per frame, or per clip with its start time), not a read per video
        for video_id, features, stamps in store.iter_rows("features" if store.has_frames else "clips/features"):
            rel = PurePosixPath(video_id)
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
