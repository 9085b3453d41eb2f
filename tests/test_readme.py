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


def test_python_api_from_stdin_says_how_to_run_it(tmp_path, repo_root):
    """README's Python block pasted into `python -`: spawned decode workers cannot import '<stdin>'; the
    error says what to do instead of only "workers exited"."""
    code = (f"import vfeat\nvfeat.extract([{str(repo_root / 'sample' / 'bikes.mp4')!r}], 's.zarr', model='vfeat-tiny-vit', "
            f"pretrained='none', model_config={str(repo_root / 'tests' / 'data' / 'vfeat-tiny-vit.json')!r}, fps=1)\n")
    result = subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "if __name__ == \"__main__\":" in result.stderr and "workers=0" in result.stderr
    guarded = "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in code.splitlines())
    (tmp_path / "script.py").write_text(guarded)
    ok = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_dead_workers_with_many_videos_queued_still_let_the_process_exit(tmp_path, repo_root):
    """The same mistake with a folder of 1,500 videos: the jobs nobody took (more than a pipe holds) must
    not keep the interpreter waiting at exit after the error is printed (it hung before 2026-11-26)."""
    result = _extract_from_stdin(tmp_path, repo_root, "s.zarr", "workers=1",
                                 "the process did not exit after its decode workers died")
    assert result.returncode != 0
    assert "all decode workers exited unexpectedly" in result.stderr


def test_devices_from_stdin_with_many_videos_end_with_the_hint_instead_of_hanging(tmp_path, repo_root):
    """``devices=`` from a script on stdin: the device processes cannot import '<stdin>' and exit at once.
    Their 1,500 videos must not be part of their start-up data (the parent waited for ever to write a
    list that no process would read); the error says what to do."""
    result = _extract_from_stdin(tmp_path, repo_root, "store", "workers=1, devices='cpu,cpu'",
                                 "the parent did not get past starting device processes that died at once")
    assert result.returncode != 0
    assert "its process exited at start (exit code 1)" in result.stderr
    assert "device processes are spawned processes that import your main module" in result.stderr


def _extract_from_stdin(tmp_path, repo_root, out: str, options: str, hung: str) -> subprocess.CompletedProcess:
    """``vfeat.extract`` of a folder of 1,500 videos (hard links to the sample) with ``options``, from a
    script on stdin, which spawned processes cannot import; fails the test with ``hung`` after 120 s."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"video_with_a_rather_long_name_{i:05d}.mp4").hardlink_to(repo_root / "sample" / "bikes.mp4")
    code = (f"import vfeat\nvfeat.extract([{str(folder)!r}], {out!r}, model='vfeat-tiny-vit', pretrained='none', "
            f"model_config={str(repo_root / 'tests' / 'data' / 'vfeat-tiny-vit.json')!r}, fps=1, {options})\n")
    try:
        return subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(hung)
