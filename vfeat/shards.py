"""A directory store is one dataset, whichever engine wrote which shard: each model process writes its own
shard, a video id is committed in at most one of them, and nothing committed is hidden from readers.

Local shards (``shard-RRRRR.<fmt>``, or any shard not named ``shard-ray-*``) commit video by video through
their own ``offsets``; Ray shards commit whole, by joining ``manifest.json``. Once a directory has a
manifest, readers see only the shards it lists, so a local shard joins it as soon as it exists, before its
first video; and every run first finishes what killed runs left (journals not merged yet, local shards not
listed), so the videos a run skips are exactly the videos readers see.
"""

from __future__ import annotations

import time
from typing import Any

from vfeat.errors import InputError, StoreError
from vfeat.store import fs
from vfeat.store.backends import open_read
from vfeat.store.format import shard_kind
from vfeat.store.reader import MANIFEST, shard_paths
from vfeat.store.tree import interrupted_creation, read_ids
from vfeat.store.writer import ShardWriter, check_compatible, commit_shards, journal_dir

#: Shards the Ray engine names by their videos and commits whole (see vfeat.engines.ray_engine).
RAY_SHARD_PREFIX = "shard-ray-"


def shard_for(out: str, store_format: str | None, rank: int = 0) -> str:
    """The shard this process writes: ``out`` itself when it names a shard, else ``out/shard-RRRRR.<fmt>``."""
    if store_format not in (None, "zarr", "h5"):
        raise InputError(f"Invalid --format ({store_format}). Choose from: zarr, h5.")
    if shard_kind(out) is not None:
        if store_format and shard_kind(out) != store_format:
            raise InputError(f"--out {out} ends in .{shard_kind(out)} but --format is {store_format}.")
        return out
    suffix = {"zarr": "zarr", "h5": "h5"}[store_format or "zarr"]
    return fs.join(out, f"shard-{rank:05d}.{suffix}")


def committed_elsewhere(out: str, own_shard: str, attrs: dict[str, Any] | None = None) -> set[str]:
    """Ids already committed in the other shards of a directory store (resume across shards). With the
    ``attrs`` this run writes, a shard written with another model, sampling, dtype or preprocessing is
    refused: its videos are not done for this run, and a store mixing settings cannot be read."""
    if shard_kind(out) is not None or not fs.isdir(out):
        return set()
    done: set[str] = set()
    for path in shard_paths(out):
        if path.rstrip("/") == own_shard.rstrip("/") or not _committed(path):
            continue
        # opened again: a shard with a commit record is never recreated, and its attributes came before it
        with open_read(path, shard_kind(path)) as tree:  # type: ignore[arg-type]
            if attrs is not None:
                check_compatible(path, dict(tree.attrs), attrs)
            done.update(read_ids(tree))
    return done


def stored_ids(out: str, own_shard: str) -> set[str] | None:
    """Ids stored in ``out`` (this process's shard and the others), read without checking their settings:
    a guess of what a run will skip, made before its model is loaded. ``None`` where reading fails; the
    run's own reading (:class:`ShardWriter`, :func:`committed_elsewhere`) decides."""
    stored = stored_with(out, own_shard, "format")
    return None if stored is None else stored[0]


def stored_with(out: str, own_shard: str, attr: str) -> tuple[set[str], list[Any]] | None:
    """Ids stored in ``out`` and the attribute ``attr`` of every shard that holds any (``None`` where it
    lacks it), read without checking settings; ``None`` where reading fails. (Videos in the journal of a
    killed run are not among the ids: :func:`recover` merges it first.)"""
    try:
        siblings = shard_paths(out) if shard_kind(out) is None and fs.isdir(out) else []
        done: set[str] = set()
        values: list[Any] = []
        for path in sorted({*siblings, own_shard}):
            if not fs.exists(path) or not _committed(path):
                continue
            with open_read(path, shard_kind(path)) as tree:  # type: ignore[arg-type]
                ids = read_ids(tree)
                if len(ids):
                    done.update(ids)
                    values.append(dict(tree.attrs).get(attr))
        return done, values
    except Exception:  # noqa: BLE001 - a guess or a shortcut: the run's own reading says what is wrong
        return None


def _committed(path: str, attempts: int = 10, pause_s: float = 0.1) -> bool:
    """Whether a sibling shard has its commit record. Its own process may be creating it right now (afresh,
    or anew after a kill during creation): for a moment it is a folder without metadata, or loses arrays
    we just listed. Such a shard holds nothing committed; one that stays unreadable is an error."""
    for attempt in range(attempts):
        try:
            with open_read(path, shard_kind(path)) as tree:  # type: ignore[arg-type]
                return not interrupted_creation(tree)
        except (StoreError, FileNotFoundError, KeyError):
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
    return False


def list_shard(out: str, shard: str) -> None:
    """Add a local shard to the manifest of its directory, if there is one, before anything is committed
    in it: a manifest hides the shards it does not list."""
    if shard_kind(out) is None and fs.exists(fs.join(out, MANIFEST)):
        commit_shards(out, [fs.basename(shard)])


def recover(out: str) -> None:
    """Before a run decides what is done: merge the journals killed local runs left (videos committed, but
    in no shard yet; a single-shard store's too, so that the check for changed files sees them), then list
    every local shard in the manifest, if there is one. Run by the front door alone, before any model process
    starts (it writes into other processes' shards)."""
    if shard_kind(out) is not None:  # a single-shard store: its journal, so that the run sees those videos too
        if fs.exists(out) and fs.exists(journal_dir(out)):
            _merge_journal(out)
        return
    if not fs.isdir(out):
        return
    names = fs.listdir(out)
    local = [name for name in names if shard_kind(name) is not None and not name.startswith(RAY_SHARD_PREFIX)]
    for name in local:
        path = fs.join(out, name)
        if fs.basename(journal_dir(path)) in names:
            _merge_journal(path)
    if MANIFEST in names:
        commit_shards(out, local)


def _merge_journal(path: str) -> None:
    with open_read(path, shard_kind(path)) as tree:  # type: ignore[arg-type]
        if interrupted_creation(tree):
            return  # nothing committed; its own writer creates it afresh
        attrs = dict(tree.attrs)
    ShardWriter(path, attrs).close()  # opening replays the journal; closing deletes it
