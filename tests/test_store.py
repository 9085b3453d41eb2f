"""The store's public layout (docs/store.md), read back with plain ``zarr`` / ``h5py`` only, and checked
against ffprobe and hashlib rather than against vfeat's own reader. Then the read API over shards and
directories, and the export to the older per-video files."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import warnings
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import vfeat
from conftest import ffprobe, frames_on_screen_oracle, make_video
from vfeat.cli import app
from vfeat.errors import StoreError

FPS = 2.0
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
runner = CliRunner()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """ids -> files under one folder (so ids are relative paths), with a nested and a non-ASCII name."""
    root = tmp_path_factory.mktemp("store-videos") / "videos"
    return {
        "a.mp4": make_video(root, "a.mp4", 2.0, 25, (96, 64)),
        "sub/b.mp4": make_video(root, "sub/b.mp4", 1.5, "30000/1001", (64, 96)),
        "café ü.mp4": make_video(root, "café ü.mp4", 0.2, 25, (80, 48)),
    }


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model, videos) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("stores")
    root = videos["a.mp4"].parent
    made, caught = {}, []
    for suffix in (".zarr", ".h5"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            summary = vfeat.extract([str(root)], str(out / f"feats{suffix}"), fps=FPS, workers=0,
                                    **tiny_model.extract_kwargs())
        caught.extend(seen)
        assert (summary.videos_ok, summary.videos_failed) == (3, 0)
        made[suffix] = out / f"feats{suffix}"
    made["warnings"] = caught  # type: ignore[assignment]
    return made


def read_plain(path: Path) -> dict:
    """Every array and attribute of a shard, with nothing but zarr or h5py (docs/store.md)."""
    names = ["features", "timestamps_ms", "offsets", "videos/id", "videos/path", "videos/fps", "videos/duration_s",
             "videos/width", "videos/height", "videos/num_frames", "videos/start_time_s", "videos/rotation",
             "failures/id", "failures/path", "failures/error"]
    if path.suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r")
        arrays = {name: group[name][:] for name in names}
        attrs = dict(group.attrs)
    else:
        with h5py.File(path, "r") as handle:
            arrays = {name: (handle[name].asstr()[:] if h5py.check_string_dtype(handle[name].dtype) else handle[name][:])
                      for name in names}
            attrs = {}
            for key, value in handle.attrs.items():
                if isinstance(value, bytes):
                    value = value.decode()
                if isinstance(value, str) and value[:1] in "{[":
                    value = json.loads(value)
                attrs[key] = value.item() if isinstance(value, np.generic) else value
    return {"arrays": arrays, "attrs": attrs}


def expected_rows(path: Path) -> tuple[list[float], Fraction]:
    """Timestamps (ms) a --fps FPS run must store, from ffprobe's decoded frame times and the player's rule."""
    oracle = ffprobe(path)
    duration = oracle.count / oracle.avg_frame_rate  # these fixtures are constant-rate
    count = max(1, math.ceil(duration * Fraction(str(FPS))))
    targets = [Fraction(k) / Fraction(str(FPS)) for k in range(count)]
    chosen = frames_on_screen_oracle(oracle.seconds, targets)
    return [float(oracle.seconds[i] * 1000) for i in chosen], duration


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_layout_with_plain_readers(stores, videos, suffix):
    shard = read_plain(stores[suffix])
    a = shard["arrays"]
    ids = [str(i) for i in a["videos/id"]]
    assert sorted(ids) == sorted(videos)
    n = len(ids)
    offsets = a["offsets"]
    assert offsets.dtype == np.int64 and offsets.shape == (n + 1,) and offsets[0] == 0
    assert np.all(np.diff(offsets) > 0)
    total = int(offsets[-1])
    assert a["features"].shape == (total, 32) and a["features"].dtype == np.float16
    assert a["timestamps_ms"].shape == (total,) and a["timestamps_ms"].dtype == np.float64
    for i, video_id in enumerate(ids):
        path = videos[video_id]
        oracle = ffprobe(path)
        stamps, duration = expected_rows(path)
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        np.testing.assert_allclose(a["timestamps_ms"][rows], stamps, rtol=0, atol=1e-6)
        assert Path(str(a["videos/path"][i])) == path
        assert a["videos/fps"][i] == pytest.approx(float(oracle.avg_frame_rate), rel=1e-12)
        assert a["videos/duration_s"][i] == pytest.approx(float(duration), abs=1e-9)
        assert (int(a["videos/width"][i]), int(a["videos/height"][i])) == (oracle.width, oracle.height)
        assert int(a["videos/num_frames"][i]) == oracle.count
        assert a["videos/start_time_s"][i] == pytest.approx(float(oracle.start_s), abs=1e-9)
        assert int(a["videos/rotation"][i]) == 0
    assert a["videos/fps"].dtype == np.float64 and a["videos/duration_s"].dtype == np.float64
    assert a["videos/width"].dtype == np.int32 and a["videos/height"].dtype == np.int32
    assert a["videos/num_frames"].dtype == np.int64
    assert len(a["failures/id"]) == len(a["failures/path"]) == len(a["failures/error"]) == 0
    # The short video (0.2 s) still has its one frame.
    assert np.diff(offsets)[ids.index("café ü.mp4")] == 1


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_root_attributes(stores, tiny_model, suffix):
    attrs = read_plain(stores[suffix])["attrs"]
    assert attrs["format"] == "vfeat-store" and attrs["format_version"] == 1
    assert attrs["vfeat_version"] == vfeat.__version__
    assert attrs["embed_dim"] == 32
    assert attrs["dtype"] == "float16"
    assert attrs["normalized"] is False or attrs["normalized"] == 0
    assert attrs["sampling"] == {"mode": "fps", "fps": FPS}
    model = attrs["model"]
    assert model["name"] == "vfeat-tiny-vit"
    assert model["pretrained"] == tiny_model.state_dict
    assert model["checkpoint_sha256"] == hashlib.sha256(Path(tiny_model.state_dict).read_bytes()).hexdigest()
    assert not attrs["random_weights"]
    pre = attrs["preprocess"]
    assert pre["image_size"] == 32 and pre["interpolation"] == "bicubic" and pre["resize_mode"] == "shortest"
    np.testing.assert_allclose(pre["mean"], OPENAI_MEAN)
    np.testing.assert_allclose(pre["std"], OPENAI_STD)
    assert bool(attrs["has_frames"]) and not bool(attrs["has_clips"])


def test_recorded_quick_gelu_is_the_activation_used(stores, tiny_model):
    attrs = read_plain(stores[".zarr"])["attrs"]
    assert json.loads(Path(tiny_model.config).read_text())["quick_gelu"] is True
    assert attrs["model"]["options"]["quick_gelu"] is True


def test_zarr_strings_use_the_v3_string_type(stores):
    for name in ("videos/id", "videos/path", "failures/id", "failures/path", "failures/error"):
        meta = json.loads((stores[".zarr"] / name / "zarr.json").read_text())
        assert meta["data_type"] == "string", name
        assert meta["zarr_format"] == 3
    group = zarr.open_group(str(stores[".zarr"]), mode="r")
    assert "café ü.mp4" in [str(v) for v in group["videos/id"][:]]


def test_h5_strings_are_variable_length_utf8(stores):
    with h5py.File(stores[".h5"], "r") as handle:
        for name in ("videos/id", "videos/path", "failures/id", "failures/path", "failures/error"):
            info = h5py.check_string_dtype(handle[name].dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None, name
        assert "café ü.mp4" in list(handle["videos/id"].asstr()[:])


def test_writing_raised_no_format_warnings(stores):
    messages = [f"{w.category.__name__}: {w.message}" for w in stores["warnings"]]
    assert not [m for m in messages if re.search(r"(?i)zarr|spec|unicode|string", m)], messages


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_open_store_reads_what_plain_readers_read(stores, videos, suffix):
    plain = read_plain(stores[suffix])["arrays"]
    ids = [str(i) for i in plain["videos/id"]]
    with vfeat.open_store(str(stores[suffix])) as store:
        assert store.ids == ids and len(store) == 3
        assert "a.mp4" in store and "nope.mp4" not in store
        for i, video_id in enumerate(ids):
            features, stamps = store[video_id]
            rows = slice(int(plain["offsets"][i]), int(plain["offsets"][i + 1]))
            assert np.array_equal(features, plain["features"][rows])
            assert np.array_equal(stamps, plain["timestamps_ms"][rows])
        assert store.attrs["embed_dim"] == 32
        assert store.num_frames == int(plain["offsets"][-1])
        with pytest.raises(KeyError, match=re.escape("'nope.mp4' is not in")):
            store["nope.mp4"]


def test_directory_of_shards_is_one_dataset(tmp_path, tiny_model, videos):
    root = tmp_path / "features"
    vfeat.extract([str(videos["a.mp4"])], str(root / "shard-00000.zarr"), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    vfeat.extract([str(videos["sub/b.mp4"])], str(root / "shard-00001.h5"), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    with vfeat.open_store(str(root)) as store:
        assert sorted(store.ids) == ["a.mp4", "b.mp4"]
        assert len(store) == 2
        with h5py.File(root / "shard-00001.h5", "r") as handle:
            assert np.array_equal(store["b.mp4"][0], handle["features"][:])
            assert np.array_equal(store["b.mp4"][1], handle["timestamps_ms"][:])
        group = zarr.open_group(str(root / "shard-00000.zarr"), mode="r")
        assert np.array_equal(store["a.mp4"][0], group["features"][:])
    # A manifest names the shards that belong to the dataset.
    (root / "manifest.json").write_text(json.dumps({"shards": ["shard-00001.h5"]}))
    with vfeat.open_store(str(root)) as store:
        assert store.ids == ["b.mp4"]


def test_directory_out_writes_a_shard_and_resumes_across_shards(tmp_path, tiny_model, videos):
    root = tmp_path / "features"
    root.mkdir()
    vfeat.extract([str(videos["a.mp4"])], str(root), fps=FPS, workers=0, store_format="h5", **tiny_model.extract_kwargs())
    assert sorted(p.name for p in root.iterdir()) == ["shard-00000.h5"]
    # Another writer's shard (as the Ray engine writes): videos it holds are skipped by a directory run.
    vfeat.extract([str(videos["sub/b.mp4"])], str(root / "shard-00007.h5"), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    summary = vfeat.extract([str(videos["a.mp4"]), str(videos["sub/b.mp4"])], str(root), fps=FPS, workers=0,
                            store_format="h5", **tiny_model.extract_kwargs())
    assert (summary.videos_skipped, summary.videos_ok) == (2, 0)
    with vfeat.open_store(str(root)) as store:
        assert sorted(store.ids) == ["a.mp4", "b.mp4"]


def test_a_video_in_two_shards_counts_once_and_other_dtypes_are_refused(tmp_path, tiny_model, videos):
    """Shards copied together by hand: a video in both is seen once (its rows too, in `vfeat info`), and a
    shard stored in another dtype makes the directory unreadable, as docs/store.md says."""
    root = tmp_path / "copied"
    one = vfeat.extract([str(videos["a.mp4"])], str(root / "shard-00000.zarr"), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    vfeat.extract([str(videos["a.mp4"])], str(root / "shard-00001.zarr"), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    with vfeat.open_store(str(root)) as store:
        assert (len(store), store.num_frames) == (1, one.frames)
    vfeat.extract([str(videos["sub/b.mp4"])], str(root / "shard-00002.zarr"), fps=FPS, workers=0, dtype="float32",
                  **tiny_model.extract_kwargs())
    with pytest.raises(StoreError, match=r"shard-00002\.zarr: shard written with other settings than"):
        vfeat.open_store(str(root))


def test_directory_run_refuses_shards_written_with_other_settings(tmp_path, tiny_model, videos):
    """Videos another shard holds count as done only if they were extracted alike: a run with another
    sampling is refused, naming the shard and the setting, before it creates a shard of its own (which
    would make the store unreadable: readers refuse mixed settings)."""
    root = tmp_path / "features"
    vfeat.extract([str(videos["a.mp4"])], str(root), fps=FPS, workers=0, **tiny_model.extract_kwargs())
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(vfeat.StoreError, match=r"shard-00000\.zarr: store was written with sampling=.*this run uses"):
        vfeat.extract([str(videos["a.mp4"]), str(videos["sub/b.mp4"])], str(root), fps=FPS * 2, workers=0,
                      store_format="h5", **tiny_model.extract_kwargs())
    assert sorted(p.name for p in root.iterdir()) == before
    with vfeat.open_store(str(root)) as store:
        assert store.ids == ["a.mp4"] and store.attrs["sampling"]["fps"] == FPS


@pytest.mark.parametrize("out, store_format", [("new_dir", "h5"), ("new_dir/feats.h5", None)])
def test_h5_store_in_a_folder_that_does_not_exist_yet(tmp_path, tiny_model, videos, out, store_format):
    summary = vfeat.extract([str(videos["a.mp4"])], str(tmp_path / out), fps=FPS, workers=0, store_format=store_format,
                            **tiny_model.extract_kwargs())
    assert summary.videos_ok == 1
    with vfeat.open_store(str(tmp_path / out)) as store:
        assert store.ids == ["a.mp4"]


@pytest.mark.parametrize("path_kind, message", [
    ("missing", "store not found"),
    ("empty_dir", r"no shards \(\*\.zarr, \*\.h5\) found"),
])
def test_open_store_errors(tmp_path, path_kind, message):
    path = tmp_path / ("nothing.zarr" if path_kind == "missing" else "empty")
    if path_kind == "empty_dir":
        path.mkdir()
    with pytest.raises(StoreError, match=f"^{re.escape(str(path))}: {message}$"):
        vfeat.open_store(str(path))


# -- export to the older per-video files --------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_export_npy(stores, tmp_path, suffix):
    dest = tmp_path / "npy"
    result = runner.invoke(app, ["export", str(stores[suffix]), str(dest), "--to", "npy"])
    assert result.exit_code == 0, result.output
    plain = read_plain(stores[suffix])["arrays"]
    ids = [str(i) for i in plain["videos/id"]]
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.npy"))
    assert written == sorted(f"{Path(i).parent / Path(i).stem}_{k}.npy".removeprefix("./")
                             for i in ids for k in ("clip", "timestamps_ms", "fps"))
    for i, video_id in enumerate(ids):
        stem = dest / Path(video_id).parent / Path(video_id).stem
        rows = slice(int(plain["offsets"][i]), int(plain["offsets"][i + 1]))
        assert np.array_equal(np.load(f"{stem}_clip.npy"), plain["features"][rows])
        assert np.array_equal(np.load(f"{stem}_timestamps_ms.npy"), plain["timestamps_ms"][rows])
        assert float(np.load(f"{stem}_fps.npy")) == plain["videos/fps"][i]


def test_export_pickle(stores, tmp_path):
    dest = tmp_path / "pkl"
    result = runner.invoke(app, ["export", str(stores[".h5"]), str(dest), "--to", "pickle"])
    assert result.exit_code == 0, result.output
    plain = read_plain(stores[".h5"])["arrays"]
    ids = [str(i) for i in plain["videos/id"]]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.pkl")) == sorted(
        f"{Path(i).parent / Path(i).stem}.pkl".removeprefix("./") for i in ids)
    i = ids.index("sub/b.mp4")
    with open(dest / "sub" / "b.pkl", "rb") as handle:
        record = pickle.load(handle)
    rows = slice(int(plain["offsets"][i]), int(plain["offsets"][i + 1]))
    assert set(record) == {"clip", "timestamps_ms", "fps"}
    assert np.array_equal(record["clip"], plain["features"][rows])
    assert np.array_equal(record["timestamps_ms"], plain["timestamps_ms"][rows])
    assert float(record["fps"]) == pytest.approx(30000 / 1001)


def test_iter_rows_of_rows_the_store_does_not_hold_is_an_error(stores):
    """A frame-level store asked for clip rows gave an empty stream, as if it held no videos."""
    with vfeat.open_store(str(stores[".zarr"])) as store:
        assert store.has_frames and not store.has_clips
        with pytest.raises(vfeat.StoreError, match="the store holds no clips/features"):
            next(store.iter_rows("clips/features"))
        with pytest.raises(vfeat.StoreError, match="no rows named 'timestamps_ms'"):
            next(store.iter_rows("timestamps_ms"))


def test_export_unknown_format(stores, tmp_path):
    result = runner.invoke(app, ["export", str(stores[".zarr"]), str(tmp_path / "x"), "--to", "csv"])
    assert result.exit_code == 2
    assert "Invalid --to (csv). Choose from: npy, pickle." in result.output


def test_export_stays_under_the_destination(stores, tmp_path):
    """Ids from a file list may be absolute or climb with '..': their files still land under the destination
    (the leading '/' dropped, '..' as '__'), and ids that would share files are refused before any is written."""
    from vfeat.store.export import export_places
    from vfeat.store.format import VideoRecord
    from vfeat.store.writer import ShardWriter

    with vfeat.open_store(str(stores[".zarr"])) as store:
        attrs = dict(store.attrs)
    dim = int(attrs["embed_dim"])
    info = {"fps": 25.0, "duration_s": 1.0, "width": 64, "height": 48, "num_frames": 25, "start_time_s": 0.0, "rotation": 0}
    ids = [f"{tmp_path}/outside/abs.mp4", "../up/rel.mp4", "./here.mp4"]
    store_path = tmp_path / "ids.zarr"
    with ShardWriter(str(store_path), attrs) as writer:
        for n, video_id in enumerate(ids):
            writer.add(VideoRecord(video_id, video_id, info, np.full((2, dim), n, np.float32), np.array([0.0, 500.0])))
    dest = tmp_path / "dest"
    result = runner.invoke(app, ["export", str(store_path), str(dest), "--to", "pickle"])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pkl"))
    assert written == sorted(f"dest/{rel}" for rel in (f"{str(tmp_path).lstrip('/')}/outside/abs.pkl", "__/up/rel.pkl", "here.pkl"))
    with open(dest / "__" / "up" / "rel.pkl", "rb") as handle:
        assert np.array_equal(pickle.load(handle)["clip"], np.full((2, dim), 1, np.float32))
    with pytest.raises(vfeat.InputError, match="'a/b.mp4' and 'a/b.mkv' would be exported to the same files"):
        export_places(["a/b.mp4", "a/c.mp4", "a/b.mkv"])


def test_export_cuts_names_too_long_for_a_file(stores, tmp_path, caplog):
    """A 240-character file name is a valid video; with '_timestamps_ms.npy' it is not a valid file name (the
    export crashed half-way). Cut, with a hash of the id, and said so."""
    from vfeat.store.format import VideoRecord
    from vfeat.store.writer import ShardWriter

    with vfeat.open_store(str(stores[".zarr"])) as store:
        attrs = dict(store.attrs)
    dim = int(attrs["embed_dim"])
    info = {"fps": 25.0, "duration_s": 1.0, "width": 64, "height": 48, "num_frames": 25, "start_time_s": 0.0, "rotation": 0}
    ids = ["L" * 240 + ".mp4", "L" * 240 + "2.mp4", "short.mp4"]
    store_path = tmp_path / "long.zarr"
    with ShardWriter(str(store_path), attrs) as writer:
        for n, video_id in enumerate(ids):
            writer.add(VideoRecord(video_id, video_id, info, np.full((2, dim), n, np.float32), np.array([0.0, 500.0])))
    caplog.set_level("WARNING", logger="vfeat.store.export")
    result = runner.invoke(app, ["export", str(store_path), str(tmp_path / "dest"), "--to", "npy"])
    assert result.exit_code == 0, result.output
    assert "2 video id(s) too long for a file name were cut" in caplog.text
    clips = sorted((tmp_path / "dest").glob("*_clip.npy"))
    assert len(clips) == 3 and len(list((tmp_path / "dest").glob("*.npy"))) == 9
    assert max(len(p.name.encode()) for p in (tmp_path / "dest").iterdir()) <= 255
    assert sorted(int(np.load(p)[0, 0]) for p in clips) == [0, 1, 2]


def test_table_clip_count_and_export_of_a_clip_store_across_shards(stores, tmp_path):
    """``videos()``, ``vfeat info``'s clip count and ``vfeat export`` read whole columns and large row ranges
    (a read per video and column took 4.8 minutes for 20,000 videos). Checked against the records written:
    a clip-level store of a zarr and an HDF5 shard, where a video stored in both counts once, as its first
    copy, as everywhere else in the reader."""
    from vfeat.store.format import VideoRecord
    from vfeat.store.writer import ShardWriter

    with vfeat.open_store(str(stores[".zarr"])) as store:
        attrs = {**store.attrs, "has_frames": False, "has_clips": True}
    dim = int(attrs["embed_dim"])
    rng = np.random.default_rng(7)

    def record(video_id: str, clips: int, fps: float, width: int) -> VideoRecord:
        info = {"fps": fps, "duration_s": 2.0 * clips, "width": width, "height": 48, "num_frames": 10 * clips,
                "start_time_s": 0.5, "rotation": 90}
        start = np.arange(clips) * 2000.0
        return VideoRecord(video_id, f"/videos/{video_id}", info, None, np.zeros(0), rng.standard_normal((clips, dim)).astype(np.float16),
                           start, start + 1500.0)

    shards = {"shard-00000.zarr": [record("a.mp4", 1, 25.0, 64), record("sub/dup.mp4", 2, 30.0, 80)],
              "shard-00001.h5": [record("sub/dup.mp4", 5, 24.0, 96), record("c.mp4", 3, 29.97, 112)]}
    root = tmp_path / "clips"
    for name, records in shards.items():
        with ShardWriter(str(root / name), attrs) as writer:
            for r in records:
                writer.add(r)
    first = {r.video_id: r for records in reversed(list(shards.values())) for r in records}  # first copies win
    with vfeat.open_store(str(root)) as store:
        assert store.ids == ["a.mp4", "sub/dup.mp4", "c.mp4"]
        table = store.videos()
        assert list(table["id"]) == store.ids and list(table["path"]) == [first[i].path for i in store.ids]
        for column in ("fps", "duration_s", "width", "height", "num_frames", "start_time_s", "rotation"):
            assert table[column].tolist() == [first[i].info[column] for i in store.ids], column
        assert store.num_clips == 1 + 2 + 3
    info = runner.invoke(app, ["info", str(root), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["clips"] == 6 and json.loads(info.output)["videos"] == 3

    dest = tmp_path / "npy"
    result = runner.invoke(app, ["export", str(root), str(dest), "--to", "npy"])
    assert result.exit_code == 0, result.output
    assert len(list(dest.rglob("*_clip.npy"))) == 3
    for video_id, r in first.items():
        stem = dest / Path(video_id).parent / Path(video_id).stem
        assert np.array_equal(np.load(f"{stem}_clip.npy"), r.clip_features)
        assert np.array_equal(np.load(f"{stem}_timestamps_ms.npy"), r.clip_start_ms)
        assert float(np.load(f"{stem}_fps.npy")) == r.info["fps"]
