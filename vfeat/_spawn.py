"""vfeat's own processes (decode, device) start the spawn way, but without importing the caller's main module.

Python's spawn start method makes each child import the parent's ``__main__`` before anything else, so that
functions defined there can be unpickled. vfeat's processes run vfeat's functions on vfeat's objects only,
so for them that import is pure cost: every decode process paid for whatever the caller's script imports
(``import torch`` at the top: 1.3 s of CPU and the memory of torch, in each of them), a script without an
``if __name__ == "__main__":`` guard ran again in each (and failed), and code read from stdin could not be
imported at all. Here the child gets the parent's ``sys.path``, arguments and working directory as usual,
and no main module to import.
"""

from __future__ import annotations

import threading
from multiprocessing import spawn
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

#: the entries of the spawn start-up data that make a child import the parent's main module
_MAIN_MODULE_KEYS = ("init_main_from_name", "init_main_from_path")

_starting = threading.local()  # .without_main: this thread is starting one of vfeat's processes


def _install() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` (read by the spawn launcher at each start) once: the
    wrapper leaves the main module out for vfeat's processes, and returns what the function it wraps returns
    for any other process, whichever thread starts it."""
    wrapped = spawn.get_preparation_data
    if getattr(wrapped, "vfeat_wrapper", False):
        return

    def preparation_data(name: str) -> dict[str, Any]:
        data = wrapped(name)
        if getattr(_starting, "without_main", False):
            for key in _MAIN_MODULE_KEYS:
                data.pop(key, None)
        return data

    preparation_data.vfeat_wrapper = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = preparation_data


class _Process(SpawnProcess):
    def start(self) -> None:
        _install()
        _starting.without_main = True
        try:
            super().start()
        finally:
            _starting.without_main = False


class _Context(SpawnContext):
    Process = _Process


def spawn_context() -> SpawnContext:
    """A ``multiprocessing`` spawn context whose processes do not import the caller's main module: their
    targets and arguments must come from importable modules (vfeat's, or a test's)."""
    return _Context()
