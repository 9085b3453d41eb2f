"""The mechanics behind the GPU-machine throughput work (issue 5), each checked for what it must not change:
the frames, the store, the errors.

- decode workers: FFmpeg threads per worker (``VFEAT_DECODE_THREADS``) and hardware decoding
  (``--hwaccel`` / ``VFEAT_HWACCEL``) give the same frames;
- the frame budget between decode workers and the model process (credits given back over each process's
  connection) cannot deadlock, whatever its size and however many one-frame videos, with the frames
  through the shared-memory ring or the pipe; the ring gives way to the pipe where its memory cannot be
  had, and leaves nothing behind when a run is killed;
- a decode process that dies (killed mid-video, or halfway through writing a message) costs its video
  only;
- model batches mix videos (frames and clips), keep one batch in flight on a GPU (checked in the GPU's
  order of events on the CPU), and drop a video that fails midway without losing the others;
- the shard writer commits journal parts from a writer thread and merges Zarr parts at most every
  ``merge_seconds``: what was added is in the store after close, parts are replayed after a crash, and a
  failure in the writer thread reaches the caller.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vfeat
from conftest import hang_guard, make_video, vfeat_command
from vfeat import decode
from vfeat.cli import app
from vfeat.decode import Resize, decode_selected, probe
from vfeat.errors import InputError
from vfeat.models.base import OPENAI_MEAN, OPENAI_STD, ModelIdentity, Preprocess, VideoEmbeddings, VideoEncoder
from vfeat import decode_processes, frame_ring
from vfeat.frame_ring import FrameRing
from vfeat.decode_processes import decode_in_processes
from vfeat import pipeline
from vfeat.models import factory
from vfeat.pipeline import Batcher, RunStats, _Video, encode_videos
from vfeat.sampling import SamplingPlan
from vfeat.sources import VideoSource
from vfeat.store import spool
from vfeat.store import writer as writer_module
from vfeat.store.format import Failure, VideoRecord
from vfeat.store.spool import RowBuffer
from vfeat.store.writer import ShardWriter, journal_dir
from vfeat.workers import decode_job


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [make_video(folder, f"c{i}.mp4", duration=1.0 + 0.4 * i, fps=25, size=(96, 64)) for i in range(5)]


def _frames(path: Path, resize: Resize | None = Resize(32, 32)) -> list[tuple[int, np.ndarray]]:
    probed = probe(str(path))
    return list(decode_selected(str(path), probed.pts, resize, probed.skip))


# -- decode workers ------------------------------------------------------------------------------------

def test_one_decoding_thread_gives_the_same_frames(clips, monkeypatch):
    default = _frames(clips[-1])
    monkeypatch.setenv("VFEAT_DECODE_THREADS", "1")
    single = _frames(clips[-1])
    assert [t for t, _ in single] == [t for t, _ in default]
    for (_, a), (_, b) in zip(single, default):
        np.testing.assert_array_equal(a, b)


def test_hardware_decoding_gives_the_same_frames_or_falls_back_once_with_a_warning(clips, monkeypatch, caplog):
    software = [_frames(c) for c in clips[:2]]
    monkeypatch.setenv("VFEAT_HWACCEL", "cuda")
    monkeypatch.setattr(decode, "_device_unusable", set())
    with caplog.at_level(logging.WARNING, logger="vfeat.decode"):
        hardware = [_frames(c) for c in clips[:2]]
    for soft, hard in zip(software, hardware):
        assert [t for t, _ in hard] == [t for t, _ in soft]
        for (_, a), (_, b) in zip(hard, soft):
            np.testing.assert_array_equal(a, b)  # NVDEC frames are bit-exact after vfeat's resize (H200, 2026-11-26)
    warnings = [r for r in caplog.records if "hardware decoding" in r.getMessage()]
    if torch.cuda.is_available():
        assert len(warnings) <= 1
    else:  # no GPU here: one warning for the process, then software decoding without retrying the device
        assert len(warnings) == 1 and "decoding on the CPU" in warnings[0].getMessage()


def test_hardware_decoding_of_a_missing_file_still_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VFEAT_HWACCEL", "cuda")
    missing = tmp_path / "nope.mp4"
    with pytest.raises(vfeat.DecodeError, match="nope.mp4: file not found"):
        list(decode_selected(str(missing), np.array([0]), None))


def test_unknown_hwaccel_is_refused_before_any_work(tmp_path, clips):
    result = CliRunner().invoke(app, ["extract", str(clips[0]), "--out", str(tmp_path / "s.zarr"), "--hwaccel", "nvdecx"])
    assert result.exit_code != 0
    assert "Invalid --hwaccel (nvdecx)" in result.output and "supports:" in result.output
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_hwaccel_cuda_without_a_gpu_says_why(tmp_path, clips):
    with pytest.raises(InputError, match="no CUDA GPU is visible"):
        vfeat.extract([str(clips[0])], str(tmp_path / "s.zarr"), hwaccel="cuda")


def test_hwaccel_is_refused_with_the_ray_engine(tmp_path, clips):
    with pytest.raises(InputError, match="--engine ray"):
        vfeat.extract([str(clips[0])], str(tmp_path / "s.zarr"), hwaccel="cuda", engine="ray")


# -- the frame budget ----------------------------------------------------------------------------------

def _counting_ring_reads(monkeypatch) -> list[int]:
    taken: list[int] = []
    take = FrameRing.take
    monkeypatch.setattr(FrameRing, "take", lambda self, where: taken.append(where.count) or take(self, where))
    return taken


@pytest.mark.parametrize("ring", [True, False], ids=["shared-memory", "pipe"])
@pytest.mark.parametrize("budget", [1, 16, 10_000])
def test_any_frame_budget_delivers_every_frame_without_deadlock(clips, budget, ring, monkeypatch):
    """A budget smaller than a message's frames is raised (to FRAMES_PER_DECODER per worker): below a
    message's worth each, every worker could hold part of the budget and none could send. With the
    shared-memory ring the budget is its slots: 16 per worker at the least, so messages wrap around it."""
    if ring and not hasattr(os, "memfd_create"):
        pytest.skip("the frame ring needs memfd_create (Linux); elsewhere frames take the pipe, the other case")
    monkeypatch.setenv("VFEAT_FRAME_RING", "1" if ring else "0")
    monkeypatch.setattr(decode_processes, "FRAMES_PER_DECODER", 16 if budget == 1 else decode_processes.FRAMES_PER_DECODER)
    taken = _counting_ring_reads(monkeypatch)
    plan, resize = SamplingPlan(), Resize(32, 32)  # all frames: several 16-frame messages per video
    jobs = [(i, str(c)) for i, c in enumerate(clips)]
    got: dict[int, list] = {}
    with hang_guard(120):
        for message in decode_in_processes(jobs, plan, resize, False, 2, RunStats(), frame_budget=budget):
            assert message[0] != "error", message
            if message[0] == "frames":
                got.setdefault(message[1], []).extend(zip(message[2], message[3]))
    for job, path in jobs:
        expected = [(rows, pixels) for m in decode_job(job, path, plan, resize, False) if m[0] == "frames"
                    for rows, pixels in zip(m[2], m[3])]
        assert [r for r, _ in got[job]] == [r for r, _ in expected]
        for (_, a), (_, b) in zip(got[job], expected):
            np.testing.assert_array_equal(a, b)
    frames = sum(len(v) for v in got.values())
    assert sum(taken) == (frames if ring else 0)
    if ring and budget == 1:
        assert any(0 < n < 16 for n in taken)  # messages cut where the 16-slot rings wrap


def test_many_one_frame_videos_with_a_large_budget_do_not_stall_the_credits(tmp_path):
    """A decode process with credits to spare reads none back; if the model process gave credits back a
    message per frame, a few hundred one-frame videos would fill the connection with them and both
    processes would wait on each other."""
    clip = make_video(tmp_path, "one_frame.mp4", duration=0.04, fps=25, size=(32, 32))
    jobs = [(i, str(clip)) for i in range(600)]
    with hang_guard(120):
        messages = list(decode_in_processes(jobs, SamplingPlan(fps=1.0), Resize(32, 32), False, 1, RunStats(),
                                            frame_budget=20_000))
    assert sum(len(m[3]) for m in messages if m[0] == "frames") == len(jobs)
    assert sum(m[0] == "done" for m in messages) == len(jobs)


def test_frames_go_through_the_pipe_when_there_is_no_memory_for_the_ring(clips, monkeypatch, caplog):
    """The ring's pages are allocated when it is made, so a machine without the memory falls back to the
    pipe at once (rather than a decode process dying of SIGBUS when it writes a frame)."""
    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(frame_ring.os, "posix_fallocate", no_room)
    taken = _counting_ring_reads(monkeypatch)
    jobs = [(i, str(c)) for i, c in enumerate(clips[:2])]
    with caplog.at_level(logging.INFO, logger="vfeat.frame_ring"):
        messages = list(decode_in_processes(jobs, SamplingPlan(), Resize(224, 224), False, 1, RunStats()))
    assert sum(len(m[3]) for m in messages if m[0] == "frames") == sum(len(probe(str(c)).pts) for c in clips[:2])
    assert taken == [] and "they go through a pipe" in caplog.text


@pytest.mark.parametrize("ring", [True, False], ids=["shared-memory", "pipe"])
def test_a_decode_process_dying_halfway_through_a_message_fails_its_video_only(clips, ring, tmp_path, monkeypatch):
    """A decode process killed while it writes a message leaves half a message behind. The model process
    reads what it sent, fails the video it was decoding, and a new process (in the same ring slots)
    decodes the rest: every other video's frames arrive, exactly. Through a queue shared by all decode
    processes this run hung: the reader waited for the rest of the message, and the dead process held the
    queue's write lock."""
    if ring and not hasattr(os, "memfd_create"):
        pytest.skip("the frame ring needs memfd_create (Linux); elsewhere frames take the pipe, the other case")
    import process_faults

    monkeypatch.setenv("VFEAT_FRAME_RING", "1" if ring else "0")
    monkeypatch.setenv("VFEAT_TEST_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(decode_processes, "worker_main", process_faults.dies_halfway_through_its_first_frames_message)
    taken = _counting_ring_reads(monkeypatch)
    plan, resize = SamplingPlan(), Resize(224, 224)  # 150 KB a frame: pipe messages far larger than a pipe's buffer
    jobs = [(i, str(c)) for i, c in enumerate(clips)]

    with hang_guard(120):
        messages = list(decode_in_processes(jobs, plan, resize, False, 1, RunStats()))
    errors = [m for m in messages if m[0] == "error"]
    assert [m[1] for m in errors] == [0] and "the decode process died (exit code 3) while decoding it" in errors[0][2]
    assert errors[0][2].startswith(str(clips[0]))
    assert {m[1] for m in messages if m[0] == "done"} == set(range(1, len(clips)))
    for job, path in jobs[1:]:
        expected = [m for m in decode_job(job, path, plan, resize, False) if m[0] == "frames"]
        got = [m for m in messages if m[0] == "frames" and m[1] == job]
        assert sum((m[2] for m in got), []) == sum((m[2] for m in expected), [])
        np.testing.assert_array_equal(np.concatenate([m[3] for m in got]), np.concatenate([m[3] for m in expected]))
    frames = sum(len(m[3]) for m in messages if m[0] == "frames")
    assert sum(taken) == (frames if ring else 0)  # the new process wrote into the dead one's slots


def test_a_decode_process_that_dies_before_taking_a_video_is_not_replaced_and_the_others_decode_all(clips, tmp_path,
                                                                                                   monkeypatch):
    """A process that cannot start costs no video: the others take every one. It is not started again (one
    that fails at start would fail again, for ever)."""
    import process_faults

    monkeypatch.setenv("VFEAT_TEST_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(decode_processes, "worker_main", process_faults.dies_before_taking_a_video)
    started = []
    start = decode_processes.DecodeProcesses._start
    monkeypatch.setattr(decode_processes.DecodeProcesses, "_start", lambda self, n: started.append(n) or start(self, n))
    plan, resize = SamplingPlan(fps=5.0), Resize(32, 32)
    jobs = [(i, str(c)) for i, c in enumerate(clips)]

    with hang_guard(120):
        messages = list(decode_in_processes(jobs, plan, resize, False, 2, RunStats()))
    assert [m for m in messages if m[0] == "error"] == []
    assert sorted(m[1] for m in messages if m[0] == "done") == list(range(len(clips)))
    for job, path in jobs:
        expected = [m for m in decode_job(job, path, plan, resize, False) if m[0] == "frames"]
        got = [m for m in messages if m[0] == "frames" and m[1] == job]
        np.testing.assert_array_equal(np.concatenate([m[3] for m in got]), np.concatenate([m[3] for m in expected]))
    assert (tmp_path / "died").exists() and sorted(started) == [0, 1]


def test_a_decode_process_that_dies_as_it_takes_a_video_costs_that_video_only_and_hangs_nothing(clips, tmp_path,
                                                                                                monkeypatch):
    """Killed while it takes a video (before it could say which): with a queue shared by the decode
    processes it would die holding the queue's read lock, and the other processes would wait for it for
    ever. From the hand-out's pipe it takes only that video with it: the others decode the rest, and the
    lost video is reported failed at the end (a rerun retries it)."""
    import process_faults

    monkeypatch.setenv("VFEAT_TEST_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(decode_processes, "worker_main", process_faults.dies_right_after_taking_its_first_video)
    plan, resize = SamplingPlan(fps=5.0), Resize(32, 32)
    jobs = [(i, str(c)) for i, c in enumerate(clips)]

    with hang_guard(120):
        messages = list(decode_in_processes(jobs, plan, resize, False, 2, RunStats()))
    errors = [m for m in messages if m[0] == "error"]
    assert len(errors) == 1 and (tmp_path / "died").exists()
    lost = errors[0][1]
    assert errors[0][2] == (f"{clips[lost]}: the decode process that took it died (exit code 3) before it began: a crash, "
                            "or the out-of-memory killer; the other videos go on")
    assert sorted(m[1] for m in messages if m[0] == "done") == [job for job, _ in jobs if job != lost]
    for job, path in jobs:
        if job != lost:
            expected = [m for m in decode_job(job, path, plan, resize, False) if m[0] == "frames"]
            got = [m for m in messages if m[0] == "frames" and m[1] == job]
            np.testing.assert_array_equal(np.concatenate([m[3] for m in got]), np.concatenate([m[3] for m in expected]))


def test_the_handout_gives_each_video_to_exactly_one_process_with_many_taking_at_once(tmp_path):
    """Three processes take 20,000 videos at once from the hand-out, more than its pipe holds (the rest
    waits for room): each video is taken exactly once, whole, with its path (any length a record holds,
    any characters), and each process then reads its end."""
    import multiprocessing as mp

    import process_faults
    from vfeat.handout import MAX_PATH_BYTES, VideoHandout

    ctx = mp.get_context("spawn")
    longest = "/" + "x" * (MAX_PATH_BYTES - len("/ é.mp4".encode())) + " é.mp4"
    assert len(longest.encode()) == MAX_PATH_BYTES
    jobs = [(i, f"/videos/{'dir/' * (i % 7)}clip {i} – é.mp4") for i in range(20_000)] + [(20_000, longest)]
    handout = VideoHandout(ctx, jobs, processes=3)
    assert handout.too_long == []
    outs = [tmp_path / f"taken-{n}.txt" for n in range(3)]
    processes = [ctx.Process(target=process_faults.takes_every_video, args=(handout.taker, str(out))) for out in outs]
    with hang_guard(120):
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    handout.close()
    assert [p.exitcode for p in processes] == [0, 0, 0]
    taken = [[line.split(" ", 1) for line in out.read_text(encoding="utf-8").splitlines()] for out in outs]
    assert sorted((int(job), path) for job, path in sum(taken, [])) == jobs
    assert all([int(job) for job, _ in part] == sorted(int(job) for job, _ in part) for part in taken)  # in order


def test_a_path_longer_than_a_handout_record_fails_that_video_only(clips):
    """A path the hand-out cannot carry (over PIPE_BUF bytes, longer than Linux lets a local path be) is
    one clear failure; the other videos are decoded."""
    from vfeat.handout import MAX_PATH_BYTES

    too_long = "/" + "v" * MAX_PATH_BYTES + ".mp4"
    jobs = [(0, str(clips[0])), (1, too_long), (2, str(clips[1]))]
    with hang_guard(120):
        messages = list(decode_in_processes(jobs, SamplingPlan(fps=1.0), Resize(32, 32), False, 1, RunStats()))
    assert [m for m in messages if m[0] == "error"] == [
        ("error", 1, f"{too_long}: its path is longer than {MAX_PATH_BYTES} bytes, more than vfeat can hand to a decode "
                     "process; rename or link the file")]
    assert sorted(m[1] for m in messages if m[0] == "done") == [0, 2]


def _shared_memory_files() -> set[str]:
    # multiprocessing's named semaphores (sem.*) included: vfeat's processes share none (a queue's three
    # leaked with every killed process group, whose resource tracker dies with it)
    return set(os.listdir("/dev/shm"))


def test_a_run_killed_with_its_process_group_leaves_no_shared_memory(tmp_path, clips, tiny_model):
    """The ring is an anonymous memory file and the decode processes share no semaphore: ``kill -9`` of the
    whole process group (multiprocessing's resource tracker included, which would otherwise remove named
    shared memory and semaphores) leaves nothing in
    /dev/shm, where a named block of the ring's size would stay until reboot."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this system: no named shared memory to look for")
    before = _shared_memory_files()
    store = tmp_path / "s.zarr"
    videos = [str(c) for c in clips] * 4  # the same clips under other paths would be other videos: copy them
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, path in enumerate(videos):
        os.link(path, folder / f"v{i:02d}.mp4")
    env = dict(os.environ, VFEAT_FLUSH_VIDEOS="1")
    proc = subprocess.Popen([*vfeat_command(), "extract", str(folder), "--out", str(store), "--workers", "1", "--no-progress",
                             *tiny_model.cli_args()], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{store}.journal").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(0.5)
    assert _shared_memory_files() - before == set()


def _decode_processes_of(pid: int) -> list[int]:
    """The spawned decode processes below ``pid`` (multiprocessing's resource tracker is not one; ``pid``
    may be a launcher script whose child is Python)."""
    parents, commands = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))

    def below(child: int) -> bool:
        while child in parents and child != pid:
            child = parents[child]
        return child == pid

    return [p for p, command in commands.items() if p != pid and b"spawn_main" in command and below(p)]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the decode process to kill through /proc (Linux)")
def test_a_decode_process_killed_mid_video_fails_that_video_and_the_run_goes_on(tmp_path, tiny_model):
    """The out-of-memory killer (or a crash inside FFmpeg on a bad file) takes the decode process while it
    decodes a video: one line names that video and the signal, a new process decodes the videos after it,
    and a rerun of the same command retries the failed one."""
    folder = tmp_path / "videos"
    make_video(folder, "a_short.mp4", duration=1.0)
    make_video(folder, "b_long.mp4", 24.0, 25, (1280, 720), "libx264", "yuv420p", "-preset", "ultrafast")
    make_video(folder, "c_after.mp4", duration=1.0)
    store = tmp_path / "s.h5"  # HDF5 keeps journal parts until the close: a_short's part shows it is stored
    command = [*vfeat_command(), "extract", str(folder), "--out", str(store), "--fps", "25", "--workers", "1", "--no-progress",
               *tiny_model.cli_args()]
    env = dict(os.environ, VFEAT_FLUSH_VIDEOS="1")  # a journal part per video
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(Path(f"{store}.journal").glob("part-*.pkl")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = _decode_processes_of(proc.pid)
        assert proc.poll() is None and len(workers) == 1, "the run ended before its decode process could be killed"
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr  # some videos failed
    named = [line for line in stderr.splitlines() if "b_long.mp4" in line]  # and the end-of-run summary of reasons
    assert len(named) == 1 and "Traceback" not in stderr, stderr
    assert "SIGKILL" in named[0] and "decode process died" in named[0], named[0]
    with vfeat.open_store(str(store)) as opened:
        assert sorted(opened.ids) == ["a_short.mp4", "c_after.mp4"]
        assert [f.video_id for f in opened.failures()] == ["b_long.mp4"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    with vfeat.open_store(str(store)) as opened:
        assert sorted(opened.ids) == ["a_short.mp4", "b_long.mp4", "c_after.mp4"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the decode processes to kill through /proc (Linux)")
def test_with_two_decode_processes_one_killed_costs_at_most_its_video(tmp_path, tiny_model):
    """Of two decode processes one is killed at some moment: at most the video it was decoding fails, every
    other video is stored, and a rerun leaves nothing out."""
    folder = tmp_path / "videos"
    make_video(folder, "a_long.mp4", 16.0, 25, (1280, 720), "libx264", "yuv420p", "-preset", "ultrafast")
    make_video(folder, "b_long.mp4", 16.0, 25, (1280, 720), "libx264", "yuv420p", "-preset", "ultrafast")
    for name in ("c.mp4", "d.mp4", "e.mp4"):
        make_video(folder, name, duration=1.0)
    store = tmp_path / "s.zarr"
    command = [*vfeat_command(), "extract", str(folder), "--out", str(store), "--fps", "25", "--workers", "2", "--no-progress",
               *tiny_model.cli_args()]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(workers := _decode_processes_of(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # both are decoding by now (a_long and b_long, 400 frames of 720p each)
        assert proc.poll() is None and len(workers) == 2, "the run ended before a decode process could be killed"
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "Traceback" not in stderr, stderr
    with vfeat.open_store(str(store)) as opened:
        failed = [f.video_id for f in opened.failures()]
        assert len(failed) <= 1 and sorted([*opened.ids, *failed]) == ["a_long.mp4", "b_long.mp4", "c.mp4", "d.mp4", "e.mp4"]
    assert proc.returncode == (1 if failed else 0), stderr
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    with vfeat.open_store(str(store)) as opened:
        assert sorted(opened.ids) == ["a_long.mp4", "b_long.mp4", "c.mp4", "d.mp4", "e.mp4"]


# -- the model batches ---------------------------------------------------------------------------------

class _MeansModel(VideoEncoder):
    """8 px input, 3-d embeddings made of normalised channel means: checkable with numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.embed_dim = 3
        self.preprocess = Preprocess(8, OPENAI_MEAN, OPENAI_STD)
        self.identity = ModelIdentity(type(self).__name__, "none")


class ChannelMeans(_MeansModel):
    """A frame's embedding is its three normalised channel means; it remembers the batch sizes it was given."""

    frame_level = True

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(pixels))
        return pixels.float().mean(dim=(2, 3))


def _expected_means(pixels: np.ndarray) -> np.ndarray:
    mean, std = np.array(OPENAI_MEAN) * 255.0, np.array(OPENAI_STD) * 255.0
    return ((pixels.astype(np.float64) - mean) / std).mean(axis=(1, 2))


def _video_messages(job: int, frames: np.ndarray, chunk: int = 4) -> list[tuple]:
    info = {"fps": 25.0, "duration_s": len(frames) / 25, "width": 8, "height": 8, "num_frames": len(frames),
            "start_time_s": 0.0, "rotation": 0}
    messages = [("video", job, info, np.arange(len(frames)) * 40.0, [])]
    for start in range(0, len(frames), chunk):
        messages.append(("frames", job, [[row] for row in range(start, min(start + chunk, len(frames)))], frames[start:start + chunk]))
    return messages + [("done", job)]


@pytest.mark.parametrize("in_flight", [False, True], ids=["cpu", "gpu-order"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batches_across_videos_give_every_frame_its_own_embedding(batch_size, in_flight, monkeypatch):
    monkeypatch.setattr(Batcher, "in_flight_on_cpu", in_flight)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in (5, 1, 9, 2)]
    messages = [m for job, frames in enumerate(videos) for m in _video_messages(job, frames)]
    sources = [VideoSource(f"v{i}.mp4", f"/videos/v{i}.mp4") for i in range(len(videos))]
    encoder, stats = ChannelMeans(), RunStats()
    records = list(encode_videos(messages, sources, encoder, SamplingPlan(), batch_size=batch_size, storage_dtype="float32", stats=stats))
    assert sorted(r.video_id for r in records) == [s.video_id for s in sources]
    for record in records:
        frames = videos[int(record.video_id[1:-4])]
        np.testing.assert_allclose(record.features, _expected_means(frames), rtol=1e-5, atol=1e-5)
    assert sum(encoder.batches) == sum(len(v) for v in videos)
    assert max(encoder.batches) < batch_size + 4  # a batch runs once it is full: at most one message over
    assert stats.model_s > 0


@pytest.mark.parametrize("in_flight", [False, True], ids=["cpu", "gpu-order"])
def test_a_short_video_is_handed_on_once_a_batch_encodes_it_not_when_the_next_video_ends(in_flight, monkeypatch):
    """A short video's last rows are often encoded by a batch that the next video's frames fill: it is
    finished then, not held (unstored, in memory) until that next video is decoded to its end."""
    monkeypatch.setattr(Batcher, "in_flight_on_cpu", in_flight)
    rng = np.random.default_rng(4)
    short, long = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    messages = _video_messages(0, short) + _video_messages(1, long)
    consumed: list[int] = []

    def decoder() -> Iterator[tuple]:
        for number, message in enumerate(messages):
            consumed.append(number)
            yield message

    sources = [VideoSource("short.mp4", "/videos/short.mp4"), VideoSource("long.mp4", "/videos/long.mp4")]
    records = encode_videos(decoder(), sources, ChannelMeans(), SamplingPlan(), batch_size=8, storage_dtype="float32")
    first = next(records)
    assert first.video_id == "short.mp4"
    assert len(consumed) <= 10  # short's 2 messages, long's first 2 or 3 batches: not all 53
    np.testing.assert_allclose(first.features, _expected_means(short), rtol=1e-5, atol=1e-5)
    assert [r.video_id for r in records] == ["long.mp4"]


def _batcher_and_video(frames: np.ndarray) -> tuple[Batcher, _Video]:
    batcher = Batcher(ChannelMeans(), batch_size=2)
    video = _Video(VideoSource("v.mp4", "/v.mp4"), {}, np.arange(len(frames)) * 40.0, [], frame_features=RowBuffer(len(frames), 3, np.float32))
    return batcher, video


def test_one_batch_stays_in_flight_on_a_gpu_until_the_next_is_queued(monkeypatch):
    """The host gathers batch N+1 while the GPU computes batch N: a batch's outputs are handed out when
    the next batch is queued (or at the end), not when it is queued itself. Checked in the GPU's order of
    events on the CPU."""
    monkeypatch.setattr(Batcher, "in_flight_on_cpu", True)
    frames = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    batcher, video = _batcher_and_video(frames)
    batcher.add(video, [[0], [1]], frames[:2])
    assert batcher.encoder.batches == [2] and video.rows_encoded == 0
    batcher.add(video, [[2], [3]], frames[2:])
    assert batcher.encoder.batches == [2, 2] and video.rows_encoded == 2
    batcher.flush()
    assert video.rows_encoded == 4
    np.testing.assert_allclose(video.frame_features.finish(), _expected_means(frames), rtol=1e-5, atol=1e-5)


def test_on_the_cpu_a_batch_is_handed_out_as_it_runs():
    frames = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    batcher, video = _batcher_and_video(frames)
    batcher.add(video, [[0], [1]], frames)
    assert video.rows_encoded == 2 and batcher.in_flight is None


class ClipMeans(_MeansModel):
    """A clip model: a clip's embedding is the mean of its frames' channel means, which are its frame outputs."""

    frame_level = False

    def encode_video(self, pixels: torch.Tensor) -> VideoEmbeddings:
        frames = pixels.float().mean(dim=(3, 4))  # [B, T, 3]
        return VideoEmbeddings(clips=frames.mean(dim=1), frames=frames)


@pytest.mark.parametrize("in_flight", [False, True], ids=["cpu", "gpu-order"])
def test_clip_batches_across_videos_give_every_clip_its_own_embedding(in_flight, monkeypatch):
    monkeypatch.setattr(Batcher, "in_flight_on_cpu", in_flight)
    rng = np.random.default_rng(3)
    videos = [rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in (8, 4, 12)]  # clips of 4 frames
    messages = []
    for job, frames in enumerate(videos):
        clip_rows = [list(range(start, start + 4)) for start in range(0, len(frames), 4)]
        video_messages = _video_messages(job, frames, chunk=3)
        video_messages[0] = video_messages[0][:4] + (clip_rows,)
        messages += video_messages
    sources = [VideoSource(f"v{i}.mp4", f"/videos/v{i}.mp4") for i in range(len(videos))]
    records = list(encode_videos(messages, sources, ClipMeans(), SamplingPlan(clip_len=4, stride=4, clips=3), batch_size=8,
                                 storage_dtype="float32"))
    assert sorted(r.video_id for r in records) == [s.video_id for s in sources]
    for record in records:
        expected = _expected_means(videos[int(record.video_id[1:-4])])
        np.testing.assert_allclose(record.features, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(record.clip_features, expected.reshape(-1, 4, 3).mean(axis=1), rtol=1e-5, atol=1e-5)


def test_extraction_in_the_gpus_order_of_events_equals_the_cpus(tmp_path, clips, tiny_model, monkeypatch):
    """The whole pipeline, warmed up and with a batch kept in flight as on a GPU: the same store."""
    kwargs = dict(tiny_model.extract_kwargs(), fps=10.0, workers=1, batch_size=7)
    cpu_summary = vfeat.extract([str(c) for c in clips], str(tmp_path / "cpu.zarr"), **kwargs)
    monkeypatch.setattr(Batcher, "in_flight_on_cpu", True)
    monkeypatch.setattr(Batcher, "warm_up_on_cpu", True)
    gpu_summary = vfeat.extract([str(c) for c in clips], str(tmp_path / "gpu.zarr"), **kwargs)
    assert cpu_summary.timings["warm_up_s"] == 0 < gpu_summary.timings["warm_up_s"]
    with vfeat.open_store(str(tmp_path / "cpu.zarr")) as cpu, vfeat.open_store(str(tmp_path / "gpu.zarr")) as gpu:
        assert sorted(cpu.ids) == sorted(gpu.ids) and len(cpu.ids) == len(clips)
        for vid in cpu.ids:
            np.testing.assert_array_equal(cpu[vid][0], gpu[vid][0])
            np.testing.assert_array_equal(cpu[vid][1], gpu[vid][1])


def test_the_warm_up_runs_one_full_batch_of_blank_frames_and_hands_out_nothing():
    encoder = ChannelMeans()
    batcher = Batcher(encoder, batch_size=5)
    batcher.warm_up()
    assert encoder.batches == [5]
    assert batcher.in_flight is None and batcher.units == [] and batcher.pending == 0


def test_a_clip_models_warm_up_is_a_batch_of_whole_clips(monkeypatch):
    encoder, shapes = ClipMeans(), []
    monkeypatch.setattr(encoder, "encode_video", lambda pixels: shapes.append(tuple(pixels.shape)) or ClipMeans.encode_video(encoder, pixels))
    Batcher(encoder, batch_size=10).warm_up(frames_per_clip=4)
    assert shapes == [(3, 4, 3, 8, 8)]  # a batch runs once it holds batch_size frames: 3 clips of 4


def test_the_model_warms_up_while_the_decode_processes_start(tmp_path, clips, tiny_model, monkeypatch):
    """The warm-up costs nothing only if the decode processes are already starting meanwhile. Counted as
    started, not as alive: decoding starts before the model loads, so by the warm-up a process may have
    decoded all of these tiny clips and exited."""
    starts = _counting_decode_starts(monkeypatch)
    running_during_warm_up: list[int] = []
    warm_up = Batcher.warm_up

    def watched(self, *args):
        running_during_warm_up.append(sum(starts))
        warm_up(self, *args)

    monkeypatch.setattr(Batcher, "warm_up_on_cpu", True)
    monkeypatch.setattr(Batcher, "warm_up", watched)
    vfeat.extract([str(c) for c in clips], str(tmp_path / "s.zarr"), **dict(tiny_model.extract_kwargs(), fps=10.0, workers=2))
    assert running_during_warm_up == [2]
    monkeypatch.setenv("VFEAT_WARM_UP", "0")  # off, to measure what it buys
    vfeat.extract([str(c) for c in clips], str(tmp_path / "t.zarr"), **dict(tiny_model.extract_kwargs(), fps=10.0, workers=2))
    assert running_during_warm_up == [2]


class SlowChannelMeans(ChannelMeans):
    """ChannelMeans at 8 ms a frame: slower than one process decodes the tiny clips."""

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(0.008 * len(pixels))
        return super().encode_frames(pixels)


def test_the_run_says_which_side_waited_the_model_or_the_decode_processes(clips):
    """``decoders_held_s`` (a decode process waiting for the model process to take its frames) against
    ``decode_wait_s`` (the model process waiting for frames): a slow model holds the decoders back, a model
    that costs nothing waits for them. With ``workers=0`` nobody decodes elsewhere: no such time at all."""
    sources = [VideoSource(c.name, str(c)) for c in clips]
    plan = SamplingPlan(fps=25.0)  # every frame: 225 of them, 1.8 s in the slow model

    def stats_of(encoder: VideoEncoder, workers: int) -> RunStats:
        records: list[VideoRecord] = []
        stats = pipeline.run(sources, encoder, plan, records.append, pytest.fail, batch_size=8, workers=workers,
                             storage_dtype="float32")
        assert len(records) == len(clips) and stats.frames == 225
        return stats

    slow, fast = stats_of(SlowChannelMeans(), 1), stats_of(ChannelMeans(), 1)
    # the one decode process has credits for 64 frames: it waits while the model encodes the other 161
    assert slow.decoders_held_s > 0.6 and slow.decoders_held_s > 3 * slow.decode_wait_s
    assert fast.decode_wait_s > 5 * fast.decoders_held_s  # the decode process's start-up alone
    assert stats_of(ChannelMeans(), 0).decoders_held_s is None


# -- decoding while the model loads ---------------------------------------------------------------------

def _counting_decode_starts(monkeypatch) -> list[int]:
    """How many sets of decode processes a run starts (the number of processes in each)."""
    starts: list[int] = []
    original = decode_processes.DecodeProcesses.__init__

    def counted(self, jobs, decode_args, decoders, *args, **kwargs):
        starts.append(len(decoders))
        original(self, jobs, decode_args, decoders, *args, **kwargs)

    monkeypatch.setattr(decode_processes.DecodeProcesses, "__init__", counted)
    return starts


def _processes_running_when_called(monkeypatch, module, name: str) -> list[int]:
    """How many child processes run each time ``module.name`` is called."""
    import multiprocessing

    called = getattr(module, name)
    running: list[int] = []

    def watched(*args, **kwargs):
        running.append(len(multiprocessing.active_children()))
        return called(*args, **kwargs)

    monkeypatch.setattr(module, name, watched)
    return running


def _same_store(a: Path, b: Path) -> None:
    with vfeat.open_store(str(a)) as one, vfeat.open_store(str(b)) as two:
        assert sorted(one.ids) == sorted(two.ids)
        for vid in one.ids:
            for x, y in zip(one[vid], two[vid]):
                np.testing.assert_array_equal(x, y)


def test_decoding_starts_before_the_model_loads_and_stores_the_same(tmp_path, clips, tiny_model, monkeypatch):
    """The decode processes are running when the model starts loading; the store is the one a run that
    starts them after the load writes (VFEAT_EARLY_DECODE=0), bit for bit."""
    from vfeat import extractor

    running_at_load = _processes_running_when_called(monkeypatch, extractor, "load_model")
    starts = _counting_decode_starts(monkeypatch)
    kwargs = dict(tiny_model.extract_kwargs(), fps=10.0, batch_size=7)
    vfeat.extract([str(c) for c in clips], str(tmp_path / "two.zarr"), workers=2, **kwargs)
    assert running_at_load == [2] and starts == [2]
    vfeat.extract([str(c) for c in clips], str(tmp_path / "early.zarr"), workers=1, **kwargs)
    monkeypatch.setenv("VFEAT_EARLY_DECODE", "0")
    vfeat.extract([str(c) for c in clips], str(tmp_path / "late.zarr"), workers=1, **kwargs)
    assert running_at_load == [2, 1, 0] and starts == [2, 1, 1]
    _same_store(tmp_path / "early.zarr", tmp_path / "late.zarr")


def test_with_a_loaded_model_decoding_starts_before_the_store_is_opened(tmp_path, clips, tiny_model, monkeypatch):
    """A caller that passes its loaded model (a benchmark, a pipeline calling extract again and again): the
    decode processes start before the store is opened and set up, and the run's seconds include them."""
    from vfeat import extractor
    from vfeat.models.factory import load_model

    running_at_open = _processes_running_when_called(monkeypatch, extractor, "ShardWriter")
    kwargs = tiny_model.extract_kwargs()
    encoder = load_model(kwargs["model"], kwargs["pretrained"], config=kwargs["model_config"])
    started = time.perf_counter()
    summary = vfeat.extract([str(c) for c in clips], str(tmp_path / "s.zarr"), encoder=encoder, fps=10.0, workers=2)
    assert running_at_open == [2] and summary.videos_ok == len(clips)
    assert summary.seconds > 0.9 * (time.perf_counter() - started)  # nothing before the clock but listing the inputs


def test_waiting_for_the_model_to_load_is_not_counted_as_waiting_for_it_to_take_frames(tmp_path, clips, tiny_model,
                                                                                         monkeypatch):
    """Started before a 2-second load, the decode process fills its frame budget and waits for the load: that
    is not the model holding decoding back (``decoders_held_s``), and the model finds its frames ready."""
    from vfeat import extractor

    load_model = extractor.load_model
    monkeypatch.setattr(extractor, "load_model", lambda *args, **kwargs: time.sleep(2.0) or load_model(*args, **kwargs))
    summary = vfeat.extract([str(c) for c in clips], str(tmp_path / "s.zarr"),
                            **dict(tiny_model.extract_kwargs(), fps=25.0, workers=1))  # 225 frames: more than its budget
    assert summary.frames == 225 and summary.timings["model_load_s"] > 2.0
    assert summary.timings["decoders_held_s"] < 0.5 and summary.timings["decode_wait_s"] < 0.5, summary.timings


def test_a_wrong_guess_of_the_input_size_starts_decoding_again_at_the_models(tmp_path, clips, tiny_model, monkeypatch):
    from vfeat import extractor

    kwargs = dict(tiny_model.extract_kwargs(), fps=10.0, batch_size=7, workers=1)
    vfeat.extract([str(c) for c in clips], str(tmp_path / "right.zarr"), **kwargs)
    assert extractor.input_guess(tiny_model.name, tiny_model.config) == (32, "bicubic", True)
    monkeypatch.setattr(extractor, "input_guess", lambda *args: factory.InputGuess(48, "bicubic", True))
    starts = _counting_decode_starts(monkeypatch)
    vfeat.extract([str(c) for c in clips], str(tmp_path / "wrong.zarr"), **kwargs)
    assert starts == [1, 1]  # before the load at 48 px, then again at the model's 32
    _same_store(tmp_path / "right.zarr", tmp_path / "wrong.zarr")


def test_a_resumed_run_decodes_early_only_the_videos_the_store_lacks(tmp_path, clips, tiny_model, monkeypatch):
    store = tmp_path / "s.zarr"
    kwargs = dict(tiny_model.extract_kwargs(), fps=10.0, batch_size=7, workers=1)
    vfeat.extract([str(c) for c in clips[:2]], str(store), **kwargs)
    taken: list[int] = []
    original = decode_processes.DecodeProcesses.__init__

    def counted(self, jobs, *args, **kwargs):
        taken.append(len(jobs))
        original(self, jobs, *args, **kwargs)

    monkeypatch.setattr(decode_processes.DecodeProcesses, "__init__", counted)
    summary = vfeat.extract([str(c) for c in clips], str(store), **kwargs)
    assert (summary.videos_skipped, summary.videos_ok) == (2, 3) and taken == [3]  # started once, for the 3 left
    vfeat.extract([str(c) for c in clips], str(tmp_path / "whole.zarr"), **kwargs)
    _same_store(store, tmp_path / "whole.zarr")


@pytest.mark.parametrize("model, fixture", [("clip-vip-b32", "clip_vip_ext"), ("open-vclip-b16", "open_vclip")])
def test_a_clip_model_decodes_its_clips_while_it_loads_and_stores_the_same(tmp_path, clips, fixtures_dir, monkeypatch,
                                                                           model, fixture):
    """CLIP-ViP and Open-VCLIP: the input size comes from the configuration, the clips from the sampling;
    the store is the one a run that decodes after the load writes."""
    from vfeat import extractor

    config = str(fixtures_dir / fixture / "config.json")
    checkpoint = tmp_path / "weights.pt"
    torch.save(vfeat.load_model(model, "none", config=config).state_dict(), checkpoint)
    running_at_load = _processes_running_when_called(monkeypatch, extractor, "load_model")
    kwargs = dict(model=model, pretrained=str(checkpoint), model_config=config, num_frames=4, workers=1)
    vfeat.extract([str(c) for c in clips], str(tmp_path / "early.zarr"), **kwargs)
    monkeypatch.setenv("VFEAT_EARLY_DECODE", "0")
    vfeat.extract([str(c) for c in clips], str(tmp_path / "late.zarr"), **kwargs)
    assert running_at_load == [1, 0]
    with vfeat.open_store(str(tmp_path / "early.zarr")) as early, vfeat.open_store(str(tmp_path / "late.zarr")) as late:
        assert sorted(early.ids) == sorted(late.ids) and len(early.ids) == len(clips)
        for vid in early.ids:
            for x, y in zip(early.clips(vid), late.clips(vid)):
                np.testing.assert_array_equal(x, y)


def test_a_model_that_fails_to_load_stops_the_early_decoding_and_writes_nothing(tmp_path, clips, tiny_model, monkeypatch):
    import multiprocessing

    from vfeat.errors import VfeatError

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    store = tmp_path / "s.zarr"
    starts = _counting_decode_starts(monkeypatch)
    with pytest.raises(VfeatError, match="broken.pt"):
        vfeat.extract([str(c) for c in clips], str(store), **dict(tiny_model.extract_kwargs(str(broken)), fps=10.0, workers=2))
    assert starts == [2]  # they had started
    assert multiprocessing.active_children() == [] and not store.exists()


def test_the_input_size_guessed_from_the_configuration_is_the_loaded_models():
    from vfeat.models.factory import input_guess, load_model

    encoder = load_model("ViT-B/32", "none")
    assert input_guess("ViT-B/32") == (encoder.preprocess.image_size, encoder.preprocess.interpolation, True) == (224, "bicubic", True)
    assert input_guess("ViT-L/14@336px") == (336, "bicubic", True) and input_guess("RN50x4") == (288, "bicubic", True)
    assert input_guess("clip-vip-b16") == (224, "bicubic", False)  # from the registry's architecture
    vclip = load_model("open-vclip-b16", "none")
    assert input_guess("open-vclip-b16") == (vclip.preprocess.image_size, "bicubic", False) == (224, "bicubic", False)


def test_a_video_failing_midway_with_rows_in_a_batch_is_dropped_and_the_others_are_stored(tmp_path, monkeypatch):
    """A long video (its rows spooled to a file) fails after some of its frames were batched: its spool
    file is gone, the batch still runs for the other videos, and the failure is reported."""
    monkeypatch.setenv("VFEAT_ROWS_IN_MEMORY_MB", str(1 / 1024))
    monkeypatch.setattr(spool, "BLOCK_ROWS", 8)
    rng = np.random.default_rng(2)
    long_frames, short_frames = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    failing = _video_messages(0, long_frames)[:6] + [("error", 0, "/videos/long.mp4: truncated")]  # 20 of 200 frames
    messages = failing + _video_messages(1, short_frames)
    sources = [VideoSource("long.mp4", "/videos/long.mp4"), VideoSource("short.mp4", "/videos/short.mp4")]
    results = list(encode_videos(messages, sources, ChannelMeans(), SamplingPlan(), batch_size=64, storage_dtype="float32",
                                 spool_dir=str(tmp_path)))
    assert [type(r).__name__ for r in results] == ["Failure", "VideoRecord"]
    assert results[0].error == "/videos/long.mp4: truncated"
    np.testing.assert_allclose(results[1].features, _expected_means(short_frames), rtol=1e-5, atol=1e-5)
    assert list(tmp_path.iterdir()) == []  # the failed video's spool file is gone


# -- the shard writer ----------------------------------------------------------------------------------

def _record(i: int, dim: int = 8) -> VideoRecord:
    rows = np.full((3, dim), i, np.float16)
    info = {"fps": 25.0, "duration_s": 0.12, "width": 64, "height": 48, "num_frames": 3, "start_time_s": 0.0, "rotation": 0}
    return VideoRecord(f"v{i}.mp4", f"/videos/v{i}.mp4", info, rows, np.arange(3) * 40.0)


def _attrs(dim: int = 8) -> dict:
    return {"format": "vfeat-store", "format_version": 1, "model": {"name": "t"}, "sampling": {"mode": "all"}, "dtype": "float16",
            "embed_dim": dim, "preprocess": {}, "has_frames": True, "has_clips": False}


def _stored(shard: str) -> dict[str, np.ndarray]:
    with vfeat.open_store(shard) as store:
        return {vid: store[vid][0] for vid in store.ids}


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_parts_commit_from_the_writer_thread_and_merge_by_close(tmp_path, suffix):
    shard = str(tmp_path / f"s{suffix}")
    writer = ShardWriter(shard, _attrs(), flush_videos=2, merge_seconds=3600)
    for i in range(7):
        writer.add(_record(i))
    writer._take_pending()  # wait for the part in flight (and put the rest aside, as a killed run would)
    parts = sorted(Path(journal_dir(shard)).glob("part-*.pkl"))
    assert len(parts) == 3  # 6 videos in parts of 2; the 7th was not due yet
    writer.add(_record(6))
    writer.close()
    stored = _stored(shard)
    assert sorted(stored) == [f"v{i}.mp4" for i in range(7)]
    for i in range(7):
        np.testing.assert_array_equal(stored[f"v{i}.mp4"], np.full((3, 8), i, np.float16))
    assert not Path(journal_dir(shard)).exists()


def _write_parts(shard: str, failed_first: list[int]) -> ShardWriter:
    """A writer with one journal part per video (and per failure), none merged yet."""
    writer = ShardWriter(shard, _attrs(), flush_videos=1, merge_seconds=3600)
    for i in failed_first:
        writer.fail(Failure(f"v{i}.mp4", f"/videos/v{i}.mp4", f"/videos/v{i}.mp4: unreadable"))
    for i in range(6):
        writer.add(_record(i))
    writer.fail(Failure("v9.mp4", "/videos/v9.mp4", "/videos/v9.mp4: unreadable"))
    writer._take_pending()
    return writer


@pytest.mark.parametrize("suffix, join_bytes, appends", [
    (".zarr", None, [6]),  # parts still in memory at close
    (".h5", None, [6]),  # parts read back from disk at close
    (".zarr", 2 * 72, [2, 2, 2, 0]),  # 72 bytes of rows per video: two videos per append, then the last failure
])
def test_parts_merge_joined_with_the_same_result_as_one_by_one(tmp_path, monkeypatch, suffix, join_bytes, appends):
    """Parts merge in few appends (an append's cost hardly depends on its size), up to JOIN_BYTES of rows
    each, and leave the store that appending them one by one leaves: same ids in order, rows, timestamps,
    failures (a failure followed by a success of the same video is dropped)."""
    one_by_one = str(tmp_path / f"one_by_one{suffix}")
    monkeypatch.setattr(writer_module, "JOIN_BYTES", 0)
    _write_parts(one_by_one, failed_first=[2]).close()
    monkeypatch.undo()

    seen = []
    real_append = writer_module.append
    monkeypatch.setattr(writer_module, "append", lambda tree, batch: seen.append(len(batch.videos)) or real_append(tree, batch))
    if join_bytes is not None:
        monkeypatch.setattr(writer_module, "JOIN_BYTES", join_bytes)
    joined = str(tmp_path / f"joined{suffix}")
    _write_parts(joined, failed_first=[2]).close()
    assert seen == appends

    with vfeat.open_store(one_by_one) as a, vfeat.open_store(joined) as b:
        assert a.ids == b.ids == [f"v{i}.mp4" for i in range(6)]
        for vid in a.ids:
            np.testing.assert_array_equal(a[vid][0], b[vid][0])
            np.testing.assert_array_equal(a[vid][1], b[vid][1])
        assert [f.video_id for f in a.failures()] == [f.video_id for f in b.failures()] == ["v9.mp4"]


def test_unmerged_parts_of_a_killed_run_are_replayed(tmp_path):
    shard = str(tmp_path / "s.zarr")
    writer = ShardWriter(shard, _attrs(), flush_videos=1, merge_seconds=3600)
    for i in range(3):
        writer.add(_record(i))
    writer._take_pending()
    assert _stored(shard) == {}  # committed as parts, not merged yet
    del writer  # killed: no close
    reopened = ShardWriter(shard, _attrs())
    assert reopened.committed == {"v0.mp4", "v1.mp4", "v2.mp4"}
    reopened.close()
    assert sorted(_stored(shard)) == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_a_failure_in_the_writer_thread_reaches_the_caller(tmp_path, monkeypatch):
    shard = str(tmp_path / "s.zarr")
    writer = ShardWriter(shard, _attrs(), flush_videos=1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.fs, "write_atomic", disk_full)
    writer.add(_record(0))  # handed to the writer thread, which fails
    with pytest.raises(OSError, match="No space left"):
        writer.add(_record(1))
    monkeypatch.undo()
    writer.close()


# -- vfeat's processes leave the caller's main module out --------------------------------------------------

def test_only_vfeats_own_processes_leave_the_main_module_out():
    """vfeat's spawned processes get no main module to import (tests/test_readme.py shows why that matters);
    every other process started the spawn way still does, even one started by another thread meanwhile."""
    import threading
    from multiprocessing import spawn

    from vfeat import _spawn

    main_keys = {"init_main_from_name", "init_main_from_path"}
    before = main_keys & set(spawn.get_preparation_data("other"))
    assert before, "pytest's main module should be importable by spawned processes"
    process = _spawn.spawn_context().Process(target=os.getpid)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert main_keys & set(spawn.get_preparation_data("other")) == before

    seen_by_other_thread: list[set] = []
    _spawn._starting.without_main = True  # as while vfeat starts one of its processes in this thread
    try:
        assert not main_keys & set(spawn.get_preparation_data("vfeat's"))
        other = threading.Thread(target=lambda: seen_by_other_thread.append(main_keys & set(spawn.get_preparation_data("x"))))
        other.start()
        other.join()
    finally:
        _spawn._starting.without_main = False
    assert seen_by_other_thread == [before]


# -- warnings reach the user -----------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a GPU decoder that fails to start: this machine has a working one")
@pytest.mark.parametrize("workers", ["0", "1"])
def test_cli_shows_vfeat_warnings_from_the_main_process_and_from_decode_workers(tmp_path, clips, tiny_model, workers):
    """The CLI silences open_clip's root-logger chatter; vfeat's own warnings (here: the GPU decoder could not
    start, so decoding fell back to the CPU) must still reach stderr, as ``vfeat: ...`` lines, whether the
    video was decoded in the CLI's process or in a decode worker."""
    env = dict(os.environ, VFEAT_HWACCEL="cuda")  # what --hwaccel sets in its workers, without the GPU check
    proc = subprocess.run([*vfeat_command(), "extract", str(clips[0]), "--out", str(tmp_path / "s.zarr"), "--fps", "1",
                           "--workers", workers, "--no-progress", *tiny_model.cli_args()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "hardware decoding (cuda) is unavailable" in line]
    assert len(warnings) == 1 and warnings[0].startswith("vfeat: "), proc.stderr
