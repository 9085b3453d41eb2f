"""``vfeat.extract`` end to end, against independent computations:

- features: open_clip's own path (the ffmpeg CLI decodes the frame at the stored timestamp to rgb24, PIL,
  the model's own preprocess from ``open_clip.create_model_and_transforms``, ``encode_image``), compared with
  the centred cosine (mean over the compared frames of a video subtracted) >= 0.98, for .zarr and .h5 and for
  both weight formats;
- timestamps and row counts: ffprobe's frame times and the player's rule, for CFR, 29.97, VFR, MPEG-TS with a
  start offset, rotation;
- bad input: each failure recorded with the file and the reason, the run goes on;
- bad flags and colliding ids: refused before any work (no store is created).
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

import vfeat
from conftest import ffmpeg_rgb_frames, ffprobe, frames_on_screen_oracle, make_video, run_ffmpeg
from vfeat.errors import InputError, ModelError
from vfeat.models.weights import drop_archive_extras, is_torchscript_archive, read_state_dict

MIN_CENTRED_COSINE = 0.98
FEATURE_FPS = 5.0


def centred_cosine(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    a = ours.astype(np.float64) - ours.astype(np.float64).mean(axis=0)
    b = reference.astype(np.float64) - reference.astype(np.float64).mean(axis=0)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def rows_of(store_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """video id -> (features, timestamps_ms), read with plain zarr / h5py."""
    if store_path.suffix == ".zarr":
        group = zarr.open_group(str(store_path), mode="r")
        ids, offsets = [str(i) for i in group["videos/id"][:]], group["offsets"][:]
        feats, stamps = group["features"][:], group["timestamps_ms"][:]
    else:
        with h5py.File(store_path, "r") as handle:
            ids, offsets = list(handle["videos/id"].asstr()[:]), handle["offsets"][:]
            feats, stamps = handle["features"][:], handle["timestamps_ms"][:]
    return {vid: (feats[offsets[i]:offsets[i + 1]], stamps[offsets[i]:offsets[i + 1]]) for i, vid in enumerate(ids)}


def frame_indices_at(path: Path, stamps_ms: np.ndarray) -> list[int]:
    """ffprobe's index of the frame shown at each stored timestamp (each must be a real frame time)."""
    times = np.array([float(s) * 1000 for s in ffprobe(path).seconds])
    out = []
    for stamp in stamps_ms:
        i = int(np.argmin(np.abs(times - stamp)))
        assert abs(times[i] - stamp) < 1e-6, f"{path.name}: {stamp} ms is no frame time"
        out.append(i)
    return out


# -- features against open_clip's own path --------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_model(tiny_model):
    """The model and preprocessing exactly as open_clip builds them from the saved state dict."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_model.name, pretrained=tiny_model.state_dict)
    return model.eval(), preprocess


def reference_features(reference_model, path: Path, stamps_ms: np.ndarray) -> np.ndarray:
    from PIL import Image

    model, preprocess = reference_model
    frames = ffmpeg_rgb_frames(path, frame_indices_at(path, stamps_ms))
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.fromarray(frame)) for frame in frames])
        return model.encode_image(batch).numpy()


@pytest.fixture(scope="module")
def feature_videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("feature-videos")
    land = make_video(d, "land420.mp4", 2.0, 25, (320, 240))
    rotated = d / "land420_rot90.mp4"
    run_ffmpeg(["-i", land, "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated])
    return {
        "land444.mp4": make_video(d, "land444.mp4", 2.0, 25, (320, 240), "libx264", "yuv444p"),
        "port444.mp4": make_video(d, "port444.mp4", 2.0, 25, (240, 320), "libx264", "yuv444p"),
        "land420.mp4": land,
        "port420.mp4": make_video(d, "port420.mp4", 2.0, 25, (240, 320)),
        "land420_rot90.mp4": rotated,
    }


@pytest.fixture(scope="module")
def feature_stores(tmp_path_factory, tiny_model, feature_videos) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("feature-stores")
    stores = {}
    inputs = [str(feature_videos["land444.mp4"]), str(feature_videos["port444.mp4"])]
    for suffix in (".zarr", ".h5"):
        for weights in ("state_dict", "archive"):
            path = out / f"{weights}{suffix}"
            summary = vfeat.extract(inputs, str(path), fps=FEATURE_FPS, workers=0,
                                    **tiny_model.extract_kwargs(getattr(tiny_model, weights)))
            assert (summary.videos_ok, summary.videos_failed) == (2, 0)
            stores[(suffix, weights)] = path
    return stores


@pytest.mark.parametrize("weights", ["state_dict", "archive"])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_features_equal_open_clip_path(feature_stores, feature_videos, reference_model, suffix, weights):
    stored = rows_of(feature_stores[(suffix, weights)])
    assert sorted(stored) == ["land444.mp4", "port444.mp4"]
    for video_id, (features, stamps) in stored.items():
        assert len(stamps) == 10  # 2 s at 5 fps
        reference = reference_features(reference_model, feature_videos[video_id], stamps)
        cos = centred_cosine(features, reference)
        assert cos.min() >= MIN_CENTRED_COSINE, (video_id, cos.round(4).tolist())


def test_both_weight_formats_and_both_shard_formats_store_the_same_numbers(feature_stores):
    base = rows_of(feature_stores[(".zarr", "state_dict")])
    for key, path in feature_stores.items():
        other = rows_of(path)
        for video_id in base:
            np.testing.assert_array_equal(other[video_id][1], base[video_id][1])
            np.testing.assert_allclose(other[video_id][0].astype(np.float32), base[video_id][0].astype(np.float32),
                                       rtol=0, atol=2e-3, err_msg=str(key))


@pytest.mark.parametrize("weights", ["state_dict", "archive"])
def test_store_records_the_weight_file_and_its_hash(feature_stores, tiny_model, weights):
    group = zarr.open_group(str(feature_stores[(".zarr", weights)]), mode="r")
    model = dict(group.attrs)["model"]
    path = getattr(tiny_model, weights)
    assert model["pretrained"] == path
    assert model["checkpoint_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_torchscript_fixture_is_an_openai_style_archive_with_the_same_weights(tiny_model):
    import open_clip

    assert is_torchscript_archive(tiny_model.archive)
    assert not is_torchscript_archive(tiny_model.state_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        archive = torch.jit.load(tiny_model.archive, map_location="cpu").state_dict()
    assert {"input_resolution", "context_length", "vocab_size"} <= set(archive)
    assert archive["visual.conv1.weight"].dtype == torch.float16  # as OpenAI ships them
    state = torch.load(tiny_model.state_dict, map_location="cpu")
    weights = drop_archive_extras(read_state_dict(tiny_model.archive))
    assert set(weights) == set(state)
    assert all(torch.equal(weights[k].float(), state[k]) for k in state)
    # Loaded through vfeat's front door, both files give open_clip's model with identical parameters.
    reference, _, _ = open_clip.create_model_and_transforms(tiny_model.name, pretrained=tiny_model.state_dict)
    expected = reference.state_dict()
    for path in (tiny_model.state_dict, tiny_model.archive):
        encoder = vfeat.load_model(tiny_model.name, path, config=tiny_model.config, device="cpu", precision="fp32")
        got = encoder.model.state_dict()
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected), path


REAL_420 = ["land420.mp4", "port420.mp4", "land420_rot90.mp4", "bigbuckbunny.mp4"]


@pytest.mark.parametrize("video_id", REAL_420)
def test_features_equal_open_clip_path_for_420_sources(tmp_path, tiny_model, feature_videos, reference_model, repo_root, video_id):
    path = feature_videos.get(video_id) or repo_root / "sample" / video_id
    store = tmp_path / "feats.zarr"
    vfeat.extract([str(path)], str(store), fps=FEATURE_FPS, workers=0, **tiny_model.extract_kwargs())
    features, stamps = rows_of(store)[path.name]
    assert len(stamps) >= 10
    cos = centred_cosine(features, reference_features(reference_model, path, stamps))
    assert cos.min() >= MIN_CENTRED_COSINE, cos.round(4).tolist()


# -- timestamps and row counts through the pipeline --------------------------------------------------------

VFR_EXPR = "if(lt(N,10),N*40,400+(N-10)*100)"  # pts in ms


@pytest.fixture(scope="module")
def timing_videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("timing-videos")
    base = make_video(d, "cfr25.mp4", 2.0, 25, (96, 64))
    rotated = d / "rot90.mp4"
    run_ffmpeg(["-i", base, "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated])
    return {
        "cfr25.mp4": base,
        "ntsc.mp4": make_video(d, "ntsc.mp4", 3.0, "30000/1001", (96, 64)),
        "vfr.mp4": make_video(d, "vfr.mp4", 2.0, 25, (96, 64), "libx264", "yuv420p", "-fps_mode", "passthrough",
                              "-enc_time_base", "1/1000", "-video_track_timescale", "1000",
                              vf=f"settb=1/1000,setpts='{VFR_EXPR}'"),
        "start.ts": make_video(d, "start.ts", 2.0, 25, (96, 64), "libx264", "yuv420p", "-f", "mpegts"),
        "rot90.mp4": rotated,
        "short.mp4": make_video(d, "short.mp4", 0.04, 25, (96, 64)),
    }


def duration_bounds(path: Path) -> tuple[Fraction, Fraction]:
    """The video's duration: frames / rate for constant-rate files; for the VFR file, the last frame lasts
    between its shortest and its longest frame gap."""
    oracle = ffprobe(path)
    seconds = oracle.seconds
    if path.name == "vfr.mp4":
        gaps = [b - a for a, b in zip(seconds, seconds[1:])]
        return seconds[-1] + min(gaps), seconds[-1] + max(gaps)
    exact = oracle.count / oracle.avg_frame_rate
    return exact, exact


def expected_stamps(path: Path, plan: dict) -> list[float]:
    seconds = ffprobe(path).seconds
    if plan.get("fps") is None and plan.get("num_frames") is None:
        return [float(s * 1000) for s in seconds]
    answers = []
    for duration in duration_bounds(path):
        if "fps" in plan:
            rate = Fraction(str(plan["fps"]))
            targets = [Fraction(k) / rate for k in range(max(1, math.ceil(duration * rate)))]
        else:
            n = plan["num_frames"]
            targets = [(k + Fraction(1, 2)) * duration / n for k in range(n)]
        answers.append([float(seconds[i] * 1000) for i in frames_on_screen_oracle(seconds, targets)])
    assert answers[0] == answers[1], "fixture too close to a boundary: the answer depends on the last frame's length"
    return answers[0]


@pytest.mark.parametrize("plan, workers, batch_size", [
    ({"fps": 1.5}, 1, 3),  # decode worker process, batches of 3 frames that span videos
    ({"fps": 1.5}, 0, 64),
    ({"num_frames": 5}, 0, 64),
    ({}, 0, 16),
])
def test_stored_timestamps_are_true_frame_times(tmp_path, tiny_model, timing_videos, plan, workers, batch_size):
    store = tmp_path / "t.h5"
    names = list(timing_videos) if "num_frames" not in plan else ["cfr25.mp4", "ntsc.mp4", "start.ts", "rot90.mp4"]
    summary = vfeat.extract([str(timing_videos[n]) for n in names], str(store), workers=workers, batch_size=batch_size,
                            **plan, **tiny_model.extract_kwargs())
    assert (summary.videos_ok, summary.videos_failed, summary.frames) == (len(names), 0, summary.frames)
    stored = rows_of(store)
    assert sorted(stored) == sorted(names)
    for name in names:
        features, stamps = stored[name]
        np.testing.assert_allclose(stamps, expected_stamps(timing_videos[name], plan), rtol=0, atol=1e-6, err_msg=name)
        assert features.shape == (len(stamps), 32) and np.isfinite(features.astype(np.float32)).all()
    assert summary.frames == sum(len(s) for _, s in stored.values())
    with h5py.File(store, "r") as handle:
        ids = list(handle["videos/id"].asstr()[:])
        ts = ids.index("start.ts")
        assert handle["videos/start_time_s"][ts] == pytest.approx(float(ffprobe(timing_videos["start.ts"]).start_s), abs=1e-9)
        rot = ids.index("rot90.mp4")
        assert (handle["videos/width"][rot], handle["videos/height"][rot], handle["videos/rotation"][rot] % 180) == (64, 96, 90)


def test_batches_across_videos_and_workers_give_the_same_rows(tmp_path, tiny_model):
    """Frames of several videos share a batch (and come from a worker process); each row must still land in
    its own video: the same rows as one frame per batch, decoded in-process."""
    d = tmp_path / "videos"
    sources = {"testsrc": 1.4, "smptebars": 0.9, "rgbtestsrc": 0.3, "testsrc2": 1.1}
    inputs = [str(make_video(d, f"{src}.mp4", duration, 25, (96, 64), source=src)) for src, duration in sources.items()]
    one = tmp_path / "one.zarr"
    many = tmp_path / "many.zarr"
    vfeat.extract(inputs, str(one), fps=2.0, workers=0, batch_size=1, **tiny_model.extract_kwargs())
    vfeat.extract(inputs, str(many), fps=2.0, workers=1, batch_size=7, **tiny_model.extract_kwargs())
    a, b = rows_of(one), rows_of(many)
    assert sorted(a) == sorted(b) == sorted(f"{src}.mp4" for src in sources)
    for name in a:
        np.testing.assert_array_equal(a[name][1], b[name][1])
        np.testing.assert_allclose(a[name][0].astype(np.float32), b[name][0].astype(np.float32), rtol=0, atol=2e-3)
    # The videos look different, so a row filed under the wrong video would break the comparison above.
    firsts = [a[f"{src}.mp4"][0][0].astype(np.float32) for src in sources]
    assert min(np.abs(x - y).max() for i, x in enumerate(firsts) for y in firsts[i + 1:]) > 0.05


def test_clips_are_means_of_their_frames(tmp_path, tiny_model, timing_videos):
    store = tmp_path / "clips.zarr"
    vfeat.extract([str(timing_videos["ntsc.mp4"])], str(store), clips=2, clip_len=3, stride=4, workers=0,
                  dtype="float32", **tiny_model.extract_kwargs())
    group = zarr.open_group(str(store), mode="r")
    seconds = ffprobe(timing_videos["ntsc.mp4"]).seconds  # 90 frames: span 9, room 81 -> starts 0 and 81
    indices = [0, 4, 8, 81, 85, 89]
    np.testing.assert_allclose(group["timestamps_ms"][:], [float(seconds[i] * 1000) for i in indices], rtol=0, atol=1e-6)
    frames = group["features"][:]
    assert group["clips/offsets"][:].tolist() == [0, 2]
    np.testing.assert_allclose(group["clips/features"][:], [frames[:3].mean(0), frames[3:].mean(0)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(group["clips/start_ms"][:], [float(seconds[0] * 1000), float(seconds[81] * 1000)], atol=1e-6)
    np.testing.assert_allclose(group["clips/end_ms"][:], [float(seconds[8] * 1000), float(seconds[89] * 1000)], atol=1e-6)
    assert dict(group.attrs)["has_clips"] is True


def test_random_weights_are_marked(tmp_path, tiny_model, timing_videos):
    store = tmp_path / "r.zarr"
    vfeat.extract([str(timing_videos["short.mp4"])], str(store), fps=1.0, workers=0,
                  **tiny_model.extract_kwargs("none"))
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["random_weights"] is True and attrs["model"]["pretrained"] == "none"
    assert attrs["model"]["checkpoint_sha256"] is None


# -- bad input: recorded, the run goes on ------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, timing_videos) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-inputs")
    files = {"good": timing_videos["cfr25.mp4"]}
    files["missing"] = d / "missing.mp4"
    (files.setdefault("empty", d / "zero_bytes.mp4")).write_bytes(b"")
    data = timing_videos["cfr25.mp4"].read_bytes()
    (files.setdefault("truncated", d / "cut_short.mp4")).write_bytes(data[: len(data) * 30 // 100])
    (files.setdefault("text", d / "notes.mp4")).write_text("shopping list: milk, eggs\n" * 40)
    files["audio"] = d / "tone.m4a"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", files["audio"]])
    mkv = d / "ok.mkv"
    make_video(d, "ok.mkv", 1.0, 25, (96, 64))
    files["codec"] = d / "unknown_codec.mkv"
    files["codec"].write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/AVC"))
    return files


BAD_REASONS = {
    "missing": "file not found",
    "empty": None,  # any reason, see test_decode.py for the wording
    "truncated": None,
    "text": "not a video file",
    "audio": "no video stream (only audio streams)",
    "codec": "unsupported video codec",
}


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path, tiny_model, bad_inputs, suffix):
    store = tmp_path / f"s{suffix}"
    order = ["missing", "empty", "good", "truncated", "text", "audio", "codec"]
    summary = vfeat.extract([str(bad_inputs[k]) for k in order], str(store), fps=1.0, workers=0, **tiny_model.extract_kwargs())
    assert (summary.videos_total, summary.videos_ok, summary.videos_failed) == (7, 1, 6)
    assert not summary.ok
    by_path = {f.path: f for f in summary.failures}
    assert sorted(by_path) == sorted(str(bad_inputs[k]) for k in BAD_REASONS)
    for kind, reason in BAD_REASONS.items():
        failure = by_path[str(bad_inputs[kind])]
        assert failure.video_id == bad_inputs[kind].name
        assert failure.error.startswith(f"{bad_inputs[kind]}: ") and "\n" not in failure.error
        if reason:
            assert reason in failure.error
    # The store holds the good video and one failure record per bad file (plain readers).
    assert sorted(rows_of(store)) == ["cfr25.mp4"]
    if suffix == ".zarr":
        group = zarr.open_group(str(store), mode="r")
        recorded = dict(zip((str(p) for p in group["failures/path"][:]), (str(e) for e in group["failures/error"][:])))
    else:
        with h5py.File(store, "r") as handle:
            recorded = dict(zip(handle["failures/path"].asstr()[:], handle["failures/error"].asstr()[:]))
    assert recorded == {path: f.error for path, f in by_path.items()}


# -- refused before any work -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"dtype": "float8"}, InputError, "Invalid --dtype (float8). Choose from: float16, float32."),
    ({"precision": "fp8"}, InputError, "Invalid --precision (fp8). Choose from: auto, fp32, fp16, bf16."),
    ({"batch_size": 0}, InputError, "Invalid --batch-size (0). It must be >= 1."),
    ({"workers": -1}, InputError, "Invalid --workers (-1). It must be >= 0 (0 decodes in the main process)."),
    ({"fps": 0.0}, InputError, "Invalid --fps (0.0). It must be > 0."),
    ({"device": "tpu"}, InputError, "Invalid --device (tpu). Use auto, cpu, cuda or cuda:N."),
])
def test_bad_flags_refused_before_any_work(tmp_path, tiny_model, timing_videos, kwargs, error, message):
    store = tmp_path / "never.zarr"
    options = {"fps": 1.0, **tiny_model.extract_kwargs(), **kwargs}
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        vfeat.extract([str(timing_videos["short.mp4"])], str(store), workers=options.pop("workers", 0), **options)
    assert not store.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_cuda_device_without_gpu(tmp_path, tiny_model, timing_videos):
    store = tmp_path / "never.zarr"
    options = {**tiny_model.extract_kwargs(), "device": "cuda:0"}
    with pytest.raises(InputError, match=f"^{re.escape('--device cuda:0: no CUDA GPU is available on this machine.')}$"):
        vfeat.extract([str(timing_videos["short.mp4"])], str(store), fps=1.0, workers=0, **options)
    assert not store.exists()


def test_unknown_model_suggests_close_names(tmp_path, timing_videos):
    with pytest.raises(InputError, match=r"^Unknown --model 'ViT-B-33'\. Did you mean: .*ViT-B-32.*\? Run `vfeat models`"):
        vfeat.extract([str(timing_videos["short.mp4"])], str(tmp_path / "x.zarr"), model="ViT-B-33", pretrained="none", fps=1.0)
    assert not (tmp_path / "x.zarr").exists()


def test_missing_weight_file_names_it(tmp_path, tiny_model, timing_videos):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(ModelError, match=f"^{re.escape(str(missing))}: weight file not found$"):
        vfeat.extract([str(timing_videos["short.mp4"])], str(tmp_path / "x.zarr"), fps=1.0,
                      **tiny_model.extract_kwargs(str(missing)))
    with pytest.raises(ModelError, match=f"^{re.escape(str(tmp_path))}: a directory, not a weight file$"):
        vfeat.extract([str(timing_videos["short.mp4"])], str(tmp_path / "x.zarr"), fps=1.0,
                      **tiny_model.extract_kwargs(str(tmp_path)))


def test_colliding_ids_refused_before_any_work(tmp_path, tiny_model, timing_videos):
    a = tmp_path / "day1" / "a.mp4"
    b = tmp_path / "day2" / "a.mp4"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(timing_videos["short.mp4"].read_bytes())
    store = tmp_path / "never.h5"
    with pytest.raises(InputError, match=f"^1 video id\\(s\\) collide: 'a.mp4' \\({re.escape(str(a))} and {re.escape(str(b))}\\)"):
        vfeat.extract([str(a), str(b)], str(store), fps=1.0, workers=0, **tiny_model.extract_kwargs())
    assert not store.exists()


def test_directory_without_videos_refused(tmp_path, tiny_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("no videos here")
    with pytest.raises(InputError, match=f"^{re.escape(str(folder))}: directory holds no video files"):
        vfeat.extract([str(folder)], str(tmp_path / "never.zarr"), fps=1.0, **tiny_model.extract_kwargs())
    assert not (tmp_path / "never.zarr").exists()
