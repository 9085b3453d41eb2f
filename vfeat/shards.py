"""A directory store is one dataset, whichever engine wrote which shard: each model process writes its own
shard, and a video id is committed in at most one of them. This module knows the shards of a directory;
the engines only ask it which shard to write and which videos are already committed."""

from __future__ import annotations

from vfeat.errors import InputError
from vfeat.store import fs
from vfeat.store.backends import open_read
from vfeat.store.format import shard_kind
from vfeat.store.reader import shard_paths
from vfeat.store.tree import read_ids


def shard_for(out: str, store_format: str | None, rank: int = 0) -> str:
    """The shard this process writes: ``out`` itself when it names a shard, else ``out/shard-RRRRR.<fmt>``."""
    if shard_kind(out) is not None:
        if store_format and shard_kind(out) != store_format:
            raise InputError(f"--out {out} ends in .{shard_kind(out)} but --format is {store_format}.")
        return out
    suffix = {"zarr": "zarr", "h5": "h5"}[store_format or "zarr"]
    return fs.join(out, f"shard-{rank:05d}.{suffix}")


def committed_elsewhere(out: str, own_shard: str) -> set[str]:
    """Ids already committed in the other shards of a directory store (resume across shards)."""
    if shard_kind(out) is not None or not fs.isdir(out):
        return set()
    done: set[str] = set()
    for path in shard_paths(out):
        if path.rstrip("/") != own_shard.rstrip("/"):
            with open_read(path, shard_kind(path)) as tree:  # type: ignore[arg-type]
                done.update(read_ids(tree))
    return done
