"""What an extraction run was asked for (model, weights, sampling, storage dtype), recorded in the store it
creates. A rerun asked for exactly the same, with every video already stored, then has nothing to do and
says so without loading its model: seconds for a large one (imports, weights, a GPU's start), which a
pipeline stage re-run on an unchanged folder paid every time.

Only an exact match skips the load: the same vfeat and open_clip versions, the same model name and options
as given, and each local file (weights, configuration) at the same absolute path with the same size and
modification time (as videos are recognised, vfeat/store/fingerprint.py). Anything else, a store written
before this record existed included, loads the model and checks the store's settings as always."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

from vfeat import __version__
from vfeat.sampling import SamplingPlan

#: the root attribute that holds the request of the run that created a shard
REQUEST_ATTR = "request"

#: model options that change where weights come from, not which: left out of the request
NOT_SETTINGS = frozenset({"cache_dir"})


def run_request(model: str, pretrained: str | None, model_config: str | None, plan: SamplingPlan, dtype: str,
                model_options: dict[str, Any]) -> dict[str, Any]:
    """The request as stored (JSON): a file named by the run is recorded as path, size and mtime."""
    options = {k: _describe(v) for k, v in sorted(model_options.items()) if v is not None and k not in NOT_SETTINGS}
    return {"vfeat": __version__, "open_clip": _version("open_clip_torch"), "model": model,
            "pretrained": _describe(pretrained), "model_config": _describe(model_config), "options": options,
            "sampling": plan.as_dict(), "dtype": dtype}


def _describe(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        stat = os.stat(value)
        return {"file": os.path.abspath(value), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return value


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
