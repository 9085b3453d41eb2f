"""--devices: one model process per device, each writing its own shard; tested on the CPU with two
device processes (the same code path as cuda:0,cuda:1)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import vfeat
from vfeat.cli import app
from vfeat.errors import InputError

from conftest import make_video  # noqa: E402  (tests/ is on sys.path under pytest)

runner = CliRunner()


def _tiny(repo_root):
    return ["--model", "vfeat-tiny-vit", "--model-config", str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"), "--pretrained", "none"]


def test_two_device_processes_equal_one(tmp_path, repo_root):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(5):
        make_video(folder, f"v{i}.mp4", duration=1.0 + 0.4 * i, fps=10)
    args = ["extract", str(folder), "--fps", "2", "--no-progress", *_tiny(repo_root)]
    single = runner.invoke(app, [*args, "--out", str(tmp_path / "one.zarr"), "--workers", "0"])
    assert single.exit_code == 0, single.output
    multi = runner.invoke(app, [*args, "--out", str(tmp_path / "multi"), "--devices", "cpu,cpu", "--workers", "0"])
    assert multi.exit_code == 0, multi.output
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["shard-00000.zarr", "shard-00001.zarr"]
    with vfeat.open_store(str(tmp_path / "one.zarr")) as one, vfeat.open_store(str(tmp_path / "multi")) as many:
        assert sorted(one.ids) == sorted(many.ids)
        for vid in one.ids:
            np.testing.assert_array_equal(one[vid][1], many[vid][1])
            np.testing.assert_allclose(one[vid][0].astype(np.float32), many[vid][0].astype(np.float32), atol=1e-3)
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "multi"), "--devices", "cpu,cpu"])
    assert again.exit_code == 0 and "0 stored" in again.output and "5 already in the store" in again.output


def test_devices_need_a_directory_store(tmp_path, repo_root):
    make_video(tmp_path, "a.mp4", duration=1.0, fps=10)
    with pytest.raises(InputError, match="--out must be a directory"):
        vfeat.extract([str(tmp_path / "a.mp4")], str(tmp_path / "s.zarr"), model="vfeat-tiny-vit", pretrained="none",
                      model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"), fps=1, devices="cpu,cpu")
