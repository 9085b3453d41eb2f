"""--devices: one model process per device, each writing its own shard; tested on the CPU with two
device processes (the same code path as cuda:0,cuda:1)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
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
    single = runner.invoke(app, [*args, "--out", str(tmp_path / "one.zarr"), "--workers", "0", "--json", str(tmp_path / "one.json")])
    assert single.exit_code == 0, single.output
    multi = runner.invoke(app, [*args, "--out", str(tmp_path / "multi"), "--devices", "cpu,cpu", "--workers", "0",
                                "--json", str(tmp_path / "multi.json")])
    assert multi.exit_code == 0, multi.output
    # 1.0 + 1.4 + ... + 2.6 s of video, whichever process stored which video
    for summary in ("one.json", "multi.json"):
        assert json.loads((tmp_path / summary).read_text())["video_seconds"] == pytest.approx(9.0, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["shard-00000.zarr", "shard-00001.zarr"]
    with vfeat.open_store(str(tmp_path / "one.zarr")) as one, vfeat.open_store(str(tmp_path / "multi")) as many:
        assert sorted(one.ids) == sorted(many.ids)
        for vid in one.ids:
            np.testing.assert_array_equal(one[vid][1], many[vid][1])
            np.testing.assert_allclose(one[vid][0].astype(np.float32), many[vid][0].astype(np.float32), atol=1e-3)
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "multi"), "--devices", "cpu,cpu"])
    assert again.exit_code == 0 and "0 stored" in again.output and "5 already in the store" in again.output


def test_device_processes_report_progress_after_each_video(tmp_path, repo_root, capsys):
    """A multi-GPU run is the longest kind: the parent hears of every video any device process finishes and
    passes the totals over all of them to ``on_progress`` (before, the bar stood at 0 until the end). What a
    device process prints (a failed video's line) comes out of the parent's stderr, where the CLI's progress
    bar puts it above the bar (before, it went straight to the terminal, into the middle of the bar)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        make_video(folder, f"v{i}.mp4", duration=1.0 + 0.5 * i, fps=10)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    calls = []
    summary = vfeat.extract([str(folder)], str(tmp_path / "store"), model="vfeat-tiny-vit", pretrained="none",
                            model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"), fps=2, workers=0,
                            devices="cpu,cpu", on_progress=lambda stats, frames: calls.append((copy.copy(stats), frames)))
    assert summary.videos_ok == 4 and summary.videos_failed == 1
    assert len(calls) == 5  # one call per finished video, failures included
    done = [stats.videos_ok + stats.videos_failed for stats, _ in calls]
    assert done == [1, 2, 3, 4, 5]  # totals over both processes, growing by one video a call
    last = calls[-1][0]
    assert (last.videos_ok, last.videos_failed, last.frames) == (4, 1, summary.frames)
    assert sum(frames for _, frames in calls) == summary.frames  # each call's new frames add up to the store's
    assert last.video_seconds == pytest.approx(1.0 + 1.5 + 2.0 + 2.5, abs=1e-6)
    # where the time went: the slowest device process's own timings (there were none before)
    assert set(summary.timings) == {"model_load_s", "warm_up_s", "decode_wait_s", "model_s", "store_close_s"}
    assert 0 < summary.timings["model_s"] <= summary.seconds
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vfeat: failed")]
    assert len(failed) == 1 and "broken.mp4" in failed[0] and "not a video file" in failed[0]


def test_devices_need_a_directory_store(tmp_path, repo_root):
    make_video(tmp_path, "a.mp4", duration=1.0, fps=10)
    with pytest.raises(InputError, match="--out must be a directory"):
        vfeat.extract([str(tmp_path / "a.mp4")], str(tmp_path / "s.zarr"), model="vfeat-tiny-vit", pretrained="none",
                      model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"), fps=1, devices="cpu,cpu")


def _half_created_shard(path, empty_offsets=False):
    """The states a sibling process's shard goes through while it is being created: arrays and no offsets,
    then attributes and an ``offsets`` array that is still empty (its first entry comes next)."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("features", shape=(0, 8), chunks=(4096, 8), dtype="float16")
    group.create_group("videos")
    if empty_offsets:
        group.attrs.update({"format": "vfeat-store", "embed_dim": 8})
        group.create_array("offsets", shape=(0,), chunks=(4096,), dtype="int64")


@pytest.mark.parametrize("empty_offsets", [False, True], ids=["no-offsets", "empty-offsets"])
def test_shard_being_created_by_another_process_is_skipped_then_recreated(tmp_path, repo_root, empty_offsets):
    """The race behind a flaky CI run: rank 0 listed rank 1's shard before its ``offsets`` existed and died
    with KeyError. A shard without ``offsets`` holds nothing committed: readers skip it, resume ignores it,
    and the writer whose shard it is creates it anew (a kill during creation leaves the same state)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(2):
        make_video(folder, f"v{i}.mp4", duration=1.0, fps=10)
    out = tmp_path / "store"
    out.mkdir()
    _half_created_shard(out / "shard-00001.zarr", empty_offsets)
    args = ["extract", str(folder), "--fps", "2", "--no-progress", "--workers", "0", *_tiny(repo_root), "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["v0.mp4", "v1.mp4"] and len(store.shards) == 1
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0, info.output
    # The half-made shard is rank 1's: a two-device run recreates it and finds both videos already done.
    _half_created_shard(out / "shard-00000.zarr.tmp-ignored", empty_offsets)  # not a shard name: ignored by everyone
    make_video(folder, "v2.mp4", duration=1.0, fps=10)
    make_video(folder, "v3.mp4", duration=1.0, fps=10)
    second = runner.invoke(app, [*args, "--devices", "cpu,cpu"])
    assert second.exit_code == 0, second.output
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]
        assert len(store.shards) == 2


def test_a_shard_recreated_while_another_process_reads_it_holds_nothing_committed(tmp_path, monkeypatch):
    """The interleaving behind CI stop 15: rank 0 saw rank 1's half-made shard's empty ``offsets``, and rank 1
    removed it (creating its shard anew) before rank 0 read its length: KeyError, and the run died. An
    ``offsets`` that vanishes between two looks is a shard still being created: nothing in it is done."""
    import shutil

    from vfeat.shards import committed_elsewhere
    from vfeat.store.backends import ZarrTree

    out = tmp_path / "store"
    out.mkdir()
    sibling = out / "shard-00001.zarr"
    _half_created_shard(sibling, empty_offsets=True)
    seen = ZarrTree.has
    removed = []

    def has_then_removed(tree, name):
        answer = seen(tree, name)
        if name == "offsets" and answer and not removed:
            shutil.rmtree(sibling / "offsets")  # the sibling starts its shard anew right after our look
            removed.append(name)
        return answer

    monkeypatch.setattr(ZarrTree, "has", has_then_removed)
    assert committed_elsewhere(str(out), str(out / "shard-00000.zarr"), {"format": "vfeat-store"}) == set()
    assert removed == ["offsets"]


def test_a_shard_folder_without_metadata_yet_is_read_once_its_creator_has_written_it(tmp_path, monkeypatch, repo_root):
    """A sibling's shard is, for a moment, a folder without its group metadata (its process is creating it):
    the reader looks again, instead of failing the run; a folder that never becomes a shard is an error."""
    import vfeat.shards as shards

    make_video(tmp_path, "a.mp4", duration=1.0, fps=10)
    done = tmp_path / "done"
    vfeat.extract([str(tmp_path / "a.mp4")], str(done), model="vfeat-tiny-vit", pretrained="none",
                  model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"), fps=1, workers=0)
    out = tmp_path / "store"
    (out / "shard-00001.zarr").mkdir(parents=True)
    pauses = []

    def creator_finishes(seconds):
        pauses.append(seconds)
        if len(pauses) == 2:
            (out / "shard-00001.zarr").rmdir()
            shutil.copytree(done / "shard-00000.zarr", out / "shard-00001.zarr")

    monkeypatch.setattr(shards.time, "sleep", creator_finishes)
    assert shards.committed_elsewhere(str(out), str(out / "shard-00000.zarr")) == {"a.mp4"}
    assert len(pauses) == 2
    (out / "shard-00002.zarr").mkdir()
    with pytest.raises(vfeat.StoreError, match=r"shard-00002\.zarr: not a readable Zarr store"):
        shards.committed_elsewhere(str(out), str(out / "shard-00000.zarr"))


def test_foreign_zarr_without_offsets_is_not_overwritten(tmp_path, repo_root):
    import zarr

    make_video(tmp_path, "a.mp4", duration=1.0, fps=10)
    group = zarr.open_group(str(tmp_path / "mine.zarr"), mode="w")
    group.create_array("my_data", shape=(3,), dtype="int32")
    result = runner.invoke(app, ["extract", str(tmp_path / "a.mp4"), "--fps", "1", "--no-progress", *_tiny(repo_root),
                                 "--out", str(tmp_path / "mine.zarr")])
    assert result.exit_code == 2 and "exists but is not a vfeat store" in result.output
    assert "my_data" in zarr.open_group(str(tmp_path / "mine.zarr"), mode="r")


def test_device_shards_join_an_existing_manifest(tmp_path, repo_root):
    """In a directory with a manifest (a Ray run was there), readers see listed shards only: the parent lists
    each device's new shard as it is opened, before any video is committed in it."""
    import json

    folder = tmp_path / "videos"
    for i in range(3):
        make_video(folder, f"v{i}.mp4", duration=1.0, fps=10)
    out = tmp_path / "store"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"shards": []}))
    result = runner.invoke(app, ["extract", str(folder), "--fps", "2", "--no-progress", "--workers", "0", *_tiny(repo_root),
                                 "--out", str(out), "--devices", "cpu,cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["shards"] == ["shard-00000.zarr", "shard-00001.zarr"]
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_journal_of_a_killed_device_run_is_merged_before_resuming(tmp_path, repo_root):
    """A killed HDF5 run of device 1 left a video in its journal only (HDF5 shards merge on close). The next
    run, on one device, merges that journal first: the video is skipped, not stored a second time."""
    from vfeat.store.format import VideoRecord
    from vfeat.store.writer import ShardWriter

    folder = tmp_path / "videos"
    for i in range(2):
        make_video(folder, f"v{i}.mp4", duration=1.0, fps=10)
    kwargs = dict(model="vfeat-tiny-vit", pretrained="none", model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"),
                  fps=2, workers=0, store_format="h5")
    vfeat.extract([str(folder / "v0.mp4")], str(tmp_path / "ref.h5"), **kwargs)
    with vfeat.open_store(str(tmp_path / "ref.h5")) as ref:
        table, attrs = ref.videos(), ref.attrs
        info = {k: table[k][0].item() for k in ("fps", "duration_s", "width", "height", "num_frames", "start_time_s", "rotation")}
        record = VideoRecord("v0.mp4", str(table["path"][0]), info, *ref["v0.mp4"])
    out = tmp_path / "store"
    killed = ShardWriter(str(out / "shard-00001.h5"), attrs)
    killed.add(record)
    killed.flush()  # a journal part; the kill comes before the merge at close

    summary = vfeat.extract([str(folder / "v0.mp4"), str(folder / "v1.mp4")], str(out), **kwargs)
    assert (summary.videos_skipped, summary.videos_ok) == (1, 1)
    assert not (out / "shard-00001.h5.journal").exists()
    with vfeat.open_store(str(out / "shard-00000.h5")) as mine, vfeat.open_store(str(out / "shard-00001.h5")) as killed_shard:
        assert (mine.ids, killed_shard.ids) == (["v1.mp4"], ["v0.mp4"])


def _spawned_children(pid: int) -> list[int]:
    from pathlib import Path

    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                kids.append(int(child))
    return kids


def test_a_killed_device_process_is_reported_not_waited_for(tmp_path, repo_root):
    """kill -9 of one device process (as the OOM killer would): the run ends with one line naming the
    device, and the same command again finishes the store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        make_video(folder, f"v{i}.mp4", duration=1.0, fps=10)
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "vfeat.cli", "extract", str(folder), "--fps", "2", "--no-progress", "--workers", "0",
           *_tiny(repo_root), "--out", str(out), "--devices", "cpu,cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while len(kids := _spawned_children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert len(kids) >= 2, "device processes never started"
    os.kill(kids[-1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)  # before the fix: waits forever
    assert proc.returncode != 0, output
    assert "its process died (exit code -9)" in output, output
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == [f"v{i}.mp4" for i in range(4)]


def test_a_device_process_dying_halfway_through_a_message_is_reported_not_waited_for(tmp_path, repo_root, monkeypatch):
    """A device process killed while it writes to the parent (the out-of-memory killer's likeliest target is
    a model process) leaves half a message. The parent reads it as that process's end: the run ends with
    the line naming the device, the other device's videos are stored, and the same command again finishes
    the store. Through one queue shared by the device processes this run hung on the half message."""
    import process_faults
    from conftest import hang_guard
    from vfeat.engines import multidevice
    from vfeat.errors import VfeatError

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        make_video(folder, f"v{i}.mp4", duration=1.0, fps=10)
    out = tmp_path / "store"
    kwargs = dict(model="vfeat-tiny-vit", pretrained="none", model_config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"),
                  fps=2, workers=0, devices="cpu,cpu")
    monkeypatch.setenv("VFEAT_TEST_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(multidevice, "_device_main", process_faults.dies_halfway_through_its_first_progress_message)
    with hang_guard(180), pytest.raises(VfeatError, match=r"its process died \(exit code 3\)") as failed:
        vfeat.extract([str(folder)], str(out), **kwargs)
    assert str(failed.value).count("its process died") == 1
    with vfeat.open_store(str(out)) as store:
        assert len(store.ids) >= 2  # the other device's two videos
    monkeypatch.undo()
    summary = vfeat.extract([str(folder)], str(out), **kwargs)
    assert summary.videos_failed == 0
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == [f"v{i}.mp4" for i in range(4)]


@pytest.mark.parametrize(("cores", "device", "processes", "expected"), [
    (16, "cuda:0", 1, 15),  # a GPU box is decode-bound: every core but the model process's decodes
    (16, "cuda:0", 2, 7),   # two GPUs share the cores; nothing is oversubscribed
    (16, "cpu", 1, 8),      # the model needs the cores itself on the CPU
    (2, "cpu", 1, 1),
    (2, "cpu", 2, 1),
    (1, "cuda", 4, 1),
])
def test_default_decode_workers_follow_where_the_model_runs(monkeypatch, cores, device, processes, expected):
    from vfeat import decode_processes

    monkeypatch.setattr(decode_processes.os, "cpu_count", lambda: cores)
    assert decode_processes.default_workers(device, processes) == expected


@pytest.mark.parametrize("stored", ["all", "some"])
def test_devices_refuse_a_store_written_with_other_settings(tmp_path, repo_root, stored):
    """Whether every video is stored already or only some, a run with another sampling is refused before
    anything is reported as done, and the store is left as it was."""
    folder = tmp_path / "videos"
    folder.mkdir()
    paths = [make_video(folder, f"v{i}.mp4", duration=1.0, fps=10) for i in range(3)]
    out = tmp_path / "multi"
    first = [str(p) for p in (paths if stored == "all" else paths[:1])]
    done = runner.invoke(app, ["extract", *first, "--fps", "2", "--no-progress", *_tiny(repo_root), "--out", str(out),
                               "--devices", "cpu,cpu", "--workers", "0"])
    assert done.exit_code == 0, done.output
    shards = sorted(p.name for p in out.iterdir())
    again = runner.invoke(app, ["extract", str(folder), "--fps", "1", "--no-progress", *_tiny(repo_root), "--out", str(out),
                                "--devices", "cpu,cpu", "--workers", "0"])
    assert again.exit_code == 2, again.output
    assert "store was written with sampling=" in again.output and "already in the store" not in again.output
    assert sorted(p.name for p in out.iterdir()) == shards
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == sorted(p.name for p in map(Path, first)) and store.attrs["sampling"]["fps"] == 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_devices_without_the_gpus_are_refused_before_any_process_starts(tmp_path, repo_root):
    """One line naming --devices and the first missing device, exit 2, no store; before, two device processes
    started and each reported its own '--device cuda:N' failure, joined into one line."""
    make_video(tmp_path, "a.mp4", duration=1.0, fps=10)
    result = runner.invoke(app, ["extract", str(tmp_path / "a.mp4"), "--fps", "1", "--no-progress", *_tiny(repo_root),
                                 "--out", str(tmp_path / "store"), "--devices", "cuda:0,cuda:1"])
    assert result.exit_code == 2
    assert result.output.strip() == "vfeat: error: --devices cuda:0: no CUDA GPU is available on this machine."
    assert not (tmp_path / "store").exists()


def test_a_gpu_number_the_machine_does_not_have_is_refused(monkeypatch):
    """cuda:N past the last GPU fails early with the GPUs there are (torch would fail later, deep in the first
    tensor moved there). Two GPUs are simulated; nothing is moved to them."""
    from vfeat.extractor import parse_devices
    from vfeat.models.factory import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(InputError, match=r"^--device cuda:2: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1\.$"):
        resolve_device("cuda:2")
    with pytest.raises(InputError, match=r"^--devices cuda:7: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1\.$"):
        parse_devices("cuda:0,cuda:7")
    with pytest.raises(InputError, match=r"^Invalid --devices \(gpu0\)\. Use auto, cpu, cuda or cuda:N\.$"):
        parse_devices("cuda:0,gpu0")
