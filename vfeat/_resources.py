"""Where the data files (``configs/models``, ``configs/tasks``) live."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir(kind: str) -> Path:
    """``configs/<kind>``: ``$VFEAT_CONFIG_DIR/<kind>`` when set, else the repository's ``configs/`` (a source
    checkout or an editable install), else the copy a wheel installs as ``vfeat/configs``."""
    root = os.environ.get("VFEAT_CONFIG_DIR")
    if root:
        return Path(root) / kind
    checkout = _PACKAGE.parent / "configs"
    return (checkout if checkout.is_dir() else _PACKAGE / "configs") / kind
