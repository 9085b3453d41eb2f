"""Memory that does not grow with video length: a long video's rows are spooled to a file in blocks
(``vfeat.store.spool``), copied into the shard a block at a time, and survive a crash with the journal;
the decode side keeps its per-frame bookkeeping in arrays.

The spool limit and block size are lowered so that a few seconds of video exercise the spooled path; the
stores must equal those of the plain in-memory path exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import vfeat
from conftest import make_video
from vfeat.gop import PtsSet
from vfeat.store import spool
from vfeat.store.format import Batch, VideoRecord
from vfeat.store.spool import RowBuffer, SpooledRows, row_blocks
from vfeat.store.writer import ShardWriter, journal_dir
from vfeat.workers import RowsOfFrame


@pytest.fixture
def small_spool(monkeypatch):
    """Spool every video of more than 1 KB of rows, in blocks of 8 rows."""
    monkeypatch.setenv("VFEAT_ROWS_IN_MEMORY_MB", str(1 / 1024))
    monkeypatch.setattr(spool, "BLOCK_ROWS", 8)


def test_row_buffer_spools_complete_blocks_and_gives_back_every_row(tmp_path, small_spool):
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((45, 16)).astype(np.float16)
    buffer = RowBuffer(45, 16, np.float16, str(tmp_path))
    assert buffer.spooled
    held = []
    for start in range(0, 45, 5):  # in order, five rows at a time, as frames come out of a decoder
        rows = list(range(start, min(45, start + 5)))
        buffer[rows] = expected[rows]
        held.append(len(buffer.blocks))
    assert max(held) <= 2  # only blocks still being filled stay in memory
    np.testing.assert_array_equal(buffer[[3, 17, 44]], expected[[3, 17, 44]])  # clip means read rows back
    spooled = buffer.finish()
    assert isinstance(spooled, SpooledRows) and spooled.exists()
    np.testing.assert_array_equal(spooled.read(0, 45), expected)
    np.testing.assert_array_equal(np.concatenate(list(row_blocks([spooled], np.dtype(np.float16), max_rows=10))), expected)


def test_row_buffer_any_order_repeated_rows_and_one_vector_for_several_rows(tmp_path, small_spool):
    rng = np.random.default_rng(1)
    expected = rng.standard_normal((30, 16)).astype(np.float32)
    expected[[6, 7, 8]] = expected[6]  # three targets on one frame: one vector, three rows
    buffer = RowBuffer(30, 16, np.float32, str(tmp_path))
    assert buffer.spooled
    order = [r for r in rng.permutation(30).tolist() if r not in (7, 8)]
    for row in order:
        buffer[[row, 7, 8] if row == 6 else [row]] = expected[row]
    buffer[[0, 1]] = expected[[0, 1]]  # an overlapping clip writes rows of a block already spooled again
    np.testing.assert_array_equal(buffer.finish().read(0, 30), expected)


def test_small_videos_and_no_spool_dir_stay_in_memory(tmp_path, small_spool):
    assert not RowBuffer(2, 4, np.float16, str(tmp_path)).spooled  # 16 bytes: under the limit
    unspooled = RowBuffer(1000, 64, np.float16, None)
    assert not unspooled.spooled and isinstance(unspooled.finish(), np.ndarray)
    assert list(tmp_path.iterdir()) == []


def test_discarded_buffer_leaves_no_file(tmp_path, small_spool):
    buffer = RowBuffer(100, 8, np.float16, str(tmp_path))
    buffer[list(range(20))] = np.ones((20, 8))
    buffer.discard()
    assert list(tmp_path.iterdir()) == []


def test_row_blocks_joins_small_videos_and_splits_spooled_ones(tmp_path, small_spool):
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal((n, 16)).astype(np.float32) for n in (3, 25, 4))
    buffer = RowBuffer(25, 16, np.float32, str(tmp_path))
    assert buffer.spooled
    buffer[list(range(25))] = b
    blocks = list(row_blocks([a, buffer.finish(), c], np.dtype(np.float16), max_rows=10))
    assert [len(x) for x in blocks] == [3, 10, 10, 5, 4]
    assert all(x.dtype == np.float16 for x in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate([a, b, c]).astype(np.float16))


def test_pts_set_and_rows_of_frame_match_python_containers():
    rng = np.random.default_rng(3)
    pts = rng.choice(10_000, size=500, replace=False) * 512
    members = PtsSet(pts)
    reference = set(int(p) for p in pts)
    for p in rng.choice(pts, 200).tolist():
        members.discard(p)
        reference.discard(p)
    assert len(members) == len(reference)
    assert all((p in members) == (p in reference) for p in range(-512, 10_001 * 512, 256))
    assert sorted(members.members().tolist()) == sorted(reference)

    row_pts = np.array([40, 10, 10, 30, 40, 40, 20], np.int64)  # targets repeating a frame share its pts
    rows_of = RowsOfFrame(row_pts)
    assert rows_of.wanted.tolist() == [10, 20, 30, 40]
    assert [rows_of[p] for p in (10, 20, 30, 40)] == [[1, 2], [6], [3], [0, 4, 5]]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_spooled_extraction_equals_in_memory_extraction(tmp_path, tiny_model, monkeypatch, suffix):
    """All frames of two videos (and --clips, whose clip means read spooled rows back): the same store
    whether rows stay in memory or go through spool files, and no spool file is left behind."""
    videos = tmp_path / "videos"
    make_video(videos, "a.mp4", duration=3.0, fps=25)
    make_video(videos, "b.mp4", duration=1.2, fps=30, size=(64, 96))
    removed = []
    original_remove = SpooledRows.remove
    monkeypatch.setattr(SpooledRows, "remove", lambda self: (removed.append(self.path), original_remove(self)))
    for kwargs in ({}, {"clips": 3, "clip_len": 5, "stride": 4}):
        stores = {}
        for mode in ("memory", "spooled"):
            removed.clear()
            if mode == "spooled":
                monkeypatch.setenv("VFEAT_ROWS_IN_MEMORY_MB", str(1 / 4096))
                monkeypatch.setattr(spool, "BLOCK_ROWS", 4)
            out = tmp_path / f"{mode}-{len(kwargs)}{suffix}"
            summary = vfeat.extract([str(videos)], str(out), workers=0, batch_size=7, **kwargs, **tiny_model.extract_kwargs())
            assert summary.videos_ok == 2
            assert len(removed) == (2 if mode == "spooled" else 0)  # both videos went through a spool file
            assert not Path(journal_dir(str(out))).exists()
            with vfeat.open_store(str(out)) as store:
                stores[mode] = {i: store[i] for i in store.ids}
                if kwargs:
                    stores[mode]["clips"] = [store.clips(i) for i in sorted(store.ids)]
            monkeypatch.delenv("VFEAT_ROWS_IN_MEMORY_MB", raising=False)
            monkeypatch.setattr(spool, "BLOCK_ROWS", 8192)
        assert sorted(stores["memory"]) == sorted(stores["spooled"])
        assert len(stores["memory"]["a.mp4"][0]) == (15 if kwargs else 75)
        for key, value in stores["memory"].items():
            for x, y in zip(_flatten(value), _flatten(stores["spooled"][key])):
                np.testing.assert_array_equal(x, y)


def _flatten(value):
    if isinstance(value, np.ndarray):
        return [value]
    return [leaf for item in value for leaf in _flatten(item)]


def _spooled_record(folder: str, video_id: str, rows: np.ndarray) -> VideoRecord:
    buffer = RowBuffer(len(rows), rows.shape[1], rows.dtype, folder)
    assert buffer.spooled
    buffer[list(range(len(rows)))] = rows
    info = {"fps": 25.0, "duration_s": len(rows) / 25, "width": 64, "height": 48, "num_frames": len(rows),
            "start_time_s": 0.0, "rotation": 0}
    return VideoRecord(video_id, f"/videos/{video_id}", info, buffer.finish(), np.arange(len(rows)) * 40.0)


def _attrs(dim: int) -> dict:
    return {"format": "vfeat-store", "format_version": 1, "model": {"name": "t"}, "sampling": {"mode": "all"}, "dtype": "float16",
            "embed_dim": dim, "preprocess": {}, "has_frames": True, "has_clips": False}


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_killed_run_replays_spooled_videos_and_drops_orphan_spool_files(tmp_path, small_spool, suffix):
    shard = str(tmp_path / f"s{suffix}")
    rows = np.random.default_rng(4).standard_normal((40, 16)).astype(np.float16)
    writer = ShardWriter(shard, _attrs(16))
    record = _spooled_record(writer.spool_dir, "long.mp4", rows)
    # the run dies after the journal part is written but before it is merged (what an HDF5 run does
    # until it closes), with another video's spool file half written
    part = Path(journal_dir(shard)) / "part-00000000000000000001-deadbeef.pkl"
    part.write_bytes(pickle.dumps(Batch(videos=[record]), protocol=5))
    orphan = Path(writer.spool_dir) / "rows-0123.bin"
    orphan.write_bytes(b"\0" * 100)
    del writer

    reopened = ShardWriter(shard, _attrs(16))
    assert reopened.committed == {"long.mp4"}
    reopened.close()
    with vfeat.open_store(shard) as store:
        features, times = store["long.mp4"]
    np.testing.assert_array_equal(features, rows)
    np.testing.assert_array_equal(times, np.arange(40) * 40.0)
    assert not Path(record.features.path).exists() and not orphan.exists() and not Path(journal_dir(shard)).exists()


def test_a_part_whose_spool_file_is_gone_is_dropped_and_the_video_redone(tmp_path, small_spool, capfd):
    shard = str(tmp_path / "s.zarr")
    rows = np.ones((40, 16), np.float16)
    writer = ShardWriter(shard, _attrs(16))
    record = _spooled_record(str(tmp_path / "elsewhere"), "lost.mp4", rows)
    Path(journal_dir(shard)).mkdir(exist_ok=True)
    (Path(journal_dir(shard)) / "part-00000000000000000001-deadbeef.pkl").write_bytes(pickle.dumps(Batch(videos=[record])))
    Path(record.features.path).unlink()
    del writer

    reopened = ShardWriter(shard, _attrs(16))
    assert reopened.committed == set()
    reopened.close()
    err = capfd.readouterr().err
    assert "/videos/lost.mp4" in err and "extracted again" in err
    assert not Path(journal_dir(shard)).exists()
