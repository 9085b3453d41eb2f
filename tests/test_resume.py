"""Resume and crash safety.

- Rerunning the same command skips everything and leaves the store byte-for-byte unchanged; a new video is
  the only one processed and is appended; other settings are refused before anything is written.
- ``kill -9`` at several moments, then the same command again, gives the store an uninterrupted run gives.

The kill test runs the real ``vfeat extract`` command (``vfeat.cli.app``) in processes forked from one
helper process that has already imported torch and open_clip, so each run starts in well under a second
instead of ~5 s; each run is its own process group (with its decode worker), killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import vfeat
from conftest import make_video
from vfeat.cli import app
from vfeat.errors import StoreError

runner = CliRunner()


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file of a store (a Zarr folder or an HDF5 file)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def plain_rows(path: Path) -> dict:
    """Everything committed in a shard, read with zarr / h5py, keyed by video id; plus raw shape facts."""
    names = ("features", "timestamps_ms", "offsets", "videos/id", "videos/num_frames", "videos/duration_s")
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r")
        data = {n: group[n][:] for n in names}
        data["failures/id"] = group["failures/id"][:]
    else:
        with h5py.File(path, "r") as handle:
            data = {n: (handle[n].asstr()[:] if h5py.check_string_dtype(handle[n].dtype) else handle[n][:]) for n in names}
            data["failures/id"] = handle["failures/id"].asstr()[:]
    offsets = data["offsets"]
    n = len(offsets) - 1
    ids = [str(v) for v in data["videos/id"][:n]]
    videos = {vid: {"features": data["features"][offsets[i]:offsets[i + 1]],
                    "timestamps_ms": data["timestamps_ms"][offsets[i]:offsets[i + 1]],
                    "num_frames": int(data["videos/num_frames"][i]), "duration_s": float(data["videos/duration_s"][i])}
              for i, vid in enumerate(ids)}
    return {"ids": ids, "videos": videos, "rows": len(data["features"]), "committed_rows": int(offsets[-1]),
            "id_rows": len(data["videos/id"]), "failures": [str(f) for f in data["failures/id"]]}


def assert_same_store(got: dict, want: dict, context: str = "") -> None:
    assert sorted(got["ids"]) == sorted(want["ids"]), context
    assert len(got["ids"]) == len(set(got["ids"])), f"duplicate ids {context}"
    assert got["rows"] == got["committed_rows"] == want["committed_rows"], context
    assert got["id_rows"] == len(got["ids"]), context
    assert got["failures"] == [], context
    for vid, video in want["videos"].items():
        mine = got["videos"][vid]
        np.testing.assert_array_equal(mine["timestamps_ms"], video["timestamps_ms"], err_msg=f"{vid} {context}")
        np.testing.assert_allclose(mine["features"].astype(np.float32), video["features"].astype(np.float32),
                                   rtol=0, atol=2e-3, err_msg=f"{vid} {context}")
        assert (mine["num_frames"], mine["duration_s"]) == (video["num_frames"], video["duration_s"])


# -- rerun, append, refuse -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "videos"
    make_video(root, "a.mp4", 1.2, 25, (96, 64))
    make_video(root, "sub/b.mp4", 0.8, 25, (64, 96))
    return root


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_rerun_skips_everything_and_changes_nothing(tmp_path, tiny_model, folder, suffix):
    store = tmp_path / f"s{suffix}"
    first = vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (first.videos_ok, first.videos_skipped) == (2, 0)
    before = tree_digest(store)
    again = vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (again.videos_total, again.videos_ok, again.videos_skipped, again.videos_failed, again.frames) == (2, 0, 2, 0, 0)
    assert tree_digest(store) == before
    assert not Path(f"{store}.journal").exists()


def test_a_video_changed_on_disk_since_it_was_stored_is_named(tmp_path, tiny_model, caplog):
    """A store only appends: a rerun over a replaced file kept the old features without a word."""
    videos = tmp_path / "videos"
    make_video(videos, "a.mp4", 1.2, 25, (96, 64))
    make_video(videos, "b.mp4", 0.8, 25, (96, 64))
    store = tmp_path / "s.zarr"
    vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    with vfeat.open_store(str(store)) as opened:
        table = opened.videos()
    assert list(table["file_size"]) == [(videos / n).stat().st_size for n in ("a.mp4", "b.mp4")]
    assert list(table["file_mtime"]) == [(videos / n).stat().st_mtime for n in ("a.mp4", "b.mp4")]
    make_video(videos, "b.mp4", 2.0, 25, (96, 64))  # another video under the same name
    caplog.set_level("WARNING", logger="vfeat.extractor")
    again = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (again.videos_ok, again.videos_skipped) == (0, 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"{store}: 1 stored video(s) changed on disk since they were stored (size or modification time): b.mp4; "
        "the store keeps the features of the file as it was: extract changed videos into a new store"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_changed_video_still_in_a_killed_runs_journal_is_named(tmp_path, tiny_model, caplog, monkeypatch, suffix):
    """A killed run's last videos are committed in its journal, merged into the shard by the next run. The
    changed-file check ran before that merge, so such a video was skipped as stored without a word."""
    from vfeat.store.writer import ShardWriter

    videos = tmp_path / "videos"
    make_video(videos, "a.mp4", 1.2, 25, (96, 64))
    store = tmp_path / f"s{suffix}"
    vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    make_video(videos, "b.mp4", 0.8, 25, (96, 64))
    with monkeypatch.context() as crash:  # a run killed after its journal part, before any merge
        crash.setattr(ShardWriter, "_merge_parts", lambda self, parts, in_memory=None: None)
        vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert journal_parts(store)
    with vfeat.open_store(str(store)) as opened:
        assert opened.ids == ["a.mp4"]
    make_video(videos, "b.mp4", 2.0, 25, (96, 64))  # changed after the killed run stored it
    caplog.set_level("WARNING", logger="vfeat.extractor")
    again = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (again.videos_ok, again.videos_skipped) == (0, 2)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "1 stored video(s) changed on disk since they were stored (size or modification time): b.mp4; "
        "the store keeps the features of the file as it was: extract changed videos into a new store"]


def test_a_configuration_file_is_known_by_its_content(tmp_path, tiny_model, folder):
    """The model's record named its configuration file by path and stem: an edit that keeps every weight's
    shape (pool_type) was appended to a store written before it, and a copy under another name was refused."""
    import json
    import shutil

    first, second = sorted(p for p in folder.rglob("*.mp4"))
    config = tmp_path / "configs" / "cfg.json"
    config.parent.mkdir()
    shutil.copy(tiny_model.config, config)
    store = tmp_path / "s.zarr"
    kwargs = {**tiny_model.extract_kwargs(), "model_config": str(config)}
    vfeat.extract([str(first)], str(store), fps=2.0, workers=0, **kwargs)
    renamed = tmp_path / "elsewhere" / "another-name.json"  # the same content
    renamed.parent.mkdir()
    shutil.copy(config, renamed)
    summary = vfeat.extract([str(second)], str(store), fps=2.0, workers=0, **{**kwargs, "model_config": str(renamed)})
    assert summary.videos_ok == 1
    edited = json.loads(config.read_text())
    edited["vision_cfg"]["pool_type"] = "avg"  # other embeddings from the same weights
    config.write_text(json.dumps(edited))
    other = tmp_path / "more"
    make_video(other, "c.mp4", 0.8, 25, (96, 64))
    with pytest.raises(vfeat.StoreError, match="store was written with model="):
        vfeat.extract([str(other)], str(store), fps=2.0, workers=0, **kwargs)


def test_appending_at_another_precision_is_said_once(tmp_path, tiny_model, folder, caplog):
    """The computing precision is not part of a store's settings (a run resumed on another machine must
    append), but rows at bf16 differ from fp32 ones by more than storage rounding: said, once, against the
    precision of the run that created the store (its ``precision`` attribute)."""
    first, second = sorted(p for p in folder.rglob("*.mp4"))
    store = tmp_path / "s.zarr"
    vfeat.extract([str(first)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    with vfeat.open_store(str(store)) as opened:
        assert opened.attrs["precision"] == "fp32"
    caplog.set_level("WARNING", logger="vfeat.extractor")
    vfeat.extract([str(first), str(second)], str(store), fps=2.0, workers=0, **{**tiny_model.extract_kwargs(), "precision": "bf16"})
    assert [r.getMessage() for r in caplog.records] == [
        f"{store}: the stored videos were computed at fp32 precision, this run's at bf16: their features differ "
        "slightly (use --precision fp32 to match)"]
    caplog.clear()
    vfeat.extract([str(first), str(second)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert not caplog.records  # nothing appended, the same precision


def test_a_store_recorded_before_configuration_hashes_still_appends(tmp_path, tiny_model, folder):
    """Stores whose model record has no config_sha256 (written before it existed) are compared as then."""
    first, second = sorted(p for p in folder.rglob("*.mp4"))
    store = tmp_path / "s.zarr"
    vfeat.extract([str(first)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    group = zarr.open_group(str(store), mode="a")
    model = dict(group.attrs["model"])
    assert "config_sha256" in model["options"]
    model["options"] = {k: v for k, v in model["options"].items() if k != "config_sha256"}
    group.attrs["model"] = model
    summary = vfeat.extract([str(second)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert summary.videos_ok == 1
    with vfeat.open_store(str(store)) as opened:
        assert len(opened.ids) == 2


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_store_from_before_file_fingerprints_reads_and_appends(tmp_path, tiny_model, folder, suffix, caplog):
    """Stores written before videos/file_size and videos/file_mtime existed: their videos read as unknown
    (-1, NaN), are never called changed, and a run appends to them, recording the new videos' files."""
    store = tmp_path / f"old{suffix}"
    one = tmp_path / "one"
    make_video(one, "a.mp4", 1.2, 25, (96, 64))
    vfeat.extract([str(one)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    if suffix == ".zarr":
        group = zarr.open_group(str(store), mode="a")
        del group["videos/file_size"], group["videos/file_mtime"]
    else:
        with h5py.File(store, "a") as handle:
            del handle["videos/file_size"], handle["videos/file_mtime"]
    with vfeat.open_store(str(store)) as opened:
        table = opened.videos()
    assert table["file_size"].tolist() == [-1] and np.isnan(table["file_mtime"]).all()
    make_video(one, "a.mp4", 2.0, 25, (96, 64))  # changed, but nothing was recorded to tell
    make_video(one, "c.mp4", 0.8, 25, (96, 64))
    caplog.set_level("WARNING", logger="vfeat.extractor")
    summary = vfeat.extract([str(one)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (summary.videos_ok, summary.videos_skipped) == (1, 1) and not caplog.records
    with vfeat.open_store(str(store)) as opened:
        table = opened.videos()
    assert list(table["id"]) == ["a.mp4", "c.mp4"]
    assert table["file_size"].tolist() == [-1, (one / "c.mp4").stat().st_size]


HOLD_LOCK = """
import sys, time
from vfeat.store.lock import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("name", ["s.zarr", "s.h5", "shards/"])
def test_a_second_writer_is_refused_and_a_killed_ones_lock_goes_with_it(tmp_path, tiny_model, folder, name):
    """Two runs into one store lost videos and left blank records or an unreadable shard; the second is
    refused (exit 2, naming the first) before it reads or writes anything. The lock is the kernel's: a
    holder killed with -9 leaves nothing that blocks the rerun."""
    store = tmp_path / name
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["extract", str(folder), "--out", str(store), "--fps", "2", "--workers", "0",
                                     "--no-progress", *tiny_model.cli_args()])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert f"{store}: another vfeat extract is writing this store (pid {holder.pid} on " in message
        assert not store.exists()  # refused before the store was created
    finally:
        holder.kill()
        holder.wait()
    summary = vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert summary.videos_ok == 2
    # beside the store, not in it: readers never see it
    assert sorted(p.name for p in tmp_path.rglob("*vfeat-lock")) == [f".{store.name}.vfeat-lock"]


@pytest.mark.parametrize("held, other", [("real.zarr", "link.zarr"), ("shards", "shards/shard-00000.zarr"),
                                         ("shards/shard-00001.h5", "shards")])
def test_another_name_of_the_same_store_is_refused_too(tmp_path, tiny_model, folder, held, other):
    """The lock was named by the path as given: a symlink to the store, or one of a directory store's own
    shards given as --out, got a lock of its own, and both runs wrote the same store at once."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "real.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["extract", str(folder), "--out", str(tmp_path / other), "--fps", "2", "--workers", "0",
                                     "--no-progress", *tiny_model.cli_args()])
        assert result.exit_code == 2 and "another vfeat extract is writing this store" in result.output, result.output
    finally:
        holder.kill()
        holder.wait()


def test_an_hdf5_store_written_through_a_symlink_stays_where_the_link_points(tmp_path, tiny_model, folder):
    """An HDF5 shard is replaced whole at each commit: through a symlink, the link became a plain file and
    the store it pointed to never got the new videos."""
    (tmp_path / "big").mkdir()
    real, link = tmp_path / "big" / "real.h5", tmp_path / "link.h5"
    first = sorted(folder.iterdir())[0]
    vfeat.extract([str(first)], str(real), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    link.symlink_to(real)
    summary = vfeat.extract([str(folder)], str(link), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (summary.videos_ok, summary.videos_skipped) == (1, 1)
    assert link.is_symlink()
    with vfeat.open_store(str(real)) as opened:
        assert len(opened.ids) == 2


def test_where_the_lock_cannot_go_beside_a_directory_store_it_goes_inside(tmp_path, monkeypatch):
    """A store's folder the user may not write in: the lock of a directory store is a hidden file inside it."""
    import vfeat.store.lock as lock

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(lock, "lock_path", lambda out: blocker / "x.vfeat-lock")  # its folder cannot be made
    store = tmp_path / "shards"
    store.mkdir()
    with lock.writer_lock(str(store)):
        assert (store / ".vfeat-lock").exists()
        holder = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                                 "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(store / ".vfeat-lock")],
                                capture_output=True, text=True)
        assert holder.returncode != 0 and "BlockingIOError" in holder.stderr  # held


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_new_video_is_the_only_one_processed_and_is_appended(tmp_path, tiny_model, folder, suffix):
    videos = tmp_path / "videos"
    make_video(videos, "a.mp4", 1.2, 25, (96, 64))
    store = tmp_path / f"s{suffix}"
    vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    before = plain_rows(store)
    make_video(videos, "later/c.mp4", 0.6, 25, (96, 64), source="smptebars")
    summary = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (summary.videos_ok, summary.videos_skipped, summary.frames) == (1, 1, 2)
    after = plain_rows(store)
    assert after["ids"] == ["a.mp4", "later/c.mp4"]
    # Old rows untouched, bit for bit.
    assert np.array_equal(after["videos"]["a.mp4"]["features"], before["videos"]["a.mp4"]["features"])
    assert np.array_equal(after["videos"]["a.mp4"]["timestamps_ms"], before["videos"]["a.mp4"]["timestamps_ms"])
    np.testing.assert_allclose(after["videos"]["later/c.mp4"]["timestamps_ms"], [0.0, 480.0], atol=1e-6)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("change, key", [
    ({"fps": 1.0}, "sampling"),
    ({"num_frames": 4, "fps": None}, "sampling"),
    ({"weights": "archive"}, "model"),  # another checkpoint (its sha256 differs)
    ({"weights": "none"}, "model"),
    ({"dtype": "float32"}, "dtype"),
])
def test_other_settings_are_refused_and_the_store_is_untouched(tmp_path, tiny_model, folder, suffix, change, key):
    store = tmp_path / f"s{suffix}"
    vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    before = tree_digest(store)
    options = {"fps": 2.0, "dtype": "float16", **{k: v for k, v in change.items() if k != "weights"}}
    weights = change.get("weights")
    model_kwargs = tiny_model.extract_kwargs(getattr(tiny_model, weights, weights) if weights else None)
    with pytest.raises(StoreError, match=f"^{store}: store was written with {key}=.*; this run uses .*\\. Write to a new --out path"):
        vfeat.extract([str(folder)], str(store), workers=0, **options, **model_kwargs)
    assert tree_digest(store) == before


def test_the_same_weights_by_another_path_resume_and_paths_are_recorded_absolute(tmp_path, tiny_model, folder, monkeypatch):
    """Weights are the same model by their sha256, whatever path names them: a relative path, then a symlink
    from another folder, resume the store (another file is still refused, above). The store records the
    absolute path, so evaluation finds the weights from any folder."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    Path(work / "w.pt").write_bytes(Path(tiny_model.state_dict).read_bytes())
    (elsewhere / "link.pt").symlink_to(work / "w.pt")
    (work / "tiny.json").write_text(Path(tiny_model.config).read_text())
    store = tmp_path / "s.zarr"
    args = ["extract", "--out", str(store), "--workers", "0", "--no-progress", "--fps", "2", "--model", tiny_model.name]
    monkeypatch.chdir(work)
    first = runner.invoke(app, [*args, str(folder / "a.mp4"), "--pretrained", "w.pt", "--model-config", "tiny.json"])
    assert first.exit_code == 0, first.output
    with vfeat.open_store(str(store)) as opened:
        model = opened.attrs["model"]
    assert model["pretrained"] == str(work / "w.pt") and model["options"]["model_config"] == str(work / "tiny.json")
    monkeypatch.chdir(elsewhere)
    second = runner.invoke(app, [*args, str(folder / "sub" / "b.mp4"), "--pretrained", "link.pt", "--model-config",
                                 str(work / "tiny.json")])
    assert second.exit_code == 0, second.output
    assert plain_rows(store)["ids"] == ["a.mp4", "b.mp4"]
    found = runner.invoke(app, ["search", "--features", str(store), "a test pattern", "--top", "1"])
    assert found.exit_code == 0, found.output


def test_other_sampling_through_the_cli_exits_2(tmp_path, tiny_model, folder):
    store = tmp_path / "s.zarr"
    args = ["extract", str(folder), "--out", str(store), "--workers", "0", "--no-progress", *tiny_model.cli_args()]
    assert runner.invoke(app, [*args, "--fps", "2"]).exit_code == 0
    before = tree_digest(store)
    result = runner.invoke(app, [*args, "--fps", "1"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"vfeat: error: {store}: store was written with sampling={{'mode': 'fps', 'fps': 2.0}}; this run uses " \
           f"{{'mode': 'fps', 'fps': 1.0}}." in text
    assert "Traceback" not in result.output
    assert tree_digest(store) == before


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_failed_video_is_retried_and_its_record_cleared(tmp_path, tiny_model, suffix):
    videos = tmp_path / "videos"
    good = make_video(videos, "good.mp4", 0.6, 25, (96, 64))
    broken = videos / "later.mp4"
    broken.write_text("not yet a video")
    store = tmp_path / f"s{suffix}"
    first = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (first.videos_ok, first.videos_failed) == (1, 1)
    second = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (second.videos_ok, second.videos_failed, second.videos_skipped) == (0, 1, 1)
    assert plain_rows(store)["failures"] == ["later.mp4"]  # one record, not two
    broken.write_bytes(good.read_bytes())
    third = vfeat.extract([str(videos)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert (third.videos_ok, third.videos_failed) == (1, 0)
    rows = plain_rows(store)
    assert rows["ids"] == ["good.mp4", "later.mp4"] and rows["failures"] == []
    with vfeat.open_store(str(store)) as opened:
        assert opened.failures() == []


# -- kill -9 ---------------------------------------------------------------------------------------------------

RUNNER = r"""
import json, os, sys, traceback
import torch, open_clip  # the slow imports, once
import vfeat.cli, vfeat.extractor, vfeat.pipeline, vfeat.models.clip  # noqa: F401
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setpgid(0, 0)
            os.environ.clear()
            os.environ.update(request["env"])
            out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.argv = ["vfeat", *request["args"]]
            try:
                vfeat.cli.app()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""


class Runner:
    """Starts ``vfeat extract`` runs as forked processes and reports their pid and exit status."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=workdir)
        self.ready = False  # its imports overlap with whatever the test does first
        self.count = 0

    def start(self, args: list[str], env: dict[str, str]) -> int:
        if not self.ready:
            assert json.loads(self.proc.stdout.readline()) == {"ready": True}
            self.ready = True
        self.count += 1
        self.log = self.workdir / f"run-{self.count}.log"
        request = {"args": args, "env": env, "log": str(self.log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> int:
        """Exit status of the last run: its exit code, or -signal when killed."""
        status = json.loads(self.proc.stdout.readline())["status"]
        return os.waitstatus_to_exitcode(status)

    def run(self, args: list[str], env: dict[str, str]) -> int:
        self.start(args, env)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner_process(tmp_path_factory):
    process = Runner(tmp_path_factory.mktemp("runner"))
    yield process
    process.close()


@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill") / "videos"
    sources = ["testsrc2", "smptebars", "testsrc", "rgbtestsrc"]
    for i in range(8):
        make_video(folder, f"v{i}.mp4", 2.0 + 0.2 * i, 25, (160, 120), source=sources[i % 4])
    return folder


def wait_for(condition, timeout: float = 15.0, poll: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return False


def journal_parts(store: Path) -> set[str]:
    folder = Path(f"{store}.journal")
    try:
        return {n for n in os.listdir(folder) if n.startswith("part-") and n.endswith(".pkl")}
    except FileNotFoundError:
        return set()


def committed(store: Path) -> int:
    """Videos committed in a shard, read as any reader would (0 while it does not exist)."""
    if not store.exists():
        return 0
    try:
        return len(plain_rows(store)["ids"])
    except (OSError, KeyError, ValueError):  # an HDF5 file being replaced; a Zarr array being created
        return 0


def new_parts_or_commits(store: Path, count: int):
    """An event of *this* run: ``count`` journal parts it wrote, or (Zarr, which merges each part at once)
    ``count`` more committed videos."""
    parts_before, committed_before = journal_parts(store), committed(store)

    def happened() -> bool:
        if len(journal_parts(store) - parts_before) >= count:
            return True
        return store.suffix == ".zarr" and committed(store) >= committed_before + count

    return happened


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_kill_9_at_any_moment_then_rerun_equals_uninterrupted(tmp_path, runner_process, tiny_model, kill_corpus, suffix):
    seed = 20261125 + len(suffix)
    rng = random.Random(seed)
    plain_env = {k: v for k, v in os.environ.items() if k != "VFEAT_FLUSH_VIDEOS"}
    every_video = {**plain_env, "VFEAT_FLUSH_VIDEOS": "1"}  # a journal part (and for Zarr a merge) per video
    args = ["extract", str(kill_corpus), "--fps", "10", "--workers", "1", "--no-progress", *tiny_model.cli_args()]

    reference = tmp_path / f"reference{suffix}"
    assert runner_process.run([*args, "--out", str(reference)], plain_env) == 0, runner_process.log.read_text()
    want = plain_rows(reference)
    assert len(want["ids"]) == 8

    # Two sequences of kills, each on a fresh store and each followed by one complete run. A moment is
    # (label, environment, event of the run to wait for, extra random delay).
    sequences = [
        [("right after its first journal part", every_video, lambda s: new_parts_or_commits(s, 1), 0.0),
         ("a random delay after its first journal part", every_video, lambda s: new_parts_or_commits(s, 1), rng.uniform(0, 0.05)),
         ("a random delay after two of its commits", every_video, lambda s: new_parts_or_commits(s, 2), rng.uniform(0, 0.05))],
        [("default flushing: as the journal appears (the one flush at close, then the merge)", plain_env,
          lambda s: (lambda: Path(f"{s}.journal").exists()), rng.uniform(0, 0.01)),
         ("a random delay after start", every_video, lambda s: (lambda: True), rng.uniform(0.2, 1.0))],
    ]
    log = [f"seed {seed}"]
    for number, moments in enumerate(sequences):
        store = tmp_path / f"killed{number}{suffix}"
        for label, env, event, delay in moments:
            happened = event(store)
            pid = runner_process.start([*args, "--out", str(store)], env)
            seen = wait_for(happened)
            time.sleep(delay)
            try:
                os.killpg(pid, signal.SIGKILL)  # the run and its decode worker
            except ProcessLookupError:
                pass
            status = runner_process.wait()
            log.append(f"[{number}] {label}: event seen={seen}, delay={delay:.3f}s, status={status}, "
                       f"committed={committed(store)}")
            assert seen, "\n".join(log)
            if store.exists():  # whatever a reader sees after a crash is a clean part of the reference
                with vfeat.open_store(str(store)) as opened:
                    assert len(opened.ids) == len(set(opened.ids)), "\n".join(log)
                    for vid in opened.ids:
                        features, stamps = opened[vid]
                        np.testing.assert_array_equal(stamps, want["videos"][vid]["timestamps_ms"], err_msg="\n".join(log))
                        np.testing.assert_allclose(features.astype(np.float32),
                                                   want["videos"][vid]["features"].astype(np.float32),
                                                   rtol=0, atol=2e-3, err_msg="\n".join(log))
        status = runner_process.run([*args, "--out", str(store)], every_video)
        assert status == 0, runner_process.log.read_text() + "\n".join(log)
        assert_same_store(plain_rows(store), want, "\n".join(log))
        assert journal_parts(store) == set(), "\n".join(log)  # every part merged and deleted
        again = runner_process.run([*args, "--out", str(store)], plain_env)
        assert again == 0 and "0 stored, 0 failed, 8 already in the store" in " ".join(runner_process.log.read_text().split())
    killed_mid_run = [line for line in log if "status=-9" in line and "committed=8" not in line]
    assert len(killed_mid_run) >= 3, "\n".join(log)  # the kills really interrupted work
    print("\n".join(log))


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_leftovers_of_a_killed_run_are_cleaned_by_the_next_run(tmp_path, tiny_model, folder, suffix):
    store = tmp_path / f"s{suffix}"
    vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    # What SIGKILL leaves when it lands inside those two writes (names as the code makes them).
    journal = Path(f"{store}.journal")
    journal.mkdir()
    half_part = journal / "part-01795636541741164954-d8e5c22c.pkl.2c909955c51b42789c8c645284677289.tmp"
    half_part.write_bytes(b"\x80\x05 half a pickle")
    leftovers = [half_part]
    if suffix == ".h5":
        copy = tmp_path / f"{store.name}.5d41402abc4b2a76b9719d911017c592.tmp"
        copy.write_bytes(store.read_bytes()[:1000])
        leftovers.append(copy)
    summary = vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, **tiny_model.extract_kwargs())
    assert summary.videos_skipped == 2
    assert [p for p in leftovers if p.exists()] == []
    assert not journal.exists()


@pytest.fixture(scope="module")
def interrupt_corpus(tmp_path_factory) -> Path:
    """Enough work that a run is still busy seconds after it starts (the tiny model takes ~1,600 frames/s
    here): 20 clips of 4 s at every frame, each under 8 names (symbolic links), 16,000 frames."""
    root = tmp_path_factory.mktemp("interrupt")
    for i in range(20):
        make_video(root / "clips", f"v{i:02d}.mp4", 4.0, 25, (160, 120), source=["testsrc2", "smptebars"][i % 2])
    folder = root / "videos"
    for copy in range(8):
        (folder / f"copy{copy}").mkdir(parents=True)
        for clip in sorted((root / "clips").glob("*.mp4")):
            (folder / f"copy{copy}" / clip.name).symlink_to(clip)
    return folder


def test_decode_processes_of_a_killed_run_end_quietly(tmp_path, tiny_model, interrupt_corpus):
    """``kill -9`` of the run alone (not its process group) orphans its decode processes: they see the
    connection end and exit, without a traceback on the user's terminal."""
    store = tmp_path / "orphans.zarr"
    stderr_path = tmp_path / "stderr.txt"
    code = "import sys; from vfeat.cli import main; sys.argv[0] = 'vfeat'; main()"
    args = ["extract", str(interrupt_corpus), "--fps", "25", "--workers", "2", "--batch-size", "1", "--no-progress",
            "--out", str(store), *tiny_model.cli_args()]
    with open(stderr_path, "w") as stderr:
        run = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=stderr,
                               start_new_session=True)
    try:
        def children() -> list[int]:  # started by any thread of the run
            found = []
            for task in Path(f"/proc/{run.pid}/task").glob("*"):
                try:
                    found += [int(pid) for pid in (task / "children").read_text().split()]
                except FileNotFoundError:
                    pass
            return found

        assert wait_for(lambda: len(children()) >= 2 and store.exists(), timeout=120), stderr_path.read_text()
        orphans = children()
        assert run.poll() is None
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)

        def all_gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in orphans)

        assert wait_for(all_gone, timeout=60, poll=0.1), "decode processes outlived the run"
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert committed(store) < 160  # the kill interrupted work
    assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def _signal_a_run(store: Path, args: list[str], send: Callable[[subprocess.Popen], None], after_s: float,
                  env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start `vfeat ARGS` in its own process group, signal it ``after_s`` into its work (once the store exists),
    and return its exit status and stderr, once no process of its group is left."""
    code = "import sys; from vfeat.cli import main; sys.argv[0] = 'vfeat'; main()"
    run = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=env)
    try:
        assert wait_for(lambda: store.exists(), timeout=120)
        time.sleep(after_s)
        assert run.poll() is None
        send(run)
        _, stderr = run.communicate(timeout=60)
        assert wait_for(lambda: subprocess.run(["pgrep", "-g", str(run.pid)], capture_output=True).returncode == 1,
                        timeout=30, poll=0.1), "processes left after the signal"
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return run.returncode, stderr


def _the_one_line_and_the_rerun(stderr: str, how: str, store: Path, args: list[str]) -> tuple[int, int, int]:
    """The run's one line (how far it got), then the same command again: (finished, stored now, kept)."""
    lines = stderr.strip().splitlines()
    line = len(lines) == 1 and re.fullmatch(rf"vfeat: {how} after (\d+) of 160 videos; (what was written is kept in "
                                            + re.escape(str(store)) + ": )?run the same command again to resume.", lines[0])
    assert line and bool(line[2]) == (int(line[1]) > 0), stderr  # "kept" only where something was
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    done = re.search(r"(\d+) stored, 0 failed, (\d+) already in the store", rerun.output)
    assert done and int(done[1]) + int(done[2]) == 160, rerun.output
    return int(re.search(r"after (\d+) of", lines[0])[1]), int(done[1]), int(done[2])


def _interrupt_args(corpus: Path, store: Path, tiny_model) -> list[str]:
    return ["extract", str(corpus), "--fps", "25", "--workers", "2", "--batch-size", "1", "--no-progress",
            "--out", str(store), *tiny_model.cli_args()]


def test_sigterm_writes_what_was_finished_and_the_rerun_resumes(tmp_path, tiny_model, interrupt_corpus):
    """SIGTERM to the run alone (a scheduler ending the job, `kill PID`): the videos finished since the last
    journal part (written every 32 videos or 20 s) are written, not lost as Python's default death would
    lose them; one line, exit 143, no decode process left; the rerun stores only the rest."""
    store = tmp_path / "terminated.zarr"
    args = _interrupt_args(interrupt_corpus, store, tiny_model)
    env = {**os.environ, "VFEAT_FLUSH_VIDEOS": "1000"}  # no journal part before the signal: what is kept, it wrote
    # ~3 s into ~10 s of work (~16 videos a second on an idle machine)
    status, stderr = _signal_a_run(store, args, lambda run: run.send_signal(signal.SIGTERM), 3.0, env)
    assert status == 143, stderr
    finished, _, kept = _the_one_line_and_the_rerun(stderr, "terminated", store, args)
    assert 1 <= finished <= kept < 160  # every video it had finished was kept


def test_ctrl_c_says_what_is_kept_once_and_the_rerun_resumes(tmp_path, tiny_model, interrupt_corpus):
    """Ctrl-C in a terminal signals the whole process group: one line says how far the run got and how to
    resume (no traceback from any decode process), exit 130, no process left; the same command then stores
    the rest, and only the rest."""
    store = tmp_path / "interrupted.zarr"
    args = _interrupt_args(interrupt_corpus, store, tiny_model)
    status, stderr = _signal_a_run(store, args, lambda run: os.killpg(run.pid, signal.SIGINT), 1.0)
    assert status == 130, stderr
    finished, stored, kept = _the_one_line_and_the_rerun(stderr, "interrupted", store, args)
    assert stored >= 1 and finished <= kept  # what the line said was done is kept


def test_a_video_kept_by_an_interrupted_commit_is_counted(tmp_path, tiny_model, folder, monkeypatch):
    """An interrupt while a commit writes its journal part keeps that video (the rerun skips it), but the run
    had not counted it: the interrupted run's line said fewer videos than it kept ("after 0 of 2")."""
    from vfeat.store.writer import ShardWriter

    flush = ShardWriter._maybe_flush
    calls = []

    def interrupted_once(self):
        calls.append(1)
        flush(self)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "_maybe_flush", interrupted_once)
    counted = []
    store = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        vfeat.extract([str(folder)], str(store), fps=2.0, workers=0, on_progress=lambda stats, frames: counted.append(frames),
                      **tiny_model.extract_kwargs())
    with vfeat.open_store(str(store)) as opened:
        kept = opened.ids
    assert len(counted) == len(kept) == 1
