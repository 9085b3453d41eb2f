"""A rerun with nothing to do loads no model: every video is stored, by runs asked for exactly this run's
settings (vfeat/request.py). Anything less certain loads the model and checks the store as before."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vfeat
from conftest import make_video
from vfeat import extractor
from vfeat.cli import app

runner = CliRunner()


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The model names ``vfeat extract`` loads, in order (the loads still happen)."""
    seen: list[str] = []
    real = extractor.load_model

    def counting(name, *args, **kwargs):
        seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(extractor, "load_model", counting)
    return seen


@pytest.fixture
def setup(tiny_model, tmp_path):
    """Two videos, and a copy of the tiny model's weights that the tests may touch."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos, "a.mp4", 1.0)
    make_video(videos, "b.mp4", 1.5, source="testsrc")
    weights = tmp_path / "weights.pt"
    shutil.copy(tiny_model.state_dict, weights)
    return videos, weights


def _extract(tiny_model, videos: Path, out: Path, weights: Path, *extra: str) -> str:
    result = runner.invoke(app, ["extract", str(videos), "--out", str(out), "--no-progress", "--workers", "0",
                                 "--fps", "1", *tiny_model.cli_args(str(weights)), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _tree_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["s.zarr", "s.h5", "store_dir"])
def test_a_finished_run_again_loads_no_model_and_writes_nothing(tiny_model, setup, tmp_path, loads, name):
    videos, weights = setup
    out = tmp_path / name
    _extract(tiny_model, videos, out, weights)
    assert loads == [tiny_model.name]
    before = _tree_state(out) if out.is_dir() else {name: (out.stat().st_size, out.stat().st_mtime_ns)}
    output = _extract(tiny_model, videos, out, weights)
    assert loads == [tiny_model.name], "the rerun loaded the model"
    assert "0 stored, 0 failed, 2 already in the store" in output and "0 to go" in output
    assert output.rstrip().endswith(f"-> {out}")  # the store (no shard of it was written)
    after = _tree_state(out) if out.is_dir() else {name: (out.stat().st_size, out.stat().st_mtime_ns)}
    assert after == before
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["a.mp4", "b.mp4"]


def test_anything_less_certain_loads_the_model(tiny_model, setup, tmp_path, loads):
    videos, weights = setup
    out = tmp_path / "s.zarr"
    _extract(tiny_model, videos, out, weights)
    # a new video: the model is needed
    make_video(videos, "c.mp4", 1.0, source="smptebars")
    assert "1 stored" in _extract(tiny_model, videos, out, weights)
    assert len(loads) == 2
    # the same weights file touched since (it may hold other weights): load, and the store's check decides
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert "3 already in the store" in _extract(tiny_model, videos, out, weights)
    assert len(loads) == 3
    # the same weights by another path (a copy): the sha256 check finds them the same, after a load
    copy = tmp_path / "copy.pt"
    shutil.copy(weights, copy)
    assert "3 already in the store" in _extract(tiny_model, videos, out, copy)
    assert len(loads) == 4
    # another sampling: refused, as before, once the model is loaded
    result = runner.invoke(app, ["extract", str(videos), "--out", str(out), "--no-progress", "--workers", "0",
                                 "--fps", "2", *tiny_model.cli_args(str(weights))])
    assert result.exit_code == 2 and "store was written with sampling=" in result.output, result.output
    assert len(loads) == 5


def test_a_store_from_a_loaded_model_records_no_request(tiny_model, setup, tmp_path, loads):
    """A caller's own model (``encoder=``) may be another than its name says: its store records no request,
    so a later run by name loads its model and checks it."""
    videos, weights = setup
    out = tmp_path / "s.zarr"
    encoder = vfeat.load_model(tiny_model.name, str(weights), config=tiny_model.config)
    vfeat.extract([str(videos)], str(out), model=tiny_model.name, pretrained=str(weights), model_config=tiny_model.config,
                  fps=1.0, workers=0, encoder=encoder)
    with vfeat.open_store(str(out)) as store:
        assert "request" not in store.attrs
    _extract(tiny_model, videos, out, weights)
    assert loads == [tiny_model.name]
