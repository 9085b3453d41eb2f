"""The ``vfeat`` command line: a couple of real invocations of the installed command (exit codes, stderr
lines, no tracebacks), the rest through Typer's CliRunner."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from conftest import make_video, run_ffmpeg, vfeat_command
from vfeat.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def one_line(text: str) -> str:
    """Rich wraps long messages at the terminal width (80 when piped); join them back."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("cli"), "clip.mp4", 1.0, 25, (96, 64))


# -- help and listing -----------------------------------------------------------------------------------

def test_top_level_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("extract", "info", "models", "export"):
        assert name in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples" in result.output
    assert f"vfeat {command} " in result.output  # the examples are invocations of this command


def test_models_lists_openai_names_and_tags():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    for name in ("ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px", "RN50"):
        assert "openai" in rows[name]["pretrained"], name
    assert "laion2b_s34b_b79k" in rows["ViT-B-32"]["pretrained"]
    table = runner.invoke(app, ["models", "ViT-B/32"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "ViT-B/32" in table.output and "openai" in table.output


def test_models_prints_whole_weight_links_on_a_narrow_terminal():
    result = runner.invoke(app, ["models", "*vclip*"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    for name in ("open-vclip-b16", "open-vclip-b32", "open-vclip-l14"):
        (line,) = [x for x in result.output.splitlines() if x.startswith(f"{name}: ")]
        assert "https://github.com/wengzejia1/Open-VCLIP" in line and "…" not in line


def test_version_and_a_pattern_that_matches_no_model():
    from vfeat import __version__

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"vfeat {__version__}"
    nothing = runner.invoke(app, ["models", "zzz*"])
    assert nothing.exit_code == 2
    assert one_line(nothing.output) == ("vfeat: error: no model name matches 'zzz*' (quote a pattern, e.g. 'ViT-B*'; "
                                        "`vfeat models` lists them all)")


def test_models_pattern_filters():
    result = runner.invoke(app, ["models", "RN50*", "--json"])
    names = [row["name"] for row in json.loads(result.output)]
    assert names and all(n.lower().startswith("rn50") for n in names)
    assert "ViT-B/32" not in names


# -- real invocations ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, tiny_model, small_video):
    """One real ``vfeat extract`` over a folder with a good video and bad files, plus a missing path."""
    d = tmp_path_factory.mktemp("cli-run")
    folder = d / "videos"
    folder.mkdir()
    shutil.copy(small_video, folder / "good.mp4")
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "letter.mp4").write_text("Dear reader, this is not a video.\n" * 30)
    data = small_video.read_bytes()
    (folder / "half.mp4").write_bytes(data[: len(data) * 30 // 100])
    run_ffmpeg(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", folder / "beep.mp4"])
    # cut short after a sample table written first (faststart): the index lists 100 frames, the file holds ~half
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-pix_fmt", "yuv420p", "-c:v", "libx264",
                "-movflags", "+faststart", d / "whole.mp4"])
    whole = (d / "whole.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    missing = d / "gone.mp4"
    store = d / "s.zarr"
    summary = d / "summary.json"
    proc = subprocess.run([*vfeat_command(), "extract", str(folder), str(missing), "--out", str(store), "--fps", "1",
                           "--no-progress", "--json", str(summary), *tiny_model.cli_args()],
                          capture_output=True, text=True, timeout=120)
    bad = {"zero.mp4": folder / "zero.mp4", "letter.mp4": folder / "letter.mp4", "half.mp4": folder / "half.mp4",
           "beep.mp4": folder / "beep.mp4", "cut.mp4": folder / "cut.mp4", "gone.mp4": missing}
    return {"proc": proc, "store": store, "summary": summary, "bad": bad}


def test_bad_inputs_exit_1_with_one_line_each(failed_run):
    proc = failed_run["proc"]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("vfeat: failed ")]
    assert len(failed) == 6, proc.stderr
    for name, path in failed_run["bad"].items():
        lines = [line for line in failed if line.startswith(f"vfeat: failed {path}: ")]
        assert len(lines) == 1, (name, proc.stderr)
        assert len(lines[0]) > len(f"vfeat: failed {path}: ")  # a reason follows the file name
    assert any(line.startswith(f"vfeat: failed {failed_run['bad']['gone.mp4']}: file not found") for line in failed)
    assert any(line.startswith(f"vfeat: failed {failed_run['bad']['beep.mp4']}: no video stream") for line in failed)
    assert any(re.match(rf"vfeat: failed {re.escape(str(failed_run['bad']['cut.mp4']))}: truncated: the container lists "
                        r"100 frames \(4\.00 s\) but the file holds only [1-9]\d?$", line) for line in failed), proc.stderr
    assert "1 stored, 6 failed, 0 already in the store" in one_line(proc.stdout)


def test_summary_json(failed_run):
    summary = json.loads(failed_run["summary"].read_text())
    assert (summary["videos_total"], summary["videos_ok"], summary["videos_failed"]) == (7, 1, 6)
    assert sorted(f["path"] for f in summary["failures"]) == sorted(str(p) for p in failed_run["bad"].values())
    assert sorted(f["id"] for f in summary["failures"]) == sorted(failed_run["bad"])  # the ids the store uses
    # the one stored video is 25 frames at 25 fps: 1 s of video, and the summary line says how fast against that
    assert summary["video_seconds"] == pytest.approx(1.0, abs=1e-6)
    speed = f"{summary['video_seconds'] / summary['seconds']:.1f}x real time"
    assert speed in one_line(failed_run["proc"].stdout)


def test_info_json_lists_failures(failed_run):
    proc = subprocess.run([*vfeat_command(), "info", str(failed_run["store"]), "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["videos"], info["frames"], info["embed_dim"], info["dtype"]) == (1, 1, 32, "float16")
    assert info["model"] == "vfeat-tiny-vit"
    assert info["sampling"] == {"mode": "fps", "fps": 1.0}
    assert info["precision"] in ("fp32", "fp16", "bf16")
    failures = info["failures"]
    assert sorted(f["path"] for f in failures) == sorted(str(p) for p in failed_run["bad"].values())
    for failure in failures:
        assert {"path", "error"} <= set(failure)
        assert failure["error"].startswith(f"{failure['path']}: ")


def test_info_table(failed_run):
    result = runner.invoke(app, ["info", str(failed_run["store"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert re.search(r"videos\s+│?\s*1\b", text) and re.search(r"failures\s+│?\s*6\b", text)
    assert "vfeat-tiny-vit" in text
    for path in failed_run["bad"].values():
        assert f"failed: {path}: " in text


def test_info_of_missing_store(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2
    assert f"vfeat: error: {tmp_path / 'none.zarr'}: store not found" in one_line(result.output)


def test_offline_tag_without_cache_is_one_clear_error(tmp_path, small_video):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "XDG_CACHE"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                "TORCH_HOME": str(tmp_path / "torch")})
    store = tmp_path / "never.zarr"
    proc = subprocess.run([*vfeat_command(), "extract", str(small_video), "--model", "ViT-B/32", "--fps", "1", "--out",
                           str(store), "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vfeat: error: ") and proc.stderr.count("vfeat: error") == 1
    message = one_line(proc.stderr)
    assert "'openai' weights for ViT-B-32" in message
    assert "--pretrained /path/to/ViT-B-32.pt --weights-tag openai" in message
    assert not store.exists()


# -- flags through the CLI (CliRunner) --------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--dtype", "float8"], "Invalid --dtype (float8). Choose from: float16, float32."),
    (["--precision", "fp8"], "Invalid --precision (fp8). Choose from: auto, fp32, fp16, bf16."),
    (["--fps", "0"], "Invalid --fps (0.0). It must be > 0."),
    (["--fps", "1", "--num-frames", "4"], "Choose one sampling mode, not --fps and --num-frames."),
    (["--batch-size", "0"], "Invalid --batch-size (0). It must be >= 1."),
    # flags that another flag gives a meaning are refused without it, not silently ignored
    (["--alpha", "0.5"], "--alpha only applies with --wise-with"),
    (["--hwaccel-workers", "2"], "--hwaccel-workers only applies with --hwaccel cuda."),
    (["--address", "auto", "--ray-workers", "2"], "--address, --ray-workers only apply with --engine ray."),
    (["--shard-size", "5"], "--shard-size only applies with --engine ray."),
    (["--gpus-per-worker", "1"], "--gpus-per-worker only applies with --engine ray."),
    (["--clip-weights", "x.pt"], "--clip-weights only applies with --patching-ratio above 0"),
    (["--format", "parquet"], "Invalid --format (parquet). Choose from: zarr, h5."),
    (["--out", "feats.npy"], "--out feats.npy: a store is a shard (.zarr, .h5) or a directory of shards, not a .npy file"),
    (["--patching-ratio", "0.5"], "--patching-ratio does not apply to CLIP model vfeat-tiny-vit (video models only: see `vfeat models`)."),
])
def test_bad_flags_exit_2_with_the_message(tmp_path, tiny_model, small_video, flags, message):
    store = tmp_path / "never.zarr"
    args = ["extract", str(small_video), "--out", str(store), "--no-progress", *tiny_model.cli_args(), *flags]
    if "--fps" not in flags:
        args += ["--fps", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"vfeat: error: {message}" in one_line(result.output)
    assert not store.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_cuda_device_without_gpu_exit_2(tmp_path, tiny_model, small_video):
    store = tmp_path / "never.zarr"
    result = runner.invoke(app, ["extract", str(small_video), "--out", str(store), "--fps", "1", "--device", "cuda:0",
                                 "--no-progress", *tiny_model.cli_args()])
    assert result.exit_code == 2
    assert "vfeat: error: --device cuda:0: no CUDA GPU is available on this machine." in one_line(result.output)
    assert not store.exists()


def test_unknown_model_exit_2_with_suggestions(tmp_path, small_video):
    result = runner.invoke(app, ["extract", str(small_video), "--out", str(tmp_path / "x.zarr"), "--fps", "1",
                                 "--model", "ViT-B/33", "--no-progress"])
    assert result.exit_code == 2
    text = one_line(result.output)
    assert "vfeat: error: Unknown --model 'ViT-B/33'. Did you mean:" in text and "ViT-B/32" in text


def test_hub_model_names_say_they_are_not_supported(tmp_path, small_video):
    result = runner.invoke(app, ["extract", str(small_video), "--out", str(tmp_path / "x.zarr"), "--fps", "1",
                                 "--model", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "--no-progress"])
    assert result.exit_code == 2
    assert "hf-hub: and local-dir: models are not supported; pass the architecture and the weight file" in one_line(result.output)


def test_an_internal_error_exits_3_with_its_traceback(tmp_path):
    """A bug is neither 1 (some videos failed, each recorded) nor 2 (a usage error): a pipeline can tell."""
    script = ("import sys, vfeat.store.export as export\n"
              "def broken(*args, **kwargs):\n    raise RuntimeError('a bug')\n"
              "export.export_store = broken\n"
              "sys.argv = ['vfeat', 'export', 'any.zarr', 'out']\n"
              "import vfeat.cli\nvfeat.cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("vfeat: internal error")


def test_no_inputs_exit_2(tmp_path):
    result = runner.invoke(app, ["extract", "--out", str(tmp_path / "x.zarr"), "--fps", "1", "--no-progress"])
    assert result.exit_code == 2
    assert "no input videos" in one_line(result.output)


def test_colliding_ids_exit_2_before_work(tmp_path, tiny_model, small_video):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        shutil.copy(small_video, tmp_path / sub / "a.mp4")
    store = tmp_path / "never.zarr"
    result = runner.invoke(app, ["extract", str(tmp_path / "x" / "a.mp4"), str(tmp_path / "y" / "a.mp4"), "--out",
                                 str(store), "--fps", "1", "--no-progress", *tiny_model.cli_args()])
    assert result.exit_code == 2
    assert "vfeat: error: 1 video id(s) collide: 'a.mp4'" in one_line(result.output)
    assert not store.exists()


def test_successful_run_exit_0_and_summary_line(tmp_path, tiny_model, small_video):
    store = tmp_path / "ok.h5"
    result = runner.invoke(app, ["extract", str(small_video), "--out", str(store), "--num-frames", "3", "--workers", "0",
                                 "--no-progress", "--dtype", "float32", *tiny_model.cli_args(tiny_model.archive)])
    assert result.exit_code == 0, result.output
    assert "1 stored, 0 failed, 0 already in the store; 3 frames" in one_line(result.output)
    times = re.search(r"time: (.*?) s$", one_line(result.output)).group(1)
    assert times.startswith("model load ") and "model " in times and "store close " in times
    assert "warm up" not in times  # a CPU run does not warm up: no "warm up 0.0 s" to puzzle over
    assert "model waiting for frames " in times and "decoders waiting" not in times  # no decode process ran


def test_piped_tables_are_not_cut(tmp_path, tiny_model, small_video):
    """Piped (a pipeline, `| grep`), rich would cut every table at 80 columns: ids and hashes ended in '…'."""
    name = "a_video_name_long_enough_that_an_80_column_table_would_cut_it_short.mp4"
    shutil.copy(small_video, tmp_path / name)
    store = tmp_path / "s.zarr"
    assert runner.invoke(app, ["extract", str(tmp_path / name), "--out", str(store), "--fps", "1", "--workers", "0",
                               "--no-progress", *tiny_model.cli_args()]).exit_code == 0
    info = json.loads(subprocess.run([*vfeat_command(), "info", str(store), "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    table = subprocess.run([*vfeat_command(), "info", str(store)], capture_output=True, text=True, check=True).stdout
    assert len(info["checkpoint_sha256"]) == 64 and info["checkpoint_sha256"] in table
    hits = subprocess.run([*vfeat_command(), "search", "--features", str(store), "anything", "--top", "1"],
                          capture_output=True, text=True, check=True, env={**os.environ, "VFEAT_CACHE_DIR": str(tmp_path / "cache")})
    assert name in hits.stdout and "…" not in hits.stdout


def test_json_dash_is_stdout_alone_for_the_next_stage(tmp_path, tiny_model, small_video):
    """`--json -`: the JSON on stdout, nothing else (the summary lines and tables go to stderr), so that
    `vfeat ... --json - | jq` works; it wrote a file named '-' before."""
    store = tmp_path / "s.zarr"
    env = {**os.environ, "VFEAT_CACHE_DIR": str(tmp_path / "cache")}
    extract = subprocess.run([*vfeat_command(), "extract", str(small_video), "--out", str(store), "--fps", "1", "--workers", "0",
                              "--no-progress", "--json", "-", *tiny_model.cli_args()], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=300)
    assert extract.returncode == 0, extract.stderr
    summary = json.loads(extract.stdout)
    assert (summary["store"], summary["videos_ok"]) == (str(store), 1)
    assert "1 stored, 0 failed" in extract.stderr and not (tmp_path / "-").exists()
    search = subprocess.run([*vfeat_command(), "search", "--features", str(store), "anything", "--top", "1", "--json", "-"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["hits"][0]["video_id"] == small_video.name
    assert "rank" in search.stderr  # the table


def test_summary_says_what_each_side_waited_for_with_decode_processes(tmp_path, tiny_model, small_video):
    """With decode processes both waits are shown, on the "time:" line and in --json's timings."""
    summary = tmp_path / "run.json"
    result = runner.invoke(app, ["extract", str(small_video), "--out", str(tmp_path / "s.zarr"), "--fps", "2", "--workers", "1",
                                 "--no-progress", "--json", str(summary), *tiny_model.cli_args()])
    assert result.exit_code == 0, result.output
    times = re.search(r"time: (.*?) s$", one_line(result.output)).group(1)
    assert re.search(r"model waiting for frames \d+\.\d s, decoders waiting for the model \d+\.\d s", times), times
    timings = json.loads(summary.read_text())["timings"]
    assert timings["decoders_held_s"] >= 0 and timings["decode_wait_s"] > 0  # the process's start-up, at least


@pytest.mark.parametrize("width", [80, 100, 160])
def test_progress_line_fits_the_terminal(width):
    """The count done / total, frames/s, videos/s and the ETA stay readable on an 80-column terminal (the long
    line, with the speed against real time and the elapsed time, is kept for wide ones)."""
    import io
    import re

    from rich.console import Console

    from vfeat.pipeline import RunStats
    from vfeat.progress import ExtractProgress

    buffer = io.StringIO()
    bar = ExtractProgress(console=Console(file=buffer, width=width, force_terminal=True, color_system=None))
    bar.on_start(12345, 0)
    bar.started -= 2.0  # a GPU machine's rates: 6,000 frames/s, 600 one-second clips a second
    stats = RunStats()
    stats.videos_ok, stats.frames, stats.video_seconds = 1234, 12000, 1234.0
    bar.on_progress(stats, 10)
    bar.progress.refresh()
    bar.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    line = [row for row in text.replace("\r", "\n").splitlines() if row.strip()][-1]
    assert len(line.rstrip()) <= width and "…" not in line, line
    assert re.search(r"1234/12345 videos 6\d{3} frames/s 6\d\d videos/s", line) and "ETA" in line, line
    assert ("x real time" in line) == (width >= ExtractProgress.WIDE), line
    assert bar.done == 1234 and bar.todo == 12345
