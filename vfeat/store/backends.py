"""The two shard formats behind one small interface: open a :class:`~vfeat.store.tree.Tree` to read, or
run a write transaction on it. Zarr appends in place (its chunk writes are atomic file replaces, and
``offsets`` commits last). HDF5 files are not crash-safe while open for writing, so an HDF5 transaction
writes a copy and renames it over the original: the file on disk is always a complete, closed file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any, Iterator

import numpy as np

from vfeat.errors import StoreError
from vfeat.store import fs

ROW_CHUNK = 4096


class ZarrTree:
    def __init__(self, group: Any) -> None:
        self.group = group
        self.attrs = _AttrsView(group.attrs)

    def has(self, name: str) -> bool:
        try:
            self.group[name]
            return True
        except KeyError:
            return False

    def array(self, name: str) -> Any:
        return self.group[name]

    def top_names(self) -> set[str]:
        return set(self.group.keys())

    def create(self, name: str, dtype: str, width: int | None = None, length: int = 0) -> Any:
        # ``length`` rows exist from the start, reading as the fill value (0) until written: a new ``offsets``
        # is [0] to every reader at once, never an empty array
        shape = (length, width) if width else (length,)
        chunks = (ROW_CHUNK, width) if width else (ROW_CHUNK * 4,)
        return self.group.create_array(name, shape=shape, dtype=str if dtype == "str" else dtype, chunks=chunks)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        array = self.group[name]
        if array.shape[0] == 0:
            return np.zeros((0,) + tuple(array.shape[1:]), dtype=object if array.dtype.kind in "OTU" else array.dtype)
        return np.asarray(array[slice(start, stop)])


class _AttrsView(dict):
    """Root attributes as a plain dict whose ``update`` writes through (zarr attrs objects vary by version)."""

    def __init__(self, attrs: Any) -> None:
        super().__init__(attrs.asdict() if hasattr(attrs, "asdict") else dict(attrs))
        self._attrs = attrs

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._attrs.update(dict(self))


class H5Tree:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.attrs = _H5Attrs(dict(handle.attrs), handle)

    def has(self, name: str) -> bool:
        return name in self.handle

    def array(self, name: str) -> Any:
        return self.handle[name]

    def top_names(self) -> set[str]:
        return set(self.handle.keys())

    def create(self, name: str, dtype: str, width: int | None = None, length: int = 0) -> Any:
        import h5py

        shape = (length, width) if width else (length,)
        maxshape = (None, width) if width else (None,)
        chunks = (min(ROW_CHUNK, 1024), width) if width else (ROW_CHUNK,)
        kind = h5py.string_dtype("utf-8") if dtype == "str" else dtype
        return self.handle.create_dataset(name, shape=shape, maxshape=maxshape, dtype=kind, chunks=chunks)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        dataset = self.handle[name]
        if dataset.dtype.kind == "O":
            return np.asarray(dataset.asstr()[slice(start, stop)], dtype=object)
        return np.asarray(dataset[slice(start, stop)])


class _H5Attrs(dict):
    """HDF5 attributes hold nested values as JSON strings under their own names (documented)."""

    def __init__(self, values: dict, handle: Any) -> None:
        import json

        decoded = {}
        for key, value in values.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "{[":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            elif isinstance(value, np.generic):
                value = value.item()
            decoded[key] = value
        super().__init__(decoded)
        self._handle = handle

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        import json

        super().update(*args, **kwargs)
        for key, value in dict(*args, **kwargs).items():
            self._handle.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) or value is None else value


def _zarr_group(path: str, mode: str) -> Any:
    import zarr

    try:
        return zarr.open_group(path if fs.is_url(path) else fs.local(path), mode=mode)
    except FileNotFoundError as exc:
        if not fs.exists(path):
            raise StoreError(f"{path}: store not found") from None
        raise StoreError(f"{path}: not a readable Zarr store (no group metadata: {exc})") from None
    except Exception as exc:  # zarr raises several types for a folder that is not a group
        raise StoreError(f"{path}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def open_read(path: str, kind: str) -> Iterator[Any]:
    """A read-only tree over one shard."""
    if not fs.exists(path):
        raise StoreError(f"{path}: store not found")
    if kind == "zarr":
        yield ZarrTree(_zarr_group(path, "r"))
        return
    import h5py

    try:
        source = fs.open_binary(path) if fs.is_url(path) else fs.local(path)
        with h5py.File(source, "r") as handle:
            yield H5Tree(handle)
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 file ({exc})") from None


@contextlib.contextmanager
def transaction(path: str, kind: str, create: bool) -> Iterator[Any]:
    """A writable tree; changes are durable when the block exits without error.

    Zarr: in place. HDF5: on a copy that replaces the original only at the end (local files; for an
    object store the file is rewritten with one upload).
    """
    if kind == "zarr":
        yield ZarrTree(_zarr_group(path, "w" if create else "r+"))
        return
    import h5py

    if fs.is_url(path):
        tmp_local = os.path.join(_tmpdir(), f"{uuid.uuid4().hex}.h5")
        try:
            if not create:
                with open(tmp_local, "wb") as out:
                    out.write(fs.read_bytes(path))
            with h5py.File(tmp_local, "w" if create else "a") as handle:
                yield H5Tree(handle)
            with open(tmp_local, "rb") as src:
                fs.write_bytes_atomic(path, src.read())
        finally:
            if os.path.exists(tmp_local):
                os.remove(tmp_local)
        return
    target = fs.local(path)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f"{target}.{uuid.uuid4().hex}.tmp"
    try:
        if not create:
            shutil.copyfile(target, tmp)
        with h5py.File(tmp, "w" if create else "a", libver="latest") as handle:
            yield H5Tree(handle)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _tmpdir() -> str:
    import tempfile

    return tempfile.gettempdir()
