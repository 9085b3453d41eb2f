"""Expand what the user named (files, directories, globs, file lists) into ``(video_id, path)`` pairs.

A video's id is its path relative to the argument it was found under, with POSIX separators: a file named
directly gets its file name, a file-list entry the path as written in the list. Ids must be unique across the whole run:
collisions are refused before any work starts, because two videos under one key would silently overwrite
each other in the store.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from vfeat.errors import InputError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .3g2 .ogv .gif .vob .mxf .asf .f4v .dv "
    ".divx .m2v .rm .rmvb .y4m .nut".split()
)

STORE_FILES = frozenset({".h5", ".hdf5"})  # never videos, and often written next to them


@dataclass(frozen=True)
class VideoSource:
    video_id: str
    path: str  # as the decoder should open it (local path or fsspec URL)


def _is_url(text: str) -> bool:
    return "://" in text


def _posix(path: str) -> str:
    return PurePosixPath(Path(path).as_posix()).as_posix()


def _walk(directory: Path) -> list[Path]:
    """The videos under ``directory`` by extension; one warning names what else it holds (hidden files aside),
    so that a video with an unexpected extension is not left out unnoticed."""
    found, other = [], []
    searched = set()  # (device, inode) of each folder: a link back up (a/up -> ..) would loop for ever
    for root, dirs, files in os.walk(directory, followlinks=True):
        here = os.stat(root)
        searched.add((here.st_dev, here.st_ino))
        kept = []
        for d in sorted(dirs):  # the same folders kept, whatever order the file system lists them in
            if d.endswith(".zarr"):
                continue  # a store written beside the videos
            try:
                there = os.stat(os.path.join(root, d))
            except OSError:
                continue  # a dangling link
            if (there.st_dev, there.st_ino) in searched:
                log.warning("%s: not searched again: a link to a folder already searched",
                            _posix(os.path.relpath(os.path.join(root, d), directory)))
                continue
            searched.add((there.st_dev, there.st_ino))
            kept.append(d)
        dirs[:] = kept
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() not in STORE_FILES:
                (found if Path(name).suffix.lower() in VIDEO_EXTENSIONS else other).append(Path(root) / name)
    if other and found:
        examples = ", ".join(sorted(_posix(os.path.relpath(f, directory)) for f in other)[:3])
        log.warning("%s: left out %d file(s) whose extension is not a video's (%s%s); name them to include them",
                    directory, len(other), examples, ", ..." if len(other) > 3 else "")
    return sorted(found)


def expand_inputs(inputs: Iterable[str] | str | os.PathLike, file_list: str | None = None) -> list[VideoSource]:
    """Resolve inputs in the order given (one path alone is one input, not its characters). A missing path
    is kept as a source (it fails as a recorded failure naming the file, like any unreadable video) unless
    it is a directory (a trailing ``/``) or glob that matches nothing, which is an :class:`InputError`
    (almost always a typo)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources: list[VideoSource] = []
    for item in inputs:
        sources.extend(_expand_one(os.fspath(item)))
    if file_list is not None:
        sources.extend(read_file_list(file_list))
    _refuse_duplicate_ids(sources)
    return sources


def _expand_one(item: str) -> list[VideoSource]:
    if _is_url(item):
        return [VideoSource(item, item)]
    path = Path(item)
    if item.endswith(("/", os.sep)) and not path.exists():
        raise InputError(f"{item}: no such directory")
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise InputError(f"{item}: directory holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        return [VideoSource(_posix(os.path.relpath(f, path)), str(f)) for f in files]
    if any(ch in item for ch in "*?["):
        matches = sorted(glob.glob(item, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise InputError(f"{item}: pattern matches no file")
        base = _glob_base(item)
        return [VideoSource(_posix(os.path.relpath(f, base)), f) for f in files]
    return [VideoSource(path.name, item)]


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: ids are relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def read_file_list(file_list: str) -> list[VideoSource]:
    """One path (or URL) per line; blank lines and ``#`` comments ignored; relative paths are relative to
    the list's own folder. The id is the path as written in the list."""
    from vfeat.store.fs import read_text  # local or fsspec URL

    try:
        text = read_text(file_list)
    except FileNotFoundError:
        raise InputError(f"--file-list {file_list}: file not found") from None
    base = file_list.rsplit("/", 1)[0] if _is_url(file_list) else str(Path(file_list).parent)
    sources = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _is_url(entry) or os.path.isabs(entry):
            location = entry
        else:
            location = f"{base}/{entry}" if _is_url(base) else str(Path(base) / entry)
        sources.append(VideoSource(_posix(entry) if not _is_url(entry) else entry, location))
    if not sources:
        raise InputError(f"--file-list {file_list}: no paths in the file")
    return sources


def _refuse_duplicate_ids(sources: list[VideoSource]) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for source in sources:
        if source.video_id in seen and seen[source.video_id] != source.path:
            clashes.append(f"'{source.video_id}' ({seen[source.video_id]} and {source.path})")
        seen.setdefault(source.video_id, source.path)
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; +{len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise InputError(
            f"{len(clashes)} video id(s) collide: {shown}. Ids are paths relative to the argument they were "
            "found under; pass the common parent directory instead, or use --file-list."
        )


def unique_sources(sources: list[VideoSource]) -> list[VideoSource]:
    """The same file named twice (same id and path) is processed once."""
    seen: set[str] = set()
    out = []
    for source in sources:
        if source.video_id not in seen:
            seen.add(source.video_id)
            out.append(source)
    return out
