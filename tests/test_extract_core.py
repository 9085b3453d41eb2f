"""Core extraction checks against independent oracles (ffprobe timestamps, plain zarr/h5py reads,
hand-computed sampling), bad input and resume (kill -9 recovery: test_resume.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import vfeat
from vfeat.cli import app
from vfeat.errors import InputError
from vfeat.sampling import SamplingPlan, frames_on_screen, select_frames, target_times_s

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "vfeat-tiny-vit", "--model-config", str(REPO / "tests" / "data" / "vfeat-tiny-vit.json"), "--pretrained", "none"]
runner = CliRunner()


def make_video(path: Path, duration: float, rate: str = "25", size: str = "96x64", extra: list[str] | None = None,
               source: str = "testsrc2") -> Path:
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}", "-t", str(duration)]
    cmd += extra or ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    subprocess.run(cmd + [str(path)], check=True)
    return path


def ffprobe_times(path: Path) -> np.ndarray:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True).stdout
    times = np.array(sorted(float(x.strip().rstrip(",")) for x in out.split() if x.strip()))
    return times - times[0]


# -- sampling (pure, hand-computed) ---------------------------------------------------------------------
def test_fps_targets_and_frame_on_screen():
    assert target_times_s(SamplingPlan(fps=1), 3.5).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert target_times_s(SamplingPlan(fps=2), 0.04).tolist() == [0.0]  # shorter than 1/F: first frame
    stamps = np.array([0.0, 0.4, 0.9, 1.5])
    assert frames_on_screen(stamps, np.array([0.0, 0.5, 1.0, 1.49, 2.0])).tolist() == [0, 1, 2, 2, 3]


def test_num_frames_segment_centres_and_clips():
    assert np.allclose(target_times_s(SamplingPlan(num_frames=4), 8.0), [1.0, 3.0, 5.0, 7.0])
    stamps = np.arange(100) / 25.0
    sel = select_frames(SamplingPlan(clips=3, clip_len=4, stride=2), stamps, 4.0)
    assert sel.frame_indices.reshape(3, 4).tolist() == [[0, 2, 4, 6], [46, 48, 50, 52], [93, 95, 97, 99]]


@pytest.mark.parametrize("kwargs, message", [
    ({"fps": 0}, r"Invalid --fps \(0\). It must be > 0."),
    ({"num_frames": 0}, r"Invalid --num-frames \(0\)"),
    ({"fps": 1, "num_frames": 3}, "Choose one sampling mode"),
    ({"clips": 2}, r"--clips needs --clip-len"),
])
def test_bad_sampling_flags(kwargs, message):
    with pytest.raises(InputError, match=message):
        SamplingPlan(**kwargs)


# -- decode against ffprobe ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, rate, extra", [
    ("ntsc.mp4", "30000/1001", None),
    ("ts_start.ts", "25", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mpegts"]),
    ("tenbit.mkv", "25", ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"]),
    ("odd.mkv", "25", ["-c:v", "ffv1", "-s", "97x61"]),
])
def test_probe_timestamps_match_ffprobe(tmp_path, name, rate, extra):
    from vfeat.decode import probe

    path = make_video(tmp_path / name, 2.2, rate, extra=extra)
    probed = probe(str(path))
    expected = ffprobe_times(path)
    assert probed.info.num_frames == len(expected)
    np.testing.assert_allclose(probed.timestamps_s, expected, atol=1e-3)


def test_fps_one_selects_frame_on_screen_with_true_times(tmp_path):
    path = make_video(tmp_path / "ntsc.mp4", 5.0, "30000/1001")
    store = tmp_path / "s.zarr"
    result = runner.invoke(app, ["extract", str(path), "--out", str(store), "--fps", "1", "--no-progress", "--workers", "0", *TINY])
    assert result.exit_code == 0, result.output
    truth = ffprobe_times(path)
    duration = len(truth) * 1001 / 30000
    targets = np.arange(int(np.ceil(duration))) * 1.0
    expected = [truth[truth <= t + 1e-9].max() * 1000 for t in targets]
    group = zarr.open_group(str(store), mode="r")
    np.testing.assert_allclose(group["timestamps_ms"][:], expected, atol=0.5)
    assert group["offsets"][:].tolist() == [0, len(targets)]


# -- store layout with plain zarr / h5py ------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_store_layout_readable_without_vfeat(tmp_path, suffix):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    make_video(folder / "a.mp4", 2.0)
    make_video(folder / "sub" / "b.mp4", 3.0, size="64x96")
    store = tmp_path / f"s{suffix}"
    result = runner.invoke(app, ["extract", str(folder), "--out", str(store), "--fps", "1", "--no-progress", "--workers", "1", *TINY])
    assert result.exit_code == 0, result.output
    if suffix == ".zarr":
        root = zarr.open_group(str(store), mode="r")
        ids, attrs = list(root["videos/id"][:]), dict(root.attrs)
        model = attrs["model"]
        offsets, feats, heights = root["offsets"][:], root["features"][:], root["videos/height"][:]
    else:
        with h5py.File(store) as root:
            ids = list(root["videos/id"].asstr()[:])
            model = json.loads(root.attrs["model"])
            attrs = {"dtype": root.attrs["dtype"], "normalized": bool(root.attrs["normalized"]), "embed_dim": int(root.attrs["embed_dim"])}
            offsets, feats, heights = root["offsets"][:], root["features"][:], root["videos/height"][:]
    assert sorted(ids) == ["a.mp4", "sub/b.mp4"]
    assert offsets.tolist() == [0, 2, 5] if ids[0] == "a.mp4" else [0, 3, 5]
    assert feats.shape == (5, 32) and feats.dtype == np.float16
    assert attrs["dtype"] == "float16" and attrs["normalized"] is False and attrs["embed_dim"] == 32
    assert model["pretrained"] == "none"
    assert sorted(heights.tolist()) == [64, 96]


# -- bad input ------------------------------------------------------------------------------------
def test_bad_inputs_are_recorded_and_the_run_continues(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    good = make_video(folder / "good.mp4", 2.0)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video at all\n" * 50)
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(folder / "audio.mp4")], check=True)
    store = tmp_path / "s.zarr"
    proc = subprocess.run([sys.executable, "-m", "vfeat.cli", "extract", str(folder), str(tmp_path / "missing.mp4"), "--out", str(store),
                           "--fps", "1", "--no-progress", *TINY], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    for name, reason in [("empty.mp4", ""), ("text.mp4", ""), ("truncated.mp4", ""), ("audio.mp4", "no video stream"), ("missing.mp4", "file not found")]:
        lines = [l for l in proc.stderr.splitlines() if name in l and l.startswith("vfeat: failed")]
        assert len(lines) == 1 and reason in lines[0], (name, proc.stderr)
    info = json.loads(subprocess.run([sys.executable, "-m", "vfeat.cli", "info", str(store), "--json"], capture_output=True, text=True, check=True).stdout)
    assert info["videos"] == 1
    assert sorted(Path(f["path"]).name for f in info["failures"]) == ["audio.mp4", "empty.mp4", "missing.mp4", "text.mp4", "truncated.mp4"]


def test_colliding_ids_refused_before_work(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        make_video(tmp_path / sub / "a.mp4", 1.0)
    result = runner.invoke(app, ["extract", str(tmp_path / "x" / "a.mp4"), str(tmp_path / "y" / "a.mp4"), "--out", str(tmp_path / "s.zarr"), "--fps", "1", *TINY])
    assert result.exit_code == 2 and "collide" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_a_mistyped_option_of_the_python_api_is_named(tmp_path):
    """``vfeat.extract(..., fsp=1)``: the unknown keyword is named before any work (it used to reach the model
    families and come back as an option that does not apply to CLIP models)."""
    video = make_video(tmp_path / "a.mp4", 1.0)
    with pytest.raises(vfeat.InputError, match=r"^extract\(\) got unknown option\(s\) fsp; model options are alpha, "
                                               r"cache_dir, clip_weights, patching_ratio, weights_tag, wise_with\.$"):
        vfeat.extract([str(video)], str(tmp_path / "s.zarr"), fsp=1)
    assert not (tmp_path / "s.zarr").exists()


# -- resume and kill -9 -------------------------------------------------------------------------------
def _read(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with vfeat.open_store(str(store)) as opened:
        return {vid: opened[vid] for vid in opened.ids}


def test_resume_skips_and_appends_and_refuses_other_settings(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", 2.0)
    store = tmp_path / "s.h5"
    args = ["extract", str(folder), "--out", str(store), "--fps", "1", "--no-progress", "--workers", "0", *TINY]
    assert runner.invoke(app, args).exit_code == 0
    first = _read(store)
    make_video(folder / "b.mp4", 1.0)
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "1 stored" in result.output and "1 already in the store" in result.output
    second = _read(store)
    assert sorted(second) == ["a.mp4", "b.mp4"]
    np.testing.assert_array_equal(first["a.mp4"][0], second["a.mp4"][0])
    result = runner.invoke(app, [*args[:4], "--fps", "2", *args[6:]])
    assert result.exit_code == 2 and "sampling" in result.output


# kill -9 at chosen moments of a run (after its first journal part, between commits, ...): test_resume.py.
