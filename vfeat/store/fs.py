"""Paths that may be local or fsspec URLs (``s3://``, ``gs://``, ``file://``): the few operations the store needs."""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def absolute(path: str) -> str:
    """A local path made absolute (for another process, or a record read elsewhere, which do not share this
    working directory); URLs as they are."""
    return path if "://" in str(path) else os.path.abspath(path)


def local(path: str) -> str:
    return str(path).removeprefix("file://")


def filesystem(path: str):
    """(fsspec filesystem, path inside it) for a URL. Credentials and endpoints come from the environment
    (s3fs: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``).
    Directory listings are not cached: zarr writes through its own filesystem instance, so a cached listing
    here would miss the shards it just created."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path, use_listings_cache=False)
    return fs, inner


def join(base: str, *names: str) -> str:
    return posixpath.join(str(base), *names) if is_url(base) else str(Path(local(base), *names))


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/")) if is_url(path) else os.path.basename(local(path).rstrip("/"))


def exists(path: str) -> bool:
    if is_url(path):
        fs, inner = filesystem(path)
        return fs.exists(inner)
    return os.path.exists(local(path))


def isdir(path: str) -> bool:
    if is_url(path):
        fs, inner = filesystem(path)
        return fs.isdir(inner)
    return os.path.isdir(local(path))


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under ``path``, sorted; empty if it does not exist."""
    if is_url(path):
        fs, inner = filesystem(path)
        if not fs.exists(inner):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))
    directory = local(path)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def makedirs(path: str) -> None:
    if is_url(path):
        fs, inner = filesystem(path)
        fs.makedirs(inner, exist_ok=True)
    else:
        os.makedirs(local(path), exist_ok=True)


def read_bytes(path: str) -> bytes:
    if is_url(path):
        fs, inner = filesystem(path)
        with fs.open(inner, "rb") as handle:
            return handle.read()
    with open(local(path), "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_binary(path: str):
    fs, inner = filesystem(path)
    return fs.open(inner, "rb")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Whole-file write that readers never see half done."""
    write_atomic(path, lambda handle: handle.write(data))


def write_atomic(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """``write(handle)`` streams the content (no second copy of it in memory); readers never see the file
    half done: temp file + rename locally (fsynced), a single PUT on object stores (atomic by nature)."""
    if is_url(path):
        fs, inner = filesystem(path)
        with fs.open(inner, "wb") as handle:
            write(handle)
        return
    target = local(path)
    tmp = f"{target}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def remove(path: str) -> None:
    if is_url(path):
        fs, inner = filesystem(path)
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
        return
    target = local(path)
    if os.path.isdir(target):
        import shutil

        shutil.rmtree(target, ignore_errors=True)
    elif os.path.exists(target):
        os.remove(target)
