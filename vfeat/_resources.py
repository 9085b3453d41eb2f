"""Where the data files (``configs/models``, ``configs/tasks``) live."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir(kind: str) -> Path:
    """``configs/<kind>``: ``$VFEAT_CONFIG_DIR/<kind>`` when set, else the repository's ``configs/``."""
    root = os.environ.get("VFEAT_CONFIG_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / "configs"
    return base / kind
