"""One writing command per store. Two `vfeat extract` runs into the same store would each merge the other's
journal and list the other's half-made shards as their own (videos lost, blank records, a shard no reader
opens); the second one is refused instead, at once, naming the first.

The lock is an advisory ``flock`` on a hidden file beside the store (``.NAME.vfeat-lock``), outside the
store itself, so no reader sees it. The kernel lets go of it when the process ends, however it ends
(``kill -9`` included): a crashed run never leaves a lock that blocks the rerun. The file stays (removing it
would race with a run that is opening it). Where the store's folder may not be written in, a directory store
holds its lock inside (``.vfeat-lock``, hidden from readers). Remote stores (fsspec URLs) have no such lock: one command at a
time there, as docs/store.md says.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from vfeat.errors import StoreError
from vfeat.store import fs

log = logging.getLogger(__name__)


#: the names vfeat gives the shards of a directory store (vfeat.shards): one of them given as --out is a
#: part of that directory's dataset, which a run into the directory writes too
SHARD_OF_A_DIRECTORY = re.compile(r"shard-(\d{5}|ray-[^/]+)\.(zarr|h5)")


def lock_path(out: str) -> Path:
    """``feats.zarr`` -> ``.feats.zarr.vfeat-lock`` in the same folder (``feats/`` -> ``.feats.vfeat-lock``),
    for the store as the file system knows it: through symlinks, and the directory store for one of its own
    shards, so that no second name of a store gets a second lock."""
    store = Path(os.path.realpath(out.rstrip("/") or "/"))
    if SHARD_OF_A_DIRECTORY.fullmatch(store.name):
        store = store.parent
    return store.parent / f".{store.name}.vfeat-lock"


@contextlib.contextmanager
def writer_lock(out: str) -> Iterator[None]:
    """Hold the store's writer lock for the block; :class:`StoreError` when another process holds it."""
    if fs.is_url(out):
        yield
        return
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:  # a folder the user may not write in (the store's own may be writable)
        inside = Path(out) / ".vfeat-lock"
        try:
            handle = open(inside, "a+") if Path(out).is_dir() else None
        except OSError:
            handle = None
        if handle is None:
            log.warning("%s: not locked against a second writer: cannot create %s (%s)", out, path, exc.strerror or exc)
            yield
            return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(f"{out}: another vfeat extract is writing this store ({holder}); wait for it to end, "
                             f"or write to another --out. Two runs into one store would lose videos.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
