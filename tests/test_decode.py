"""Decoding against the ffmpeg CLI: ffprobe's decoded frame times are the truth for timestamps, frame
counts and start times; ``ffmpeg -i ... -pix_fmt rgb24`` (autorotation on) is the truth for pixels."""

from __future__ import annotations

import math
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video, run_ffmpeg
from vfeat.decode import Resize, decode_selected, probe
from vfeat.errors import DecodeError
from vfeat.sampling import SamplingPlan, select_frames

VFR_EXPR = "if(lt(N,10),N*40,400+(N-10)*100)"  # pts in ms: 10 frames 40 ms apart, then 100 ms apart


def _rotated(src: Path, degrees: int) -> Path:
    """``ffmpeg -i SRC -c copy -metadata:s:v:0 rotate=D``: same pixels, a display matrix on top."""
    out = src.with_name(f"{src.stem}_rot{degrees}.mp4")
    run_ffmpeg(["-i", src, "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", out])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("decode")
    base = make_video(d, "cfr25.mp4", 2.0, 25, (96, 64))  # libx264 default: B-frames
    return {
        "cfr25": base,
        "ntsc": make_video(d, "ntsc.mp4", 2.0, "30000/1001", (96, 64)),
        "vfr": make_video(d, "vfr.mp4", 2.0, 25, (96, 64), "libx264", "yuv420p", "-fps_mode", "passthrough",
                          "-enc_time_base", "1/1000", "-video_track_timescale", "1000",
                          vf=f"settb=1/1000,setpts='{VFR_EXPR}'"),
        "mpegts": make_video(d, "start.ts", 2.0, 25, (96, 64), "libx264", "yuv420p", "-f", "mpegts"),
        "mkv": make_video(d, "clip.mkv", 1.0, 25, (96, 64)),
        "rot90": _rotated(base, 90),
        "rot270": _rotated(base, 270),
        "odd444": make_video(d, "odd444.mp4", 1.0, 25, (320, 240), "libx264", "yuv444p", vf="scale=161:97"),
        "odd420_gray": make_video(d, "odd420.mp4", 1.0, 25, (320, 240), "mpeg4", "yuv420p", "-q:v", "2",
                                  vf="scale=161:97,format=gray"),
        "odd420": make_video(d, "odd420c.mp4", 1.0, 25, (320, 240), "mpeg4", "yuv420p", "-q:v", "2", vf="scale=161:97"),
        "ten444": make_video(d, "ten444.mp4", 1.0, 25, (96, 64), "libx264", "yuv444p10le"),
        "ten420_gray": make_video(d, "ten420g.mp4", 1.0, 25, (96, 64), "libx264", "yuv420p10le", vf="format=gray"),
        "ten420": make_video(d, "ten420.mp4", 1.0, 25, (96, 64), "libx264", "yuv420p10le"),
    }


# -- probe: times, counts, sizes -------------------------------------------------------------------------

PROBED = ["cfr25", "ntsc", "vfr", "mpegts", "mkv", "rot90", "rot270", "odd444", "odd420", "ten444", "ten420"]


@pytest.mark.parametrize("kind", PROBED)
def test_probe_matches_ffprobe(corpus, probe_oracle, kind):
    path = corpus[kind]
    oracle = probe_oracle(path)
    got = probe(str(path))
    assert got.pts.tolist() == oracle.pts
    assert got.info.num_frames == oracle.count
    np.testing.assert_allclose(got.timestamps_s, [float(s) for s in oracle.seconds], rtol=0, atol=1e-9)
    assert got.timestamps_s[0] == 0.0
    assert got.info.start_time_s == pytest.approx(float(oracle.start_s), abs=1e-9)
    swap = oracle.rotation % 180 != 0
    assert (got.info.width, got.info.height) == ((oracle.height, oracle.width) if swap else (oracle.width, oracle.height))
    assert got.info.pix_fmt == oracle.pix_fmt
    assert got.info.codec == oracle.codec


@pytest.mark.parametrize("kind, rate, count", [
    ("cfr25", Fraction(25), 50), ("ntsc", Fraction(30000, 1001), 60), ("mpegts", Fraction(25), 50),
    ("mkv", Fraction(25), 25), ("odd444", Fraction(25), 25), ("ten444", Fraction(25), 25),
])
def test_constant_rate_duration_is_frames_over_rate(corpus, probe_oracle, kind, rate, count):
    oracle = probe_oracle(corpus[kind])
    assert (oracle.count, oracle.avg_frame_rate) == (count, rate)  # the fixture is what we think it is
    info = probe(str(corpus[kind])).info
    assert info.fps == pytest.approx(float(rate), rel=1e-12)
    assert info.duration_s == pytest.approx(float(count / rate), abs=1e-9)


def test_ntsc_frame_times_are_multiples_of_1001_over_30000(corpus):
    got = probe(str(corpus["ntsc"]))
    np.testing.assert_allclose(got.timestamps_s, [k * 1001 / 30000 for k in range(60)], rtol=0, atol=1e-9)


def test_variable_frame_rate_times(corpus, probe_oracle):
    got = probe(str(corpus["vfr"]))
    expected = [k * 0.04 for k in range(10)] + [0.4 + k * 0.1 for k in range(40)]
    np.testing.assert_allclose(got.timestamps_s, expected, rtol=0, atol=1e-9)
    # The measured duration runs to the end of the last frame, which lasts between the shortest and the
    # longest frame gap of the file (the container gives no single answer: ffprobe 5.1 reports none).
    last = expected[-1]
    assert last + 0.04 - 1e-9 <= got.info.duration_s <= last + 0.1 + 1e-9
    assert got.info.num_frames == probe_oracle(corpus["vfr"]).count == 50


def test_mpegts_start_time_is_not_zero_but_timestamps_start_at_zero(corpus, probe_oracle):
    oracle = probe_oracle(corpus["mpegts"])
    assert float(oracle.start_s) > 1.0  # ffmpeg's MPEG-TS muxer starts the clock at ~1.4 s
    got = probe(str(corpus["mpegts"]))
    assert got.info.start_time_s == pytest.approx(float(oracle.start_s), abs=1e-9)
    np.testing.assert_allclose(got.timestamps_s, np.arange(50) * 0.04, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind, rotation", [("rot90", 90), ("rot270", 270), ("cfr25", 0)])
def test_rotation_metadata(corpus, probe_oracle, kind, rotation):
    oracle = probe_oracle(corpus[kind])
    assert oracle.rotation % 360 in ({0} if rotation == 0 else {90, 270})
    info = probe(str(corpus[kind])).info
    assert info.rotation in ({0} if rotation == 0 else {90, 270})
    assert (info.width, info.height) == ((96, 64) if rotation == 0 else (64, 96))


def test_fixture_has_b_frames(corpus):
    """libx264's default GOP has B-frames: decode order differs from presentation order."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pict_type",
                          "-of", "csv=p=0", str(corpus["cfr25"])], capture_output=True, text=True, check=True).stdout
    assert "B" in out.split()


# -- pixels: exactly what the ffmpeg CLI shows -------------------------------------------------------------

EXACT = ["cfr25", "ntsc", "vfr", "mpegts", "rot90", "rot270", "odd444", "odd420_gray", "ten444", "ten420_gray"]


@pytest.mark.parametrize("kind", EXACT)
def test_full_resolution_frames_equal_ffmpeg_cli(corpus, ffmpeg_frames, kind):
    path = str(corpus[kind])
    got = probe(path)
    frames = list(decode_selected(path, got.pts, None))
    assert [pts for pts, _ in frames] == got.pts.tolist()  # presentation order, each frame once
    ours = np.stack([image for _, image in frames])
    reference = ffmpeg_frames(path)
    assert ours.shape == reference.shape == (got.info.num_frames, got.info.height, got.info.width, 3)
    assert np.array_equal(ours, reference)
    # Neighbouring frames differ, so equality pins each frame down.
    assert all(not np.array_equal(reference[i], reference[i + 1]) for i in range(len(reference) - 1))


@pytest.mark.parametrize("kind", ["odd420", "ten420"])
def test_subsampled_chroma_frames_close_to_ffmpeg_cli(corpus, ffmpeg_frames, kind):
    """4:2:0 sources whose rgb conversion is not swscale's exact fast path (odd sizes, 10 bit): the ffmpeg
    CLI here (5.1) and PyAV's libswscale place the upsampled chroma differently, so values differ near
    sharp colour edges (the grey versions of these files above are exact). Bound the difference; a wrong
    bit depth or plane layout would be off by far more."""
    path = str(corpus[kind])
    got = probe(path)
    ours = np.stack([image for _, image in decode_selected(path, got.pts, None)]).astype(np.int16)
    reference = ffmpeg_frames(path).astype(np.int16)
    assert ours.shape == reference.shape
    diff = np.abs(ours - reference)
    assert diff.mean() < 6.0
    assert np.percentile(diff, 90) <= 16


@pytest.mark.parametrize("kind, fps", [("cfr25", 1.0), ("ntsc", 3.0), ("vfr", 2.0), ("mpegts", 1.5), ("rot90", 1.0)])
def test_fps_selection_equals_ffmpeg_select(corpus, probe_oracle, ffmpeg_frames, on_screen, kind, fps):
    """The frames picked at --fps F are the frames on screen at k/F by ffprobe's times, and their pixels are
    those ``ffmpeg -vf select=eq(n,i)`` extracts."""
    path = str(corpus[kind])
    oracle = probe_oracle(path)
    got = probe(path)
    selection = select_frames(SamplingPlan(fps=fps), got.timestamps_s, got.info.duration_s)
    rate = Fraction(str(fps))
    if kind == "vfr":  # the last frame lasts between the shortest and the longest gap
        gaps = [b - a for a, b in zip(oracle.seconds, oracle.seconds[1:])]
        durations = {oracle.seconds[-1] + min(gaps), oracle.seconds[-1] + max(gaps)}
    else:
        durations = {oracle.count / oracle.avg_frame_rate}
    counts = {max(1, math.ceil(d * rate)) for d in durations}
    assert len(counts) == 1, "fixture too close to a boundary"
    count = counts.pop()
    assert len(selection.frame_indices) == count
    expected = on_screen(oracle.seconds, [Fraction(k) / rate for k in range(count)])
    assert selection.frame_indices.tolist() == expected
    wanted = np.unique(got.pts[selection.frame_indices])
    decoded = dict(decode_selected(path, wanted, None))
    ours = np.stack([decoded[int(got.pts[i])] for i in expected])
    assert np.array_equal(ours, ffmpeg_frames(path, expected))


def test_cfr25_1fps_picks_exact_second_frames(corpus):
    got = probe(str(corpus["cfr25"]))
    selection = select_frames(SamplingPlan(fps=1), got.timestamps_s, got.info.duration_s)
    assert selection.frame_indices.tolist() == [0, 25]


def test_milliseconds_are_computed_from_the_integer_pts(corpus):
    """Whole milliseconds stay whole (seconds times 1000 gave 1400.0000000000002): exact equality, as a join
    on ``timestamps_ms`` would compare them."""
    assert probe(str(corpus["cfr25"])).timestamps_ms.tolist() == [40.0 * k for k in range(50)]
    assert probe(str(corpus["ntsc"])).timestamps_ms.tolist() == [k * 1001000 / 30000 for k in range(60)]


# -- AVI: decode times only ----------------------------------------------------------------------------------

VFR_AVI = "settb=1/1000,setpts='if(lt(N,10),N*40,400+(N-10)*100)'"


@pytest.fixture(scope="module")
def avi(tmp_path_factory) -> dict[str, Path]:
    """AVI stores no presentation times. H.264 with B-frames there (x264's default B-pyramid: the decoder
    holds two pictures back) is where the demuxer's guessed times name other pictures than the decoder's."""
    d = tmp_path_factory.mktemp("avi")
    return {
        "h264_bframes": make_video(d, "bframes.avi", 2.2, 25, (96, 64), "libx264", "yuv420p", "-bf", "3"),
        "h264_bframes_vfr": make_video(d, "bframes_vfr.avi", 2.0, 25, (96, 64), "libx264", "yuv420p", "-bf", "3",
                                       "-fps_mode", "vfr", vf=VFR_AVI),
        "h264_no_bframes": make_video(d, "no_bframes.avi", 2.2, 25, (96, 64), "libx264", "yuv420p", "-bf", "0"),
        "mpeg4_bframes": make_video(d, "divx.avi", 2.2, 25, (96, 64), "mpeg4", "yuv420p", "-bf", "2", "-q:v", "2"),
        "mpeg4": make_video(d, "xvid.avi", 2.2, 25, (96, 64), "mpeg4", "yuv420p", "-q:v", "2"),
    }


def _best_effort_seconds(path: Path) -> list[float | None]:
    """ffprobe's times of the decoded frames, in output order (None where it has none: the pictures the
    decoder flushes at the end of an AVI with B-frames)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=best_effort_timestamp_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    values = [line.strip().strip(",") for line in out.splitlines() if line.strip().strip(",")]
    return [None if v == "N/A" else float(v) for v in values]


@pytest.mark.parametrize("kind", ["h264_bframes", "h264_bframes_vfr", "h264_no_bframes", "mpeg4_bframes", "mpeg4"])
def test_avi_frames_and_times_equal_ffmpeg(avi, ffmpeg_frames, kind):
    path = str(avi[kind])
    got = probe(path)
    reference = ffmpeg_frames(path)  # every picture, in the order a player shows them
    frames = list(decode_selected(path, got.pts, None, got.skip, shown_pts=got.shown_pts))
    assert [pts for pts, _ in frames] == got.pts.tolist()
    assert np.array_equal(np.stack([image for _, image in frames]), reference)
    every_fifth = got.pts[::5]
    subset = dict(decode_selected(path, every_fifth, None, got.skip, shown_pts=got.shown_pts))
    assert all(np.array_equal(subset[pts], reference[5 * i]) for i, pts in enumerate(every_fifth))
    best_effort = _best_effort_seconds(avi[kind])
    assert len(best_effort) == got.info.num_frames == len(reference)
    known = [(ours, theirs - best_effort[0]) for ours, theirs in zip(got.timestamps_ms / 1000.0, best_effort)
             if theirs is not None]
    assert len(known) >= got.info.num_frames - 2
    np.testing.assert_allclose([a for a, _ in known], [b for _, b in known], rtol=0, atol=1e-6)
    assert got.info.start_time_s == pytest.approx(best_effort[0], abs=1e-6)


def test_avi_bframes_through_the_decode_processes_path(avi, ffmpeg_frames):
    """``decode_job`` (what every engine runs) passes the probe's output-order times on to the decoder."""
    from vfeat.workers import decode_job

    path = str(avi["h264_bframes"])
    messages = list(decode_job(0, path, SamplingPlan(fps=5), None, one_clip=False))
    kinds = [m[0] for m in messages]
    assert kinds[0] == "video" and kinds[-1] == "done", messages[-1]
    timestamps_ms = messages[0][3]
    assert timestamps_ms.tolist() == [200.0 * k for k in range(11)]
    pixels = {row: image for m in messages if m[0] == "frames" for rows, image in zip(m[2], m[3]) for row in rows}
    reference = ffmpeg_frames(path, [5 * k for k in range(11)])
    assert all(np.array_equal(pixels[k], reference[k]) for k in range(11))


def test_avi_fps_of_a_variable_rate_file_is_measured(avi):
    info = probe(str(avi["h264_bframes_vfr"])).info
    assert info.num_frames == 50
    assert info.fps == pytest.approx(50 / info.duration_s)  # the header says 50 (its time base)


# -- resize at decode -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, crop", [("cfr25", 32), ("rot90", 32), ("odd444", 48), ("ten444", 24)])
def test_resize_gives_square_upright_crops(corpus, ffmpeg_frames, kind, crop):
    path = str(corpus[kind])
    got = probe(path)
    frames = [image for _, image in decode_selected(path, got.pts[:3], Resize(crop, crop))]
    assert [f.shape for f in frames] == [(crop, crop, 3)] * 3
    assert all(f.dtype == np.uint8 and f.flags["C_CONTIGUOUS"] for f in frames)
    # Orientation: the crop looks like the upright reference shrunk the same way (PIL), not a turned one.
    from PIL import Image

    reference = ffmpeg_frames(path, [0])[0]
    h, w = reference.shape[:2]
    scale = crop / min(h, w)
    small = np.asarray(Image.fromarray(reference).resize((max(crop, int(w * scale)), max(crop, int(h * scale))), Image.BICUBIC))
    top, left = round((small.shape[0] - crop) / 2), round((small.shape[1] - crop) / 2)
    upright = small[top:top + crop, left:left + crop].astype(float)
    turned = np.rot90(upright, 1)
    err_upright = np.abs(frames[0].astype(float) - upright).mean()
    assert err_upright < np.abs(frames[0].astype(float) - turned).mean()
    assert err_upright < np.abs(frames[0].astype(float) - np.rot90(upright, 2)).mean()


@pytest.mark.parametrize("kind", ["odd444", "rot90"])
@pytest.mark.parametrize("mode", ["squash", "longest", "shortest"])
def test_each_open_clip_resize_mode_gives_open_clip_pixels(corpus, ffmpeg_frames, kind, mode):
    """SigLIP, DFN and PE weights are preprocessed by squashing the frame to a square, others by keeping the
    aspect ratio (shortest side and crop; longest side and black bars): the decoder resizes as open_clip's
    own transform of the upright frame does (the same pixels up to swscale against PIL rounding)."""
    from open_clip.transform import image_transform
    from PIL import Image

    path = str(corpus[kind])
    got = probe(path)
    (ours,) = [image for _, image in decode_selected(path, got.pts[:1], Resize(64, 64, "BICUBIC", mode))]
    transform = image_transform(64, is_train=False, resize_mode=mode, interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    reference = (transform(Image.fromarray(ffmpeg_frames(path, [0])[0])).permute(1, 2, 0).numpy() * 255).round()
    assert ours.shape == reference.shape == (64, 64, 3)
    assert np.array_equal(ours.reshape(64, -1).sum(axis=1) == 0, reference.reshape(64, -1).sum(axis=1) == 0)  # black bars
    assert np.abs(ours.astype(float) - reference).mean() < 8.0  # 4:2:0 chroma placement differs (see above)
    others = [m for m in ("squash", "longest", "shortest") if m != mode]
    for other in others:  # and it is not another mode's picture
        (theirs,) = [image for _, image in decode_selected(path, got.pts[:1], Resize(64, 64, "BICUBIC", other))]
        assert np.abs(theirs.astype(float) - reference).mean() > np.abs(ours.astype(float) - reference).mean()


def test_the_models_resize_mode_reaches_the_decoder():
    from types import SimpleNamespace

    from vfeat.models.base import Preprocess
    from vfeat.pipeline import decode_resize, resize_to

    siglip_like = SimpleNamespace(preprocess=Preprocess(384, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash"))
    assert decode_resize(siglip_like) == Resize(384, 384, "BILINEAR", "squash")
    with pytest.raises(Exception, match="resize mode 'stretch' is not one vfeat knows"):
        resize_to(224, "bicubic", "stretch")


# -- bad files: one message naming the file and the reason ----------------------------------------------------

@pytest.fixture(scope="module")
def bad(tmp_path_factory, corpus) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {"missing": d / "missing.mp4", "directory": d / "folder.mp4"}
    files["directory"].mkdir()
    (files.setdefault("empty", d / "empty.mp4")).write_bytes(b"")
    data = corpus["cfr25"].read_bytes()
    (files.setdefault("truncated_mp4", d / "truncated.mp4")).write_bytes(data[: len(data) * 30 // 100])
    (files.setdefault("text", d / "notes.mp4")).write_text("these are my notes, not a video\n" * 20)
    audio = d / "tone.m4a"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", audio])
    files["audio_m4a"] = audio
    audio_mp4 = d / "tone.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", audio_mp4])
    files["audio_mp4"] = audio_mp4
    # An undecodable codec: a Matroska file whose CodecID names no codec (bytes patched in place).
    mkv = corpus["mkv"].read_bytes()
    assert mkv.count(b"V_MPEG4/ISO/AVC") == 1
    unknown = d / "unknown_codec.mkv"
    unknown.write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/AVC"))
    files["unknown_codec"] = unknown
    return files


@pytest.mark.parametrize("kind, reason", [
    ("missing", "file not found"),
    ("directory", "is a directory, not a video"),
    ("text", "not a video file (no container format recognised)"),
    ("audio_m4a", "no video stream (only audio streams)"),
    ("audio_mp4", "no video stream (only audio streams)"),
    ("unknown_codec", "unsupported video codec"),
])
def test_unreadable_file_message(bad, kind, reason):
    path = str(bad[kind])
    with pytest.raises(DecodeError, match=f"^{re.escape(path)}: {re.escape(reason)}$"):
        probe(path)


@pytest.mark.parametrize("kind", ["empty", "truncated_mp4"])
def test_empty_and_truncated_files_fail_naming_the_file(bad, kind):
    path = str(bad[kind])
    with pytest.raises(DecodeError, match=f"^{re.escape(path)}: .+"):
        probe(path)


def test_empty_file_says_it_is_empty(bad):
    path = str(bad["empty"])
    with pytest.raises(DecodeError, match=f"^{re.escape(path)}: .*empty"):
        probe(path)


def test_truncated_mp4_says_truncated(bad):
    path = str(bad["truncated_mp4"])
    with pytest.raises(DecodeError, match=f"^{re.escape(path)}: .*(truncated|moov|incomplete)"):
        probe(path)


@pytest.mark.parametrize("suffix, fmt", [(".ts", "mpegts"), (".mkv", "matroska")])
def test_truncated_stream_formats_keep_their_readable_frames(tmp_path, probe_oracle, ffmpeg_frames, suffix, fmt):
    """MPEG-TS and Matroska cut to 30%: the first part is still a video. vfeat sees exactly the frames
    ffprobe decodes, with the same times and pixels."""
    full = make_video(tmp_path, f"full{suffix}", 2.0, 25, (96, 64), "libx264", "yuv420p", "-f", fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 30 // 100])
    oracle = probe_oracle(cut)
    assert 0 < oracle.count < 50
    got = probe(str(cut))
    assert got.info.num_frames == oracle.count
    np.testing.assert_allclose(got.timestamps_s, [float(s) for s in oracle.seconds], rtol=0, atol=1e-9)
    ours = np.stack([image for _, image in decode_selected(str(cut), got.pts, None)])
    assert np.array_equal(ours, ffmpeg_frames(cut))


# -- a stream cut between keyframes --------------------------------------------------------------------

@pytest.mark.parametrize("bframes", [0, 2])
def test_stream_cut_mid_gop_starts_at_its_first_decodable_frame(tmp_path, probe_oracle, ffmpeg_frames, bframes):
    """A recording or TS segment that starts between keyframes: the packets before the first keyframe refer
    to frames that are not in the file. ffmpeg shows the video from its first decodable frame; so must we
    (before: those packets counted as frames, the first timestamp was theirs, and decoding failed)."""
    whole = make_video(tmp_path, "whole.ts", 8.0, 25, (96, 64), "libx264", "yuv420p", "-g", "50", "-bf", str(bframes),
                       "-f", "mpegts")
    data = whole.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[(len(data) // 3) // 188 * 188:])  # on a TS packet boundary, inside the second GOP
    oracle = probe_oracle(cut)
    got = probe(str(cut))
    assert got.info.num_frames == oracle.count < 200
    np.testing.assert_allclose(got.timestamps_s, [float(s) for s in oracle.seconds], rtol=0, atol=1e-9)
    assert got.info.start_time_s == pytest.approx(float(oracle.start_s))
    frames = dict(decode_selected(str(cut), got.pts, None, got.skip))
    assert np.array_equal(np.stack([frames[int(p)] for p in got.pts]), ffmpeg_frames(cut))


def test_mp4_edit_list_starting_between_keyframes(tmp_path, probe_oracle, ffmpeg_frames):
    """``ffmpeg -ss 1.3 -c copy`` keeps the GOP from the keyframe before 1.3 s and hides its head with an edit
    list: the hidden packets are still decoded (they are references) but shown by nobody."""
    source = make_video(tmp_path, "source.mp4", 6.0, 25, (96, 64), "libx264", "yuv420p", "-g", "50", "-bf", "2")
    edited = tmp_path / "edited.mp4"
    run_ffmpeg(["-ss", "1.3", "-i", source, "-c", "copy", edited])
    oracle = probe_oracle(edited)
    got = probe(str(edited))
    assert got.info.num_frames == oracle.count < 150
    np.testing.assert_allclose(got.timestamps_s, [float(s) for s in oracle.seconds], rtol=0, atol=1e-9)
    selection = select_frames(SamplingPlan(fps=1.0), got.timestamps_s, got.info.duration_s)
    indices = np.unique(selection.frame_indices)
    frames = dict(decode_selected(str(edited), got.pts[indices], None, got.skip))
    assert np.array_equal(np.stack([frames[int(got.pts[i])] for i in indices]), ffmpeg_frames(edited, indices.tolist()))


def test_cover_art_stream_is_not_the_video():
    """A still image stored as a video stream (disposition attached_pic: cover art) listed before the picture."""
    from types import SimpleNamespace

    from vfeat.decode import _video_stream

    cover = SimpleNamespace(disposition=1024, codec_context=SimpleNamespace(name="mjpeg"))
    picture = SimpleNamespace(disposition=1, codec_context=SimpleNamespace(name="h264"))
    container = SimpleNamespace(streams=SimpleNamespace(video=[cover, picture]))
    assert _video_stream(container, "x.mkv") is picture
    only_cover = SimpleNamespace(streams=SimpleNamespace(video=[cover]))
    assert _video_stream(only_cover, "x.mkv") is cover  # a file that is only a still image still decodes
