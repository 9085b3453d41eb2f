"""Helpers shared by the parity tests of the video families (CLIP-ViP, Open-VCLIP)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VFEAT_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures")
TOL, LOGIT_TOL = 1e-4, 1e-3


def fixture_dir(name: str) -> Path:
    """A folder of ../shared/fixtures; a missing one fails (parity must not silently skip)."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.fail(f"fixture folder {path} is missing (clone shared/ beside the repo or set VFEAT_FIXTURES)")
    return path


def spec_for(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "models" / f"{name}.yaml").read_text())


def max_err(ours: torch.Tensor, official: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(official.shape), (tuple(ours.shape), tuple(official.shape))
    return (ours.detach().double() - official.double()).abs().max().item()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
