"""Shared fixtures for the extraction tests: real videos made by the ffmpeg CLI, the ffprobe / ffmpeg CLI as
independent oracles (true frame times, rgb24 frames a player would show), and a tiny open_clip model saved
to disk in both weight formats vfeat accepts (an open_clip state dict and an OpenAI-style TorchScript
archive).

Every fixture here is additive: other test modules keep their own helpers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
TINY_CONFIG = TESTS / "data" / "vfeat-tiny-vit.json"
TINY_NAME = "vfeat-tiny-vit"


# -- videos ----------------------------------------------------------------------------------------

def run_ffmpeg(args: Sequence[str]) -> None:
    """Run the ffmpeg CLI quietly; a failure shows ffmpeg's own message."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{result.stderr}")


def vfeat_command() -> list[str]:
    """The installed console script (what users run), or the module when it is not on PATH."""
    script = shutil.which("vfeat")
    return [script] if script else [sys.executable, "-m", "vfeat.cli"]


def make_video(directory: Path | str, name: str, duration: float = 1.0, fps: str | float = 25,
               size: tuple[int, int] = (96, 64), codec: str = "libx264", pix_fmt: str | None = "yuv420p",
               *extra: str, vf: str | None = None, source: str = "testsrc2") -> Path:
    """``ffmpeg -f lavfi -i testsrc2=size=WxH:rate=FPS:duration=D [-vf VF] -c:v CODEC -pix_fmt PIX EXTRA.. NAME``.

    ``extra`` are output options placed after the codec (``-f mpegts``, ``-bf 0``, ...). testsrc2 draws a
    moving object and a running clock, so neighbouring frames differ.
    """
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    args = ["-f", "lavfi", "-i", f"{source}=size={w}x{h}:rate={fps}:duration={duration}"]
    if vf:
        args += ["-vf", vf]
    args += ["-c:v", codec]
    if pix_fmt:
        args += ["-pix_fmt", pix_fmt]
    args += [*extra, str(path)]
    run_ffmpeg(args)
    return path


@pytest.fixture(autouse=True)
def vfeat_logs_reach_caplog(monkeypatch):
    """The CLI stops vfeat's loggers propagating to the root logger (``vfeat._log``); CLI tests run in this
    process, so put propagation back for the tests that read warnings through ``caplog``."""
    monkeypatch.setattr(logging.getLogger("vfeat"), "propagate", True)


@pytest.fixture(name="make_video")
def make_video_fixture() -> Callable[..., Path]:
    """The :func:`make_video` factory: ``make_video(tmp_path, "a.mp4", duration, fps, size, codec, pix_fmt, *extra)``."""
    return make_video


# -- oracles: the ffprobe / ffmpeg CLI --------------------------------------------------------------

@dataclass(frozen=True)
class ProbeOracle:
    """What ffprobe says about a file's first video stream, from decoding every frame."""

    pts: list[int]  # presentation timestamps of the decoded frames, ascending
    time_base: Fraction
    width: int  # as stored (before rotation)
    height: int
    pix_fmt: str
    codec: str
    avg_frame_rate: Fraction
    rotation: int  # display-matrix rotation from the stream side data (0 when none)

    @property
    def seconds(self) -> list[Fraction]:
        """Exact frame times from the first frame."""
        return [(p - self.pts[0]) * self.time_base for p in self.pts]

    @property
    def start_s(self) -> Fraction:
        return self.pts[0] * self.time_base

    @property
    def count(self) -> int:
        return len(self.pts)


def ffprobe(path: Path | str) -> ProbeOracle:
    """``ffprobe -select_streams v:0 -show_entries frame=pts,best_effort_timestamp:stream=...``."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
           "frame=pts,best_effort_timestamp:stream=time_base,width,height,pix_fmt,codec_name,avg_frame_rate:"
           "stream_side_data=rotation", "-of", "json", str(path)]
    data = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    stream = data["streams"][0]
    stamps = []
    for frame in data.get("frames", []):
        value = frame.get("pts", frame.get("best_effort_timestamp"))
        if value is not None:
            stamps.append(int(value))
    rotation = 0
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            rotation = int(side["rotation"])
    num, den = stream["time_base"].split("/")
    return ProbeOracle(
        pts=sorted(stamps), time_base=Fraction(int(num), int(den)), width=int(stream["width"]),
        height=int(stream["height"]), pix_fmt=stream.get("pix_fmt", ""), codec=stream.get("codec_name", ""),
        avg_frame_rate=Fraction(stream.get("avg_frame_rate", "0/1")), rotation=rotation,
    )


def ffmpeg_rgb_frames(path: Path | str, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames as a player shows them (ffmpeg's autorotation applied), converted by the ffmpeg CLI to rgb24:
    ``ffmpeg -i PATH -vf select='eq(n\\,i)+...' -fps_mode passthrough -f rawvideo -pix_fmt rgb24 -``.
    ``indices`` are decoded-frame numbers in presentation order (ffmpeg's ``n``)."""
    oracle = ffprobe(path)
    w, h = oracle.width, oracle.height
    if oracle.rotation % 180:
        w, h = h, w
    args = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path)]
    if indices is not None:
        expr = "+".join(f"eq(n\\,{int(i)})" for i in sorted(set(indices)))
        args += ["-vf", f"select='{expr}'"]
    args += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(args, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    if indices is not None:
        order = sorted(set(indices))
        frames = frames[[order.index(int(i)) for i in indices]]
    return frames


def frames_on_screen_oracle(seconds: Sequence[Fraction], targets: Sequence[Fraction]) -> list[int]:
    """The player's rule with exact rationals: the last frame whose time <= t (the first frame before it)."""
    out = []
    for t in targets:
        chosen = 0
        for i, s in enumerate(seconds):
            if s <= t:
                chosen = i
        out.append(chosen)
    return out


@pytest.fixture
def probe_oracle() -> Callable[[Path | str], ProbeOracle]:
    return ffprobe


@pytest.fixture
def ffmpeg_frames() -> Callable[..., np.ndarray]:
    return ffmpeg_rgb_frames


@pytest.fixture
def on_screen() -> Callable[[Sequence[Fraction], Sequence[Fraction]], list[int]]:
    return frames_on_screen_oracle


# -- a tiny model in both weight formats --------------------------------------------------------------

@dataclass(frozen=True)
class TinyModel:
    name: str
    config: str  # open_clip model-config JSON
    state_dict: str  # torch.save(model.state_dict()) -- open_clip key names, fp32
    archive: str  # OpenAI-style TorchScript archive, fp16, with input_resolution/context_length/vocab_size

    def cli_args(self, weights: str | None = None) -> list[str]:
        return ["--model", self.name, "--model-config", self.config, "--pretrained", weights or self.state_dict]

    def extract_kwargs(self, weights: str | None = None) -> dict:
        return {"model": self.name, "pretrained": weights or self.state_dict, "model_config": self.config,
                "device": "cpu", "precision": "fp32"}


def _openai_style_archive(model, path: Path) -> None:
    """An archive shaped like OpenAI's released ``ViT-*.pt``: a TorchScript module whose state dict has
    OpenAI's key names (which open_clip's CLIP keeps), the three integer extras, and fp16 weights."""
    import torch

    class OpenAIStyleCLIP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("visual", "transformer", "token_embedding", "ln_final"):
                setattr(self, name, getattr(model, name))
            for name in ("positional_embedding", "text_projection", "logit_scale"):
                setattr(self, name, getattr(model, name))
            size = model.visual.image_size
            self.register_buffer("input_resolution", torch.tensor(size[0] if isinstance(size, (tuple, list)) else size))
            self.register_buffer("context_length", torch.tensor(model.context_length))
            self.register_buffer("vocab_size", torch.tensor(model.vocab_size))

        def forward(self, image):
            return self.visual(image)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, but it is the format OpenAI ships
        traced = torch.jit.trace(OpenAIStyleCLIP(), torch.zeros(1, 3, 32, 32), check_trace=False)
        traced = traced.half()
        torch.jit.save(traced, str(path))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """vfeat-tiny-vit (tests/data/vfeat-tiny-vit.json, 32 px input) with every parameter perturbed away from its
    init (so no layer norm or bias is a no-op) and rounded to fp16 (so the fp16 archive and the fp32 state dict
    hold identical values). The init is seeded (in a forked RNG, leaving torch's global generator alone), so the
    weights are the same whichever tests ran first."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-model")
    open_clip.add_model_config(TINY_CONFIG)
    gen = torch.Generator().manual_seed(1234)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(TINY_NAME, pretrained=None).eval()
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=gen)
            scale = 0.05 * (param.detach().float().std() if param.numel() > 1 else 1.0) + 0.02
            param.add_(noise * scale)
            param.copy_(param.half().float())
    state_path = folder / "tiny_open_clip.pt"
    torch.save(model.state_dict(), state_path)
    archive_path = folder / "tiny_openai_jit.pt"
    _openai_style_archive(model, archive_path)
    return TinyModel(TINY_NAME, str(TINY_CONFIG), str(state_path), str(archive_path))


# -- shared data --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``shared/fixtures`` beside the repository (or $VFEAT_FIXTURES)."""
    return Path(os.environ.get("VFEAT_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return TESTS.parent


class Hung(Exception):
    """Not an OSError (as TimeoutError is): code under test that ignores a failed write must not swallow it."""


@contextlib.contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Raise :class:`Hung` in this (the main) thread after ``seconds``: a hung run fails its test instead of
    hanging the suite. The signal is sent to this thread itself: one sent to the process may land on
    another thread and leave this one blocked in its system call."""
    def hung(signum, frame):
        raise Hung(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.get_ident(), signal.SIGALRM))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGALRM, previous)
