"""The README's "Run" commands, as a new user types them, on sample/: extract -> info -> evaluate ->
predict -> search. Only the model is swapped for the tiny random one (no downloads here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run_block(readme: str) -> str:
    section = readme.split("## Run", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README's Run section has no bash block"
    return match.group(1)


@pytest.mark.skipif(shutil.which("vfeat") is None, reason="the vfeat entry point is not installed (pip install -e .)")
def test_readme_run_section_works_on_sample(tmp_path, repo_root):
    block = _run_block((repo_root / "README.md").read_text())
    assert "vfeat extract sample/" in block and "vfeat search" in block
    tiny = f"--model vfeat-tiny-vit --model-config {repo_root / 'tests' / 'data' / 'vfeat-tiny-vit.json'} --pretrained none"
    script = block.replace("--model ViT-B/32", tiny).replace("sample/", f"{repo_root / 'sample'}/")
    assert tiny in script
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (result_json,) = json.loads((tmp_path / "results.json").read_text())
    assert result_json["counts"]["videos_evaluated"] == 2 and 0 <= result_json["metrics"]["top1"] <= 100
    for name in ("sample.zarr", "preds.parquet", "timeline_bikes.mp4.png", "timeline_bigbuckbunny.mp4.png"):
        assert Path(tmp_path / name).exists(), name
    assert "bikes.mp4" in result.stdout and "bigbuckbunny.mp4" in result.stdout


def _extract_code(repo_root: Path, inputs: str, out: str, options: str) -> str:
    return (f"import vfeat\nvfeat.extract([{inputs!r}], {out!r}, model='vfeat-tiny-vit', pretrained='none', "
            f"model_config={str(repo_root / 'tests' / 'data' / 'vfeat-tiny-vit.json')!r}, fps=1, {options})\n")


@pytest.mark.parametrize("options", ["workers=1", "workers=1, devices='cpu,cpu'"])
def test_python_api_runs_from_stdin(tmp_path, repo_root, options):
    """README's Python call pasted into `python -`, with no `if __name__ == "__main__":`: vfeat's decode and
    device processes do not import the main module, so there is nothing they would fail to import."""
    code = _extract_code(repo_root, str(repo_root / "sample" / "bikes.mp4"), "store", options)
    result = subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import vfeat

    assert list(vfeat.open_store(str(tmp_path / "store")).ids) == ["bikes.mp4"]


def test_unguarded_script_runs_once_and_its_imports_stay_out_of_the_decode_processes(tmp_path, repo_root):
    """A script without a main guard: its top level runs once (each spawned process ran it again before,
    and failed), and what it imports (here torch) is not imported again by each decode process."""
    probe = tmp_path / "decoder_modules.txt"
    script = tmp_path / "script.py"
    script.write_text(
        "import torch\n"
        f"open({str(tmp_path / 'ran.txt')!r}, 'a').write('ran\\n')\n"
        "import vfeat.decode_processes, vfeat_test_probe\n"
        "vfeat.decode_processes.worker_main = vfeat_test_probe.writes_its_modules_then_decodes\n"
        + _extract_code(repo_root, str(repo_root / "sample"), "s.zarr", "workers=2"))
    (tmp_path / "vfeat_test_probe.py").write_text(
        "import os, sys\n"
        "from vfeat.workers import worker_main\n"
        "def writes_its_modules_then_decodes(*args):\n"
        f"    open({str(probe)!r}, 'a').write(f'{{os.getpid()}} {{\"torch\" in sys.modules}}\\n')\n"
        "    worker_main(*args)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ran.txt").read_text() == "ran\n"
    decoders = probe.read_text().splitlines()
    assert len(decoders) == 2 and all(line.endswith(" False") for line in decoders), decoders
    import vfeat

    assert sorted(vfeat.open_store(str(tmp_path / "s.zarr")).ids) == ["bigbuckbunny.mp4", "bikes.mp4"]


def test_dead_workers_with_many_videos_queued_still_let_the_process_exit(tmp_path, repo_root):
    """Decode processes that cannot start, with a folder of 1,500 videos: the jobs nobody took (more than a
    pipe holds) must not keep the interpreter waiting at exit after the error is printed (it hung before
    2026-11-26)."""
    result = _extract_with_processes_that_cannot_start(tmp_path, repo_root, "s.zarr", "workers=1",
                                                       "vfeat.decode_processes.worker_main",
                                                       "the process did not exit after its decode workers died")
    assert result.returncode != 0
    assert "this process cannot start" in result.stderr
    assert "all decode workers exited unexpectedly (exit codes [3]) before taking a video" in result.stderr


def test_device_processes_that_cannot_start_with_many_videos_end_with_an_error_instead_of_hanging(tmp_path, repo_root):
    """``devices=`` whose device processes exit at once: their 1,500 videos must not be part of their
    start-up data (the parent waited for ever to write a list that no process would read); the error
    says where to look."""
    result = _extract_with_processes_that_cannot_start(tmp_path, repo_root, "store", "workers=1, devices='cpu,cpu'",
                                                       "vfeat.engines.multidevice._device_main",
                                                       "the parent did not get past starting device processes that died at once")
    assert result.returncode != 0
    assert "this process cannot start" in result.stderr
    assert "its process exited at start (exit code 3); its error is printed above" in result.stderr


def _extract_with_processes_that_cannot_start(tmp_path: Path, repo_root: Path, out: str, options: str, target: str,
                                              hung: str) -> subprocess.CompletedProcess:
    """``vfeat.extract`` of a folder of 1,500 videos (hard links to the sample) with ``options``, from a
    script on stdin, whose processes started as ``target`` exit at once (status 3); fails the test with
    ``hung`` after 120 s."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"video_with_a_rather_long_name_{i:05d}.mp4").hardlink_to(repo_root / "sample" / "bikes.mp4")
    module, name = target.rsplit(".", 1)
    code = (f"import sys; sys.path.insert(0, {str(repo_root / 'tests')!r})\n"
            f"import {module}, process_faults\n{module}.{name} = process_faults.exits_at_start\n"
            + _extract_code(repo_root, str(folder), out, options))
    try:
        return subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(hung)
