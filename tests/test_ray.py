"""``--engine ray`` on a real Ray cluster (``ray start --head``, started here and stopped after), writing to a
real S3 API (moto's server on loopback), and surviving ``kill -9`` of a model actor's worker process.

The local engine is the oracle: a Ray store must hold the same videos, timestamps and (allclose) features.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import vfeat
from vfeat.cli import app

FPS = 4
VIDEOS = {f"v{i:02d}.mp4": 1.0 + 0.25 * (i % 4) for i in range(10)} | {"sub/deep.mp4": 1.5}
TINY = ["--model", "vfeat-tiny-vit", "--model-config", str(Path(__file__).parent / "data" / "vfeat-tiny-vit.json"),
        "--pretrained", "none"]
TINY_KW = {"model": TINY[1], "model_config": TINY[3], "pretrained": "none", "device": "cpu"}
ACTOR_TITLE = "MapBatches(EncodeVideos)"  # in the proctitle of the model actors' worker processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head --block`` in its own process group, stopped after; stopping it ends only this
    cluster (``ray stop`` would stop every Ray cluster on the machine, other test runs' included). Token
    authentication is off on both sides: the cluster is reachable from this machine only."""
    temp = tempfile.mkdtemp(prefix="vfeat-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_DISABLE_USAGE_STATS", "1")
        env.setenv("RAY_AUTH_MODE", "disabled")
        env.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # stop at once, not after 30 s of draining
        cmd = ["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--include-dashboard=false",
               "--disable-usage-stats", "--temp-dir", temp, "--object-store-memory", "200000000",
               "--dashboard-agent-listen-port", str(_free_port())]
        log_path = Path(temp) / "ray-start.log"
        with open(log_path, "w") as log:
            head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                _stop(head)
                pytest.fail(f"ray start failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
        _stop(head)
    shutil.rmtree(temp, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    head.terminate()  # `ray start --block` stops its cluster on SIGTERM
    try:
        head.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from conftest import make_video

    root = tmp_path_factory.mktemp("ray-videos")
    for name, duration in VIDEOS.items():
        make_video(root, name, duration=duration)
    (root / "broken.mp4").write_bytes(b"not a video")
    (root / "good.txt").write_text("".join(f"{name}\n" for name in VIDEOS))  # ids as the directory walk gives them
    return root


@pytest.fixture(scope="module")
def local_store(videos, tmp_path_factory):
    """The oracle: the local engine's store of the same videos."""
    out = tmp_path_factory.mktemp("local") / "feats.zarr"
    vfeat.extract([str(videos)], str(out), fps=FPS, workers=0, **TINY_KW)
    return out


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on loopback; credentials and endpoint through the usual environment variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("bucket")
    yield env
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def extract_cli(*args: str) -> subprocess.Popen:
    """``vfeat extract ARGS`` as its own process (the driver), output captured."""
    cmd = [sys.executable, "-m", "vfeat.cli", "extract", *args, "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed_ids(root: str) -> list[str]:
    """Every committed video id of every shard the manifest lists, duplicates kept (the store API dedupes)."""
    from vfeat.store import fs

    manifest = json.loads(fs.read_text(fs.join(root, "manifest.json")))
    ids = []
    for name in manifest["shards"]:
        group = zarr.open_group(fs.join(root, name), mode="r")
        ids.extend(str(v) for v in group["videos/id"][: group["offsets"].shape[0] - 1])
    return ids


def assert_same_store(actual: str, expected: Path, failures: bool = True) -> None:
    with vfeat.open_store(actual) as got, vfeat.open_store(str(expected)) as want:
        assert sorted(got.ids) == sorted(want.ids) == sorted(VIDEOS)
        for video_id in want.ids:
            features, stamps = got[video_id]
            ref_features, ref_stamps = want[video_id]
            assert np.array_equal(stamps, ref_stamps), video_id
            np.testing.assert_allclose(features.astype(np.float32), ref_features.astype(np.float32), rtol=1e-2, atol=2e-3)
        if failures:
            assert [(f.video_id, f.error) for f in got.failures()] == [(f.video_id, f.error) for f in want.failures()]
        assert got.attrs["model"] == want.attrs["model"] and got.attrs["sampling"] == want.attrs["sampling"]


def test_ray_cluster_to_s3_equals_local_engine_and_reads_back(cluster, videos, local_store, s3, tmp_path):
    """Two model actors on the cluster, output on S3: same store as the local engine; info and evaluate
    read it from S3; a rerun finds everything committed."""
    out = "s3://bucket/features/"
    args = [str(videos), "--fps", str(FPS), *TINY, "--engine", "ray", "--address", cluster, "--ray-workers", "2",
            "--shard-size", "4", "--out", out]
    result = CliRunner().invoke(app, ["extract", *args, "--no-progress", "--json", str(tmp_path / "summary.json")])
    assert result.exit_code == 1, result.output  # broken.mp4 failed, and is recorded
    assert f"{len(VIDEOS)} stored, 1 failed, 0 already in the store" in result.output
    assert_same_store(out, local_store)
    with vfeat.open_store(str(local_store)) as want:  # the summary's video time is that of the videos stored
        stored_seconds = float(want.videos()["duration_s"].sum())
    assert json.loads((tmp_path / "summary.json").read_text())["video_seconds"] == pytest.approx(stored_seconds)
    assert sorted(committed_ids(out)) == sorted(VIDEOS)
    with vfeat.open_store(out) as store:
        assert len(store.shards) == 3 and store.attrs["hardware"]["model_workers"] == 2

    info = CliRunner().invoke(app, ["info", out, "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    with vfeat.open_store(str(local_store)) as want:
        assert (summary["videos"], summary["frames"], len(summary["failures"])) == (len(want), want.num_frames, 1)

    captions = tmp_path / "captions.csv"
    captions.write_text("video_id,caption\n" + "".join(f"{v},a test pattern number {i}\n" for i, v in enumerate(sorted(VIDEOS))))
    evaluated = CliRunner().invoke(app, ["evaluate", "--features", out, "--captions", str(captions), "--json", str(tmp_path / "r.json")])
    assert evaluated.exit_code == 0, evaluated.output
    (retrieval,) = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= retrieval["metrics"]["t2v_r1"] <= 100
    found = CliRunner().invoke(app, ["search", "--features", out, "a test pattern", "--top", "3", "--json", str(tmp_path / "hits.json")])
    assert found.exit_code == 0, found.output
    assert {hit["video_id"] for hit in json.loads((tmp_path / "hits.json").read_text())["hits"]} <= set(VIDEOS)

    # Resume across engines: the local engine finds every video committed by the Ray run.
    summary = vfeat.extract([], out, file_list=str(videos / "good.txt"), fps=FPS, workers=0, **TINY_KW)
    assert (summary.videos_skipped, summary.videos_ok) == (len(VIDEOS), 0)
    assert sorted(committed_ids(out)) == sorted(VIDEOS)


def _model_actor_pids() -> list[int]:
    """Worker processes of model actors that have loaded their model (Ray titles a worker process
    ``ray::<actor class>`` once its constructor has returned, ``...__init__`` while it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith("ray::") and ACTOR_TITLE in title and "__init__" not in title:
            pids.append(int(entry.name))
    return pids


def test_killed_model_worker_loses_and_duplicates_nothing(cluster, videos, local_store, tmp_path):
    """kill -9 of a model actor's worker process once it is ready for work: after the run (and a rerun when
    the run failed) every video is committed exactly once, and the store equals the local engine's."""
    out = tmp_path / "features"
    args = ["--file-list", str(videos / "good.txt"), "--fps", str(FPS), *TINY, "--engine", "ray", "--address", cluster,
            "--ray-workers", "2", "--shard-size", "2", "--out", str(out)]
    run = extract_cli(*args)
    killed, committed_before = None, None
    deadline = time.monotonic() + 90
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        pids = _model_actor_pids()
        if pids:
            committed_before = len(committed_ids(str(out))) if (out / "manifest.json").exists() else 0
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    output = run.communicate(timeout=120)[0]
    assert killed is not None, f"no ready model actor seen while the run was going:\n{output[-3000:]}"
    assert committed_before < len(VIDEOS), "the kill came after the last commit"
    ids = committed_ids(str(out))
    assert len(ids) == len(set(ids)), f"duplicates after the killed run: {sorted(ids)}"

    rerun = CliRunner().invoke(app, ["extract", *args, "--no-progress"])
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(VIDEOS) - len(ids)} stored, 0 failed, {len(ids)} already in the store" in rerun.output
    assert sorted(committed_ids(str(out))) == sorted(VIDEOS)
    assert_same_store(str(out), local_store, failures=False)


# -- the commit, without a cluster: shard names, whole-shard commits, one manifest for both engines ----------

def _records(store_path: Path) -> dict:
    """The local store's videos as the records a model actor hands to the driver."""
    from vfeat.store.format import VideoRecord

    with vfeat.open_store(str(store_path)) as store:
        table = store.videos()
        fields = ("fps", "duration_s", "width", "height", "num_frames", "start_time_s", "rotation")
        return {video_id: VideoRecord(video_id, str(table["path"][i]), {k: table[k][i].item() for k in fields}, *store[video_id])
                for i, video_id in enumerate(store.ids)}, store.attrs


def test_shards_are_named_by_their_videos_and_visible_only_when_complete(local_store, tmp_path):
    from vfeat.engines.ray_engine import ShardCommitter, plan_shards

    ids = sorted(VIDEOS)
    plan = plan_shards(reversed(ids), 4, "zarr")
    assert plan == plan_shards(ids, 4, "zarr") and [len(v) for v in plan.values()] == [4, 4, 3]
    first, *rest = plan
    assert list(plan_shards(ids[4:], 4, "zarr")) == rest  # a rerun cuts the videos left into the same shards
    records, attrs = _records(local_store)
    out = tmp_path / "features"
    # A killed run left the first shard half written under its name, never committed: it is started afresh.
    stale = ShardCommitter(str(out), {first: plan[first][:1] + ["ghost.mp4"]}, attrs)
    stale.take(records[plan[first][0]])
    stale.writers[first].flush()
    assert (out / first).exists() and json.loads((out / "manifest.json").read_text())["shards"] == []

    committer = ShardCommitter(str(out), plan, attrs)
    order = [v for group in itertools.zip_longest(*plan.values()) for v in group if v]  # shards fill in turn
    for step, video_id in enumerate(order):
        complete = [name for name, group in plan.items() if set(group) <= set(order[:step])]
        assert json.loads((out / "manifest.json").read_text())["shards"] == sorted(complete)
        assert committer.take(records[video_id]) and not committer.take(records[video_id])  # a retry's duplicate is dropped
    assert json.loads((out / "manifest.json").read_text())["shards"] == sorted(plan)
    assert sorted(committed_ids(str(out))) == ids
    assert_same_store(str(out), local_store, failures=False)


def test_local_engine_shards_join_a_ray_manifest(videos, local_store, tmp_path):
    from vfeat.engines.ray_engine import ShardCommitter, plan_shards

    records, attrs = _records(local_store)
    out = tmp_path / "features"
    committer = ShardCommitter(str(out), plan_shards(["v00.mp4"], 4, "zarr"), attrs)
    committer.take(records["v00.mp4"])
    summary = vfeat.extract([str(videos / "v00.mp4"), str(videos / "v01.mp4")], str(out), fps=FPS, workers=0, **TINY_KW)
    assert (summary.videos_skipped, summary.videos_ok) == (1, 1)
    assert "shard-00000.zarr" in json.loads((out / "manifest.json").read_text())["shards"]
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["v00.mp4", "v01.mp4"]



def test_ray_run_refuses_local_shards_written_with_other_settings(videos, tmp_path):
    """The videos of a local shard extracted at another fps are not done for a Ray run: it is refused before
    Ray starts, naming the shard, and writes nothing."""
    out = tmp_path / "features"
    vfeat.extract([str(videos / "v00.mp4")], str(out), fps=FPS, workers=0, **TINY_KW)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(vfeat.StoreError, match=r"shard-00000\.zarr: store was written with sampling="):
        vfeat.extract([str(videos / "v00.mp4"), str(videos / "v01.mp4")], str(out), fps=FPS / 2, engine="ray", **TINY_KW)
    assert sorted(p.name for p in out.iterdir()) == before


def test_interrupted_local_run_into_a_ray_manifest_hides_nothing(videos, local_store, tmp_path):
    """Ctrl-C (or a crash) during a local run into a directory with a manifest: the videos it committed are
    visible at once, because its shard joined the manifest before its first video."""
    from vfeat.engines.ray_engine import ShardCommitter, plan_shards

    records, attrs = _records(local_store)
    out = tmp_path / "features"
    ShardCommitter(str(out), plan_shards(["v00.mp4"], 4, "zarr"), attrs).take(records["v00.mp4"])

    def interrupt(stats, frames):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after its first video is handed to the writer
        vfeat.extract([str(videos / f"v0{i}.mp4") for i in range(3)], str(out), fps=FPS, workers=0, on_progress=interrupt, **TINY_KW)
    assert "shard-00000.zarr" in json.loads((out / "manifest.json").read_text())["shards"]
    with vfeat.open_store(str(out)) as store:
        assert sorted(store.ids) == ["v00.mp4", "v01.mp4"]


def listed_ids(root: Path) -> list[str]:
    """Committed ids of every shard the manifest lists, zarr or h5, duplicates kept."""
    from vfeat.store.backends import open_read
    from vfeat.store.format import shard_kind
    from vfeat.store.tree import read_ids

    ids = []
    for name in json.loads((root / "manifest.json").read_text())["shards"]:
        with open_read(str(root / name), shard_kind(name)) as tree:
            ids.extend(read_ids(tree))
    return ids


def test_local_and_ray_runs_into_one_directory_store_each_video_once(cluster, videos, local_store, tmp_path):
    """A directory is one dataset, whichever engine writes: a Ray run skips what killed local runs committed
    (an HDF5 shard's journal not yet merged, a local shard missing from the manifest) and shows it to
    readers, and the next local run finds every video done; no video is stored twice."""
    from vfeat.store.writer import ShardWriter

    records, attrs = _records(local_store)
    out = tmp_path / "features"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"shards": []}))  # a Ray run killed before its first commit
    killed = ShardWriter(str(out / "shard-00000.h5"), attrs)  # a killed local HDF5 run: v00 in its journal only
    killed.add(records["v00.mp4"])
    killed.flush()
    with ShardWriter(str(out / "shard-00001.zarr"), attrs) as writer:  # a local shard left out of the manifest
        writer.add(records["v01.mp4"])
    args = [*(str(videos / f"v0{i}.mp4") for i in range(4)), "--fps", str(FPS), *TINY, "--no-progress", "--out", str(out)]

    ray_run = CliRunner().invoke(app, ["extract", *args, "--engine", "ray", "--address", cluster, "--shard-size", "2"])
    assert ray_run.exit_code == 0, ray_run.output
    assert "2 stored, 0 failed, 2 already in the store" in ray_run.output
    assert sorted(listed_ids(out)) == [f"v0{i}.mp4" for i in range(4)]
    local_run = CliRunner().invoke(app, ["extract", *args, "--format", "h5", "--workers", "0"])
    assert local_run.exit_code == 0, local_run.output
    assert "0 stored, 0 failed, 4 already in the store" in local_run.output
    assert sorted(listed_ids(out)) == [f"v0{i}.mp4" for i in range(4)]
    with vfeat.open_store(str(out)) as store, vfeat.open_store(str(local_store)) as want:
        assert sorted(store.ids) == [f"v0{i}.mp4" for i in range(4)]
        for video_id in store.ids:
            np.testing.assert_allclose(store[video_id][0].astype(np.float32), want[video_id][0].astype(np.float32), rtol=1e-2, atol=2e-3)


# -- the model actor, without a cluster: the local pipeline's records ------------------------------------------

FIXTURES = Path(os.environ.get("VFEAT_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ACTOR_CASES = {
    "frames": (TINY_KW, {"fps": FPS}),
    "frames+clips": (TINY_KW, {"clips": 2, "clip_len": 3, "stride": 2}),
    "clip model, N frames": ({"model": "clip-vip-b32", "model_config": str(FIXTURES / "clip_vip_ext" / "config.json"),
                              "pretrained": "none", "device": "cpu"}, {"num_frames": 4}),
    "clip model, clips": ({"model": "open-vclip-b16", "model_config": str(FIXTURES / "open_vclip" / "config.json"),
                           "pretrained": "none", "device": "cpu"}, {"clips": 2, "clip_len": 8, "stride": 1}),
}


@pytest.mark.parametrize("case", ACTOR_CASES)
def test_model_actor_builds_the_records_the_local_engine_stores(videos, tmp_path, case):
    """Decode rows and one model-actor call, made by hand as Ray Data makes them (a batch of four videos, one
    of them broken, model batches smaller than a video): the records equal the local engine's store."""
    from vfeat.engines.ray_engine import EncodeVideos, decode_video
    from vfeat.extractor import extract_sources
    from vfeat.pipeline import decode_resize, one_clip_per_video
    from vfeat.sampling import SamplingPlan
    from vfeat.sources import expand_inputs
    from vfeat.store.format import Failure

    model_kw, plan_kw = ACTOR_CASES[case]
    plan = SamplingPlan(**plan_kw)
    sources = [s for s in expand_inputs([str(videos)], None) if s.video_id in ("broken.mp4", "sub/deep.mp4", "v01.mp4", "v02.mp4")]
    local = tmp_path / "local.zarr"
    extract_sources(sources, str(local), model=model_kw["model"], pretrained="none", plan=plan, model_config=model_kw["model_config"],
                    device="cpu", precision="auto", dtype="float16", batch_size=64, workers=0, store_format=None)

    actor = EncodeVideos({"name": model_kw["model"], "pretrained": "none", "config": model_kw["model_config"], "device": "cpu",
                          "precision": "auto"}, plan, "float16", batch_size=3)
    resize, one_clip = decode_resize(actor.encoder), one_clip_per_video(actor.encoder, plan)
    rows = [decode_video({"video_id": s.video_id, "path": s.path, "open_path": s.path}, plan, resize, one_clip) for s in sources]
    batch = {key: np.array([row[key] for row in rows] + [None], dtype=object)[:-1] for key in rows[0]}  # ragged: object arrays
    out = actor(batch)
    records = {video_id: pickle.loads(blob) for video_id, blob in zip(out["video_id"], out["record"])}

    assert sorted(records) == sorted(s.video_id for s in sources)
    with vfeat.open_store(str(local)) as want:
        assert [(f.video_id, f.error) for f in want.failures()] == [
            (r.video_id, r.error) for r in records.values() if isinstance(r, Failure)]
        for video_id in want.ids:
            record = records[video_id]
            if want.has_frames:
                features, stamps = want[video_id]
                assert np.array_equal(record.timestamps_ms, stamps), video_id
                np.testing.assert_allclose(record.features.astype(np.float32), features.astype(np.float32), rtol=1e-2, atol=2e-3)
            else:
                assert record.features is None
            if want.has_clips:
                clips, start_ms, end_ms = want.clips(video_id)
                assert np.array_equal(record.clip_start_ms, start_ms) and np.array_equal(record.clip_end_ms, end_ms)
                np.testing.assert_allclose(record.clip_features.astype(np.float32), clips.astype(np.float32), rtol=1e-2, atol=2e-3)


def test_failures_name_the_file_as_given(tmp_path, monkeypatch):
    """Ray's tasks open a relative path by its absolute form; the failure they report names the file as the
    user gave it, as the local engine's do."""
    from vfeat.engines.ray_engine import _as_given
    from vfeat.sampling import SamplingPlan
    from vfeat.store.format import Failure
    from vfeat.workers import decode_job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    messages = list(decode_job(0, str(tmp_path / "videos" / "broken.mp4"), SamplingPlan(fps=1.0), None, one_clip=False))
    error = messages[-1][-1]
    assert str(tmp_path) in error
    failure = _as_given(Failure("broken.mp4", "videos/broken.mp4", error), {"broken.mp4": "videos/broken.mp4"})
    assert failure.error.startswith("videos/broken.mp4: ") and str(tmp_path) not in failure.error
