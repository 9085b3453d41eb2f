"""Extraction throughput benchmark (issue 5): vfeat end to end against its own bound and against the
re-encode-to-a-temporary-file approach of the older extractors, all measured in the same run.

    python bench/extract.py                 # full corpus (first run generates it, ~5 min, cached)
    python bench/extract.py --quick         # smoke run, about 2 minutes
    python bench/extract.py --out-json bench/out/result.json

What is measured (``--fps 1``, ``--model`` with random weights, ``--precision`` on ``--device``):

- decode-only: vfeat's own decode path (``vfeat.workers.decode_job``: probe + select + decode_selected with
  the model's decode-time resize) over the whole corpus, in as many processes as the pipeline starts;
- model-only: ``encoder.encode_frames`` on preprocessed random batches of ``--batch-size``;
- bound: ``1 / (1/decode + 1/model)`` (serial: the issue's target) and ``min(decode, model)`` (overlapped);
- end to end: ``vfeat.extract(...)`` into a fresh .zarr with the default workers, and its ratio to the bound;
- baseline: video_features' way, per video ``ffmpeg -i in -an -filter:v fps=fps=1 tmp.mp4`` (libx264
  defaults), read every frame of tmp.mp4, PIL + the model's own open_clip transform, batch size 1;
- many small files: videos/s on the short clips and on one-second clips, with the number of model loads
  and decode processes started (must not grow with the number of videos);
- peak memory: a long 720p video at native fps ("all frames") at ``--rss-batch-size`` in a fresh
  process, peak RSS (and PSS) summed over the whole process tree, sampled from /proc;
- correctness: a sample of videos re-extracted with ``workers=0`` (decode in the main process) must give
  the same ids, exactly the same timestamps and the same features within fp16 noise.

Heavy imports (torch, vfeat.pipeline) live inside functions: decode worker processes are spawned, and
spawn re-imports this file in every worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = HERE / "out"
SHORT_SOURCES = [
    "testsrc2=size=320x240:rate={rate}",
    "mandelbrot=size=320x240:rate={rate}:start_scale={scale}",
    "life=size=320x240:rate={rate}:mold=10:ratio=0.1:seed={seed}:life_color=#00ff00:death_color=#c83232",
    "testsrc=size=320x240:rate={rate}",
]
RATES = ["25", "30000/1001", "24", "30"]
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "50", "-pix_fmt", "yuv420p"]
# the long 720p videos: crf 23, capped at 5 Mbps like web 720p (an uncapped 2-minute mandelbrot zoom
# reaches 18 Mbps and its decoding alone would dominate the corpus)
X264_CAPPED = X264 + ["-maxrate", "5M", "-bufsize", "10M"]


# ---------------------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def machine() -> dict:
    import av
    import torch

    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    try:
        version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    except OSError:  # GPU machines may have no ffmpeg CLI: the corpus then comes from elsewhere (--corpus)
        version = "none (no ffmpeg CLI; PyAV's own FFmpeg decodes)"
    mem_gb = None
    try:
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb,
        "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "pyav": av.__version__,
        "ffmpeg": version.replace("ffmpeg version ", ""), "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------------------------- corpus
def corpus_spec(args: argparse.Namespace) -> dict:
    if args.quick:
        return {"short": 8, "short_s": (2.0, 3.0), "long": 2, "long_s": 20, "tiny": 30, "rss_min": args.long_minutes or 0.2}
    return {"short": args.short_clips, "short_s": (3.0, 5.0), "long": 2, "long_s": args.long_seconds,
            "tiny": args.tiny_clips, "rss_min": args.long_minutes if args.long_minutes is not None else 10.0}


def _cached(folder: Path, key: dict) -> bool:
    stamp = folder / ".done.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(key))


def _mark(folder: Path, key: dict) -> None:
    (folder / ".done.json").write_text(json.dumps(key))


def make_corpus(spec: dict, root: Path) -> dict[str, Path]:
    """Generate (once; cached by parameters) the benchmark videos with the ffmpeg CLI."""
    dirs = {name: root / name for name in ("short", "long", "tiny", "rss")}
    # short 320x240 clips, 3-5 s, four sources and four frame rates (29.97 included), 2 s GOPs
    key = {"n": spec["short"], "s": spec["short_s"], "v": 2}
    if not _cached(dirs["short"], key):
        shutil.rmtree(dirs["short"], ignore_errors=True)
        dirs["short"].mkdir(parents=True)
        lo, hi = spec["short_s"]
        log(f"generating {spec['short']} short 320x240 clips ({lo}-{hi} s)")
        for i in range(spec["short"]):
            src = SHORT_SOURCES[i % len(SHORT_SOURCES)].format(rate=RATES[(i // 4) % len(RATES)], scale=0.5 + i / 10, seed=i)
            seconds = lo + (hi - lo) * ((i * 7) % 5) / 4
            ffmpeg("-f", "lavfi", "-i", src, "-t", f"{seconds:.2f}", *X264, str(dirs["short"] / f"clip_{i:03d}.mp4"))
        _mark(dirs["short"], key)
    # two long 720p H.264 videos (25 fps, GOP 50, crf 23)
    key = {"n": spec["long"], "s": spec["long_s"], "v": 3}
    if not _cached(dirs["long"], key):
        shutil.rmtree(dirs["long"], ignore_errors=True)
        dirs["long"].mkdir(parents=True)
        sources = ["testsrc2=size=1280x720:rate=25", "mandelbrot=size=1280x720:rate=25"]
        for i in range(spec["long"]):
            log(f"generating long 720p video {i + 1}/{spec['long']} ({spec['long_s']} s, {sources[i % 2].split('=')[0]})")
            ffmpeg("-f", "lavfi", "-i", sources[i % 2], "-t", str(spec["long_s"]), *X264_CAPPED, str(dirs["long"] / f"long_{i}_{sources[i % 2].split('=')[0]}.mp4"))
        _mark(dirs["long"], key)
    # one-second 320x240 clips (the "10,000 one-second clips" case, scaled down): one encode, segmented
    key = {"n": spec["tiny"], "v": 2}
    if not _cached(dirs["tiny"], key):
        shutil.rmtree(dirs["tiny"], ignore_errors=True)
        dirs["tiny"].mkdir(parents=True)
        log(f"generating {spec['tiny']} one-second clips")
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", str(spec["tiny"]), *X264[:-4],
               "-force_key_frames", "expr:gte(t,n_forced*1)", "-pix_fmt", "yuv420p", "-f", "segment", "-segment_time", "1",
               "-reset_timestamps", "1", str(dirs["tiny"] / "s_%05d.mp4"))
        _mark(dirs["tiny"], key)
    # the long video for the memory case: 720p at native 25 fps
    key = {"minutes": spec["rss_min"], "v": 3}
    if spec["rss_min"] > 0 and not _cached(dirs["rss"], key):
        shutil.rmtree(dirs["rss"], ignore_errors=True)
        dirs["rss"].mkdir(parents=True)
        log(f"generating the {spec['rss_min']}-minute 720p video for the memory case")
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-t", str(spec["rss_min"] * 60), *X264_CAPPED,
               str(dirs["rss"] / "long_rss.mp4"))
        _mark(dirs["rss"], key)
    return dirs


def replicate(dirs: dict[str, Path], root: Path, copies: int) -> dict[str, Path]:
    """``copies`` hard links of every corpus video under new names: a GPU machine decodes the whole corpus
    in a second or two, too short to time, and its corpus must travel small (64 MiB with the wheels)."""
    if copies <= 1:
        return dirs
    out = {}
    for name, folder in dirs.items():
        target = root / f"replicated-{copies}" / name
        if not _cached(target, {"copies": copies}):
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for video in sorted(folder.glob("*.mp4")):
                for k in range(copies):
                    os.link(video, target / f"{video.stem}_r{k:03d}{video.suffix}")
            _mark(target, {"copies": copies})
        out[name] = target
    return out


def videos_in(*folders: Path) -> list[str]:
    return sorted(str(p) for f in folders for p in f.glob("*.mp4"))


# ---------------------------------------------------------------------------------------------- memory
def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``root`` and all its descendants."""
    tree, todo, rss, pss = _children_of(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return rss, pss


class MemorySampler:
    """Samples the process tree's RSS/PSS every ``period`` seconds in a thread; keeps the peaks."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.peak_rss, self.peak_pss = period, 0, 0
        self.series: list[tuple[float, int]] = []  # (seconds, tree rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.started = time.perf_counter()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> int:
        rss, pss = _tree_memory(os.getpid())
        self.series.append((time.perf_counter(), rss))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        return rss

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """How much CPU *other* processes took while a phase ran: machine busy time (/proc/stat) minus this
    process tree's own CPU time (self + waited-for children). The box is shared and small: a phase
    measured while something else ran is not comparable with one measured on an idle machine."""

    def __enter__(self) -> "CpuMeter":
        self.busy0, self.own0, self.t0 = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        foreign = (self._busy() - self.busy0) - (self._own() - self.own0)
        self.foreign_share = max(0.0, foreign / max(wall * (os.cpu_count() or 1), 1e-9))

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
        return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def wait_idle(max_wait_s: float, threshold: float = 0.1, window_s: float = 5.0) -> float:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold`` of the CPU over
    ``window_s``; returns the last measured share."""
    started = time.perf_counter()
    last_log = -1e9
    while True:
        with CpuMeter() as meter:
            time.sleep(window_s)
        waited = time.perf_counter() - started
        if meter.foreign_share < threshold or waited > max_wait_s:
            if waited > max_wait_s:
                log(f"still {meter.foreign_share:.0%} of the CPU used by other processes after {waited:.0f} s: measuring anyway")
            return meter.foreign_share
        if waited - last_log >= 60:
            log(f"other processes use {meter.foreign_share:.0%} of the CPU: waiting for a quieter machine")
            last_log = waited


WAIT_IDLE_S = 0.0


def measured(fn, *a, **k) -> dict:
    """Run one measurement; attach the share of the CPU that other processes took meanwhile, and the CPU
    seconds of this process and of the processes it started and joined (the decode processes)."""
    import resource

    if WAIT_IDLE_S > 0:
        wait_idle(WAIT_IDLE_S)

    def cpu(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    this, children = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    with CpuMeter() as meter:
        result = fn(*a, **k)
    result["other_load"] = meter.foreign_share
    result["cpu_s"] = {"this_process": cpu(resource.RUSAGE_SELF) - this, "children": cpu(resource.RUSAGE_CHILDREN) - children}
    return result


def rss_child(args: argparse.Namespace) -> None:
    """Fresh process: extract the long video at native fps ("all frames") and report peak memory."""
    import resource

    import vfeat

    with MemorySampler() as sampler:
        baseline_rss = sampler.sample()
        started = time.perf_counter()
        # the model is loaded by extract() itself, as `vfeat extract` does (extraction drops the text tower)
        summary = vfeat.extract([args.rss_video], args.rss_out, model=args.model, pretrained="none", device=args.device,
                                precision=args.precision, batch_size=args.rss_batch_size)
        seconds = time.perf_counter() - started
        after = sampler.sample()  # what the process keeps once extract() returned
    # bounded means flat: the peak of the last half of the run is no higher than that of its first quarter
    span = sampler.series[-1][0] - sampler.series[0][0] if sampler.series else 0.0
    first = max((m for t, m in sampler.series if t - sampler.series[0][0] <= span / 4), default=0)
    last = max((m for t, m in sampler.series if t - sampler.series[0][0] >= span / 2), default=0)
    result = {
        "frames": summary.frames, "seconds": seconds, "fps": summary.frames / seconds,
        "rss_before_extract_mb": baseline_rss / 2**20, "rss_after_extract_mb": after / 2**20,
        "peak_tree_rss_mb": sampler.peak_rss / 2**20, "peak_tree_pss_mb": sampler.peak_pss / 2**20,
        "ru_maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ru_maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_rss_first_quarter_mb": first / 2**20, "peak_rss_second_half_mb": last / 2**20,
        "videos_failed": summary.videos_failed,
    }
    print("RSS_RESULT " + json.dumps(result), flush=True)


def measure_rss(args: argparse.Namespace, video: str, run_dir: Path) -> dict:
    out = run_dir / "rss.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", "--rss-video", video, "--rss-out", str(out),
           "--model", args.model, "--device", args.device, "--precision", args.precision,
           "--rss-batch-size", str(args.rss_batch_size)] + (["--no-skip"] if args.no_skip else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_RESULT "):
            return json.loads(line[len("RSS_RESULT "):])
    raise RuntimeError(f"memory run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------------------- decode-only
def _count(messages) -> tuple[int, int]:
    """(decoded frames, rows) in a stream of decode-worker messages; an error message is raised."""
    frames, rows = 0, 0
    for message in messages:
        if message[0] == "frames":
            frames += len(message[3])
            rows += sum(len(r) for r in message[2])
        elif message[0] == "error":
            raise RuntimeError(message[2])
    return frames, rows


def _decode_count(item: tuple) -> tuple[int, int]:
    """One video through vfeat's decode path; returns (decoded frames, rows)."""
    from vfeat.workers import decode_job

    job, path, plan, resize = item
    return _count(decode_job(job, path, plan, resize, False))


def _pool_init(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as vfeat.workers.worker_main does
    os.environ.setdefault("VFEAT_DECODE_THREADS", str(threads))  # as vfeat.pipeline gives each decode worker


def decode_every_packet() -> None:
    """--no-skip: vfeat's decoder without packet skipping (vfeat/gop.py), in this process and, through the
    environment, in every decode process it starts."""
    os.environ["VFEAT_DECODE_SKIP"] = "0"


def decode_only(paths: list[str], plan, resize, workers: int, hwaccel: str | None = None, hwaccel_workers: int = 0) -> dict:
    import multiprocessing as mp

    try:
        from vfeat.decode_processes import decoder_threads
    except ImportError:  # a checkout from before it moved (bench/overhead.py --tree)
        from vfeat.pipeline import decoder_threads

    if hwaccel:
        return decode_only_mixed(paths, plan, resize, workers, hwaccel, hwaccel_workers)
    items = [(i, p, plan, resize) for i, p in enumerate(paths)]
    started = time.perf_counter()
    if workers == 0:
        results = [_decode_count(item) for item in items]
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_pool_init, initargs=(decoder_threads(workers),)) as pool:
            results = list(pool.imap_unordered(_decode_count, items))
    frames, rows = sum(r[0] for r in results), sum(r[1] for r in results)
    return _rates(frames, rows, time.perf_counter() - started, videos=len(paths), workers=workers)


def decode_only_mixed(paths: list[str], plan, resize, workers: int, hwaccel: str | None, hwaccel_workers: int) -> dict:
    """Decode-only through the pipeline's own worker start-up (``workers`` CPU decoders and
    ``hwaccel_workers`` on the GPU's decoder, one shared queue); frames cross to this process as in a run."""
    from vfeat.decode_processes import decode_in_processes
    from vfeat.pipeline import RunStats

    started = time.perf_counter()
    frames, rows = _count(decode_in_processes(list(enumerate(paths)), plan, resize, False, workers, RunStats(),
                                              hwaccel, hwaccel_workers))
    return _rates(frames, rows, time.perf_counter() - started, videos=len(paths), workers=workers, hwaccel=hwaccel,
                  hwaccel_workers=hwaccel_workers)


def _rates(frames: int, rows: int, seconds: float, **settings) -> dict:
    return {"frames": frames, "rows": rows, "seconds": seconds, "fps": rows / seconds, "decoded_fps": frames / seconds,
            **settings}


# ------------------------------------------------------------------------------------------ model-only
def model_only(encoder, batch_size: int, frames: int, warmup: int = 2) -> dict:
    import torch

    size = encoder.preprocess.image_size
    dtype = getattr(encoder, "compute_dtype", torch.float32)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, size, size, generator=gen).to(encoder.device, dtype)
    batch = batch.contiguous(memory_format=torch.channels_last)  # as vfeat's Batcher hands it over
    batches = max(1, math.ceil(frames / batch_size))
    with torch.inference_mode():
        for _ in range(warmup):
            encoder.encode_frames(batch)
        _sync(encoder.device)
        started = time.perf_counter()
        for _ in range(batches):
            encoder.encode_frames(batch)
        _sync(encoder.device)
        seconds = time.perf_counter() - started
    return {"frames": batches * batch_size, "seconds": seconds, "fps": batches * batch_size / seconds, "batch_size": batch_size}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ end to end
class _Counter:
    """Counts model constructions and process starts during a run (they must not scale with videos)."""

    def __enter__(self) -> "_Counter":
        import multiprocessing.process as mpp

        import open_clip

        self.models = self.processes = 0
        self._create, self._start = open_clip.create_model, mpp.BaseProcess.start
        counter = self

        def create(*a, **k):
            counter.models += 1
            return counter._create(*a, **k)

        def start(proc):
            counter.processes += 1
            return counter._start(proc)

        open_clip.create_model, mpp.BaseProcess.start = create, start
        return self

    def __exit__(self, *exc: object) -> None:
        import multiprocessing.process as mpp

        import open_clip

        open_clip.create_model, mpp.BaseProcess.start = self._create, self._start


class GpuUtilisation:
    """Mean GPU utilisation (nvidia-smi, every 0.5 s) while a phase runs; None without a GPU."""

    def __enter__(self) -> "GpuUtilisation":
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.mean = sum(self.samples) / len(self.samples) if self.samples else None


def end_to_end(inputs: list[str], out: Path, args: argparse.Namespace, encoder=None) -> dict:
    import vfeat

    import resource

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with _Counter() as counter, GpuUtilisation() as gpu:
        summary = vfeat.extract(inputs, str(out), model=args.model, pretrained="none", fps=args.fps, device=args.device,
                                precision=args.precision, batch_size=args.batch_size, workers=args.workers, encoder=encoder,
                                hwaccel=args.hwaccel, hwaccel_workers=args.hwaccel_workers)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    main_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if summary.videos_failed:
        raise RuntimeError(f"end-to-end run failed on {summary.videos_failed} videos: {summary.failures[:3]}")
    return {"frames": summary.frames, "videos": summary.videos_ok, "seconds": summary.seconds, "wall_s": wall,
            "fps": summary.frames / summary.seconds, "videos_per_s": summary.videos_ok / summary.seconds,
            "videos_per_s_with_load": summary.videos_ok / wall, "model_loads": counter.models,
            "processes_started": counter.processes, "gpu_utilisation": gpu.mean,
            "main_process_cpu_s": main_cpu_s, "timings": summary.timings,
            "x_real_time": summary.video_seconds / summary.seconds}


# -------------------------------------------------------------------------------------------- baseline
def baseline(paths: list[str], encoder, fps: float, tmp: Path) -> dict:
    """video_features' frame-wise extractor: re-encode at the target fps into a temporary mp4 with
    ``ffmpeg -y -i in -an -filter:v fps=fps=F tmp.mp4`` (libx264 defaults), then read every frame of it,
    PIL + the model's transform (open_clip's own), batch size 1, ``encode_image`` under no_grad."""
    import av
    import open_clip
    import torch
    from PIL import Image

    pre = encoder.preprocess
    transform = open_clip.image_transform(pre.image_size, is_train=False, mean=pre.mean, std=pre.std,
                                          interpolation=pre.interpolation, resize_mode=pre.resize_mode)
    model = encoder.model
    tmp.mkdir(parents=True, exist_ok=True)
    frames, reencode_s = 0, 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            new_path = tmp / f"{Path(path).stem}_new_fps.mp4"
            t0 = time.perf_counter()
            ffmpeg("-i", path, "-an", "-filter:v", f"fps=fps={fps:g}", str(new_path))
            reencode_s += time.perf_counter() - t0
            feats = []
            with av.open(str(new_path)) as container:
                for frame in container.decode(video=0):
                    rgb = frame.to_ndarray(format="rgb24")  # cv2.read + cvtColor(BGR2RGB) in the original
                    x = transform(Image.fromarray(rgb)).unsqueeze(0).to(encoder.device)
                    feats.append(model.encode_image(x).cpu().numpy())
                    frames += 1
            os.remove(new_path)
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "reencode_s": reencode_s, "videos": len(paths)}


# ----------------------------------------------------------------------------------------- correctness
def correctness(sample: list[str], full_store: Path, out: Path, args: argparse.Namespace, encoder) -> dict:
    import numpy as np

    import vfeat

    shutil.rmtree(out, ignore_errors=True)
    vfeat.extract(sample, str(out), model=args.model, pretrained="none", fps=args.fps, batch_size=args.batch_size,
                  workers=0, encoder=encoder)
    ids_ok, ts_ok, feat_ok, max_abs, min_cos, rows = True, True, True, 0.0, 1.0, 0
    with vfeat.open_store(str(full_store)) as full, vfeat.open_store(str(out)) as simple:
        ids = [Path(p).name for p in sample]
        ids_ok = sorted(simple.ids) == sorted(ids) and all(i in full for i in ids)
        for video_id in ids:
            fa, ta = full[video_id]
            fb, tb = simple[video_id]
            ts_ok &= ta.shape == tb.shape and bool(np.array_equal(ta, tb))
            a, b = fa.astype(np.float32), fb.astype(np.float32)
            if a.shape != b.shape:
                feat_ok = False
                continue
            rows += len(a)
            scale = float(np.abs(b).max()) or 1.0
            diff = float(np.abs(a - b).max())
            max_abs = max(max_abs, diff / scale)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            min_cos = min(min_cos, float(cos.min()))
            feat_ok &= bool(np.allclose(a, b, rtol=2e-3, atol=2e-3 * scale))
    shutil.rmtree(out, ignore_errors=True)
    return {"videos": len(sample), "rows": rows, "same_ids": ids_ok, "same_timestamps": ts_ok, "features_close": feat_ok,
            "max_abs_diff_rel": max_abs, "min_cosine": min_cos, "ok": ids_ok and ts_ok and feat_ok}


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small corpus, short memory case (smoke run, ~2 min)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip / vfeat model name (random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help="decode processes for decode-only and end to end (default: vfeat's default_workers())")
    p.add_argument("--short-clips", type=int, default=40)
    p.add_argument("--long-seconds", type=float, default=120.0, help="length of the two 720p videos")
    p.add_argument("--tiny-clips", type=int, default=200, help="number of one-second clips (many-small-files case)")
    p.add_argument("--long-minutes", type=float, default=None,
                   help="length of the 720p video of the memory case, at native 25 fps (default 10; --quick 0.2; 0 skips)")
    p.add_argument("--rss-batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=None, help="interleaved rounds of decode/model/end to end (default 3, so that one disturbed round does not set the median; --quick 1)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S",
                   help="before each measurement, wait up to S seconds for other processes to leave the CPU idle")
    p.add_argument("--no-skip", action="store_true",
                   help="decode every packet (VFEAT_DECODE_SKIP=0): the decoder before GOP and disposable-frame skipping")
    p.add_argument("--report", metavar="JSON", help="print the table of a saved --out-json result and exit")
    p.add_argument("--corpus-only", action="store_true", help="generate (or check) the corpus and exit")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--small-files-only", action="store_true",
                   help="only the many-small-files case on --tiny-clips one-second clips (e.g. 10000), model loaded by extract()")
    p.add_argument("--corpus", default=str(OUT / "corpus"), help="where the generated videos are cached")
    p.add_argument("--replicate", type=int, default=1, metavar="N",
                   help="use each corpus video N times (hard links): a corpus big enough to time on a GPU machine")
    p.add_argument("--hwaccel", default=None, help="also decode on the GPU's decoder (cuda: NVDEC), as vfeat extract --hwaccel")
    p.add_argument("--hwaccel-workers", type=int, default=None, help="with --hwaccel: GPU decode processes (default vfeat's, 4)")
    p.add_argument("--skip-small-files", action="store_true", help="skip the many-small-files runs")
    p.add_argument("--clips-only", action="store_true",
                   help="measure on the 320x240 clips only, without the 720p videos: at --fps 25 (every frame) a GPU "
                        "machine's decoders outrun a large model, the model-bound case")
    p.add_argument("--out-json", default=None)
    # internal: the memory case runs in a fresh process
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rss-video", help=argparse.SUPPRESS)
    p.add_argument("--rss-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    global WAIT_IDLE_S
    WAIT_IDLE_S = args.wait_idle
    logging_quiet()
    if args.report:
        print(report(summarise(json.loads(Path(args.report).read_text()))))
        return 0
    if args.rss_child:
        if args.no_skip:
            decode_every_packet()
        rss_child(args)
        return 0
    from vfeat.models.factory import load_model
    from vfeat.decode_processes import HWACCEL_WORKERS, default_workers
    from vfeat.pipeline import decode_resize
    from vfeat.sampling import SamplingPlan

    if args.no_skip:
        decode_every_packet()
    spec = corpus_spec(args)
    corpus_root = Path(args.corpus) / ("quick" if args.quick else "full")
    dirs = replicate(make_corpus(spec, corpus_root), corpus_root, args.replicate)
    if args.corpus_only:
        print(corpus_root)
        return 0
    run_dir = OUT / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads)")
    if args.small_files_only:
        return small_files_only(args, spec, dirs, info, run_dir, argv)

    short, long_ = videos_in(dirs["short"]), [] if args.clips_only else videos_in(dirs["long"])
    folders = [str(dirs["short"])] + ([] if args.clips_only else [str(dirs["long"])])
    corpus = short + long_
    encoder = load_model(args.model, "none", device=args.device, precision=args.precision)
    resize = decode_resize(encoder)
    plan = SamplingPlan(fps=args.fps)
    workers = default_workers(args.device) if args.workers is None else args.workers
    hw = ((HWACCEL_WORKERS if args.hwaccel_workers is None else args.hwaccel_workers) if args.hwaccel else 0)
    r: dict = {"date": dt.date.today().isoformat(), "machine": info,
               "command": "python bench/extract.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "settings": {"decoder": "vfeat, every packet decoded" if args.no_skip else "vfeat", "model": args.model,
                            "pretrained": "none", "precision": args.precision, "device": args.device, "fps": args.fps,
                            "batch_size": args.batch_size, "decode_workers": workers, "hwaccel": args.hwaccel,
                            "hwaccel_workers": hw},
               "corpus": {"replicate": args.replicate, "short_clips": len(short), "short_seconds": spec["short_s"], "long_videos": len(long_),
                          "long_seconds": spec["long_s"], "tiny_clips": spec["tiny"], "rss_minutes": spec["rss_min"]}}

    # 1. decode-only, model-only and end to end on the same corpus, in interleaved rounds (medians)
    e2e_store = run_dir / "e2e.zarr"
    rounds = []
    for k in range(args.repeat):
        log(f"round {k + 1}/{args.repeat}: decode-only ({len(corpus)} videos, {workers} worker process(es)), model-only, end to end")
        one = {"decode": measured(decode_only, corpus, plan, resize, workers, args.hwaccel, hw)}
        one["model"] = measured(model_only, encoder, args.batch_size, one["decode"]["rows"])
        one["e2e"] = measured(end_to_end, folders, e2e_store, args, encoder=encoder)
        d, m, e = one["decode"]["fps"], one["model"]["fps"], one["e2e"]["fps"]
        one["bound_serial"] = 1.0 / (1.0 / d + 1.0 / m)
        one["ratio_to_bound"] = e / one["bound_serial"]
        log(f"  decode {d:.1f}, model {m:.1f}, bound {one['bound_serial']:.1f}, end to end {e:.1f} frames/s "
            f"(ratio {one['ratio_to_bound']:.2f}; other processes took {max(one[x]['other_load'] for x in ('decode', 'model', 'e2e')):.0%} of the CPU)")
        if one["e2e"]["frames"] != one["decode"]["rows"]:
            log(f"WARNING: end to end stored {one['e2e']['frames']} rows, decode-only produced {one['decode']['rows']}")
        rounds.append(one)
    r["rounds"] = rounds
    if long_:
        r["decode_long"] = measured(decode_only, long_, plan, resize, workers, args.hwaccel, hw)
    summarise(r)

    # 2. the older extractors' way
    if not args.skip_baseline:
        log("baseline: re-encode to a temporary file at the target fps, read every frame, batch size 1")
        # video_features runs its model in fp32 (no reduced precision on the CPU): so does the baseline
        reference = encoder if args.precision == "fp32" else load_model(args.model, "none", device=args.device, precision="fp32")
        r["baseline"] = measured(baseline, corpus, reference, args.fps, run_dir / "tmp_reencode")
        r["baseline"]["precision"] = "fp32"
        del reference
        summarise(r)
        log(f"  {r['baseline']['fps']:.2f} frames/s")

    # 3. correctness against the simple path (workers=0)
    sample = short[:: max(1, len(short) // 5)][:5] + long_[:1]
    log(f"correctness: {len(sample)} videos against workers=0")
    r["correctness"] = measured(correctness, sample, e2e_store, run_dir / "simple.zarr", args, encoder)
    shutil.rmtree(e2e_store, ignore_errors=True)

    # 4. many small files: fresh extract calls that load their own model
    del encoder
    if not args.skip_small_files:
        log("many small files: short clips")
        r["small_short"] = measured(end_to_end, [str(dirs["short"])], run_dir / "small.zarr", args)
        log(f"many small files: {len(videos_in(dirs['tiny']))} one-second clips")
        r["small_tiny"] = measured(end_to_end, [str(dirs["tiny"])], run_dir / "tiny.zarr", args)
        r["small_tiny"]["clips"] = len(videos_in(dirs["tiny"]))
        shutil.rmtree(run_dir / "small.zarr", ignore_errors=True)
        shutil.rmtree(run_dir / "tiny.zarr", ignore_errors=True)

    # 5. peak memory on the long video at native fps, in a fresh process
    if spec["rss_min"] > 0:
        log(f"memory: {spec['rss_min']} min of 720p at native fps, batch {args.rss_batch_size} (fresh process)")
        r["memory"] = measured(measure_rss, args, videos_in(dirs["rss"])[0], run_dir)
        r["memory"]["minutes"] = spec["rss_min"]
        r["memory"]["batch_size"] = args.rss_batch_size

    print(report(r))
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(r, indent=2))
        log(f"wrote {args.out_json}")
    return 0


def small_files_only(args: argparse.Namespace, spec: dict, dirs: dict[str, Path], info: dict, run_dir: Path,
                     argv: list[str] | None) -> int:
    """The many-small-files case alone, at a scale the full benchmark does not run (10,000 clips)."""
    from vfeat.decode_processes import default_workers

    clips = len(videos_in(dirs["tiny"]))
    log(f"many small files: {clips} one-second clips, model loaded by extract()")
    result = measured(end_to_end, [str(dirs["tiny"])], run_dir / "tiny.zarr", args)
    shutil.rmtree(run_dir / "tiny.zarr", ignore_errors=True)
    workers = default_workers(args.device) if args.workers is None else args.workers
    r = {"date": dt.date.today().isoformat(), "machine": info,
         "command": "python bench/extract.py " + " ".join(sys.argv[1:] if argv is None else argv),
         "settings": {"model": args.model, "precision": args.precision, "device": args.device, "fps": args.fps,
                      "batch_size": args.batch_size, "decode_workers": workers},
         "small_tiny": dict(result, clips=clips)}
    ok = result["model_loads"] <= 1 and result["processes_started"] <= workers
    print(f"{clips} one-second clips, {args.model} {args.precision} on {args.device}, --fps {args.fps:g}, batch {args.batch_size}:\n"
          f"  videos/s {result['videos_per_s']:.2f} ({result['videos_per_s_with_load']:.2f} with the model load), "
          f"frames/s {result['fps']:.1f}, other load {result['other_load']:.0%}\n"
          f"  model loads {result['model_loads']}, decode processes started {result['processes_started']}: "
          f"{'no per-video start-up' if ok else 'PER-VIDEO START-UP'}")
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(r, indent=2))
        log(f"wrote {args.out_json}")
    return 0


CLEAN_LOAD = 0.10  # a round is "clean" when other processes took less than this share of the CPU in each phase


def summarise(r: dict) -> dict:
    """Headline figures from the rounds: the median over the clean rounds (other processes below
    CLEAN_LOAD in all three phases), else the least disturbed round. A ratio is only taken between
    figures of the same rounds."""
    rounds = r["rounds"]
    load = [max(x[k]["other_load"] for k in ("decode", "model", "e2e")) for x in rounds]
    chosen = [i for i, v in enumerate(load) if v < CLEAN_LOAD] or [min(range(len(rounds)), key=load.__getitem__)]
    r["headline_rounds"] = [i + 1 for i in chosen]
    for key in ("decode", "model", "e2e"):
        r[key] = dict(rounds[chosen[0]][key], fps=statistics.median(rounds[i][key]["fps"] for i in chosen),
                      other_load=max(rounds[i][key]["other_load"] for i in chosen))
    r["decode"]["decoded_fps"] = statistics.median(rounds[i]["decode"]["decoded_fps"] for i in chosen)
    d, m = r["decode"]["fps"], r["model"]["fps"]
    r["bound_serial"] = 1.0 / (1.0 / d + 1.0 / m)
    r["bound_overlapped"] = min(d, m)
    r["ratio_to_bound"] = statistics.median(rounds[i]["ratio_to_bound"] for i in chosen)
    r["ratio_to_overlapped"] = r["e2e"]["fps"] / r["bound_overlapped"]
    if "baseline" in r:
        r["ratio_to_baseline"] = r["e2e"]["fps"] / r["baseline"]["fps"]
    return r


def logging_quiet() -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init on the root logger


def report(r: dict) -> str:
    m, s, c0 = r["machine"], r["settings"], r["corpus"]
    lines = [
        f"vfeat extraction benchmark, {r['date']}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, AVX512-BF16 {'yes' if m['avx512_bf16'] else 'no'}, "
        f"GPU: {m['gpu'] or 'none'}; torch {m['torch']} ({m['torch_threads']} threads), PyAV {m['pyav']}, ffmpeg {m['ffmpeg'].split()[0]}",
        f"settings: {s['model']} (random weights) {s['precision']} on {s['device']}, --fps {s['fps']:g}, batch {s['batch_size']}, "
        f"{s['decode_workers']} decode worker process(es)"
        + (f" + {s['hwaccel_workers']} on {s['hwaccel']} (GPU decoder)" if s.get("hwaccel") else "")
        + f", decoder: {s.get('decoder', 'vfeat')}",
        f"corpus: {c0['short_clips']} clips 320x240 {c0['short_seconds'][0]:g}-{c0['short_seconds'][1]:g} s "
        + (f"+ {c0['long_videos']} x {c0['long_seconds']:g} s 720p H.264" if c0["long_videos"] else "(--clips-only: no 720p)")
        + f" = {r['decode']['rows']} sampled frames"
        + (f" (each video {c0['replicate']} times)" if c0.get("replicate", 1) > 1 else ""),
        f"command: {r['command']}",
        "",
        f"{'measure':<60}{'value':>13}{'other load':>12}",
        "-" * 85,
    ]

    def row(name: str, value: str, load: float | None = None) -> None:
        lines.append(f"{name:<60}{value:>13}{'' if load is None else f'{load:.0%}':>12}")

    dec, dl = r["decode"], r.get("decode_long")
    n, chosen = len(r["rounds"]), r.get("headline_rounds", [1])
    med = "" if n == 1 else (f" (round {chosen[0]} of {n})" if len(chosen) == 1 else f" (median of rounds {','.join(map(str, chosen))})")
    row(f"decode-only, whole corpus, frames/s{med}", f"{dec['fps']:.1f}", dec["other_load"])
    row("  distinct frames decoded and resized per s", f"{dec['decoded_fps']:.1f}")
    if dl:
        row("decode-only, the 720p videos only, frames/s", f"{dl['fps']:.1f}", dl["other_load"])
    row(f"model-only, encode_frames, frames/s{med}", f"{r['model']['fps']:.1f}", r["model"]["other_load"])
    row("bound, serial 1/(1/decode + 1/model)  [the issue's target]", f"{r['bound_serial']:.1f}")
    row("bound, overlapped min(decode, model)", f"{r['bound_overlapped']:.1f}")
    row(f"end to end, vfeat.extract, frames/s{med}", f"{r['e2e']['fps']:.1f}", r["e2e"]["other_load"])
    row("  ratio to the serial bound (target >= 0.85)", f"{r['ratio_to_bound']:.2f}")
    if n > 1:
        row("    per round", ", ".join(f"{x['ratio_to_bound']:.2f}" for x in r["rounds"]))
        row("    other load per round", ", ".join(f"{max(x[k]['other_load'] for k in ('decode', 'model', 'e2e')):.0%}" for x in r["rounds"]))
    row("  ratio to the overlapped bound", f"{r['ratio_to_overlapped']:.2f}")
    if "x_real_time" in r["e2e"]:
        row("  seconds of video per second (x real time)", f"{r['e2e']['x_real_time']:.1f}")
    if "timings" in r["e2e"]:
        t = r["e2e"]["timings"]
        row("  model process: warm-up/frame wait/model/merge, s",
            " / ".join(f"{t.get(k, float('nan')):.1f}" for k in ("warm_up_s", "decode_wait_s", "model_s", "store_close_s")))
        if t.get("decoders_held_s") is not None:
            row("  decode process waited for the model, s (mean)", f"{t['decoders_held_s']:.2f}")
    if "cpu_s" in r["e2e"] and "cpu_s" in r["decode"]:
        row("  decode processes' CPU s: decode-only / end to end",
            f"{r['decode']['cpu_s']['children']:.1f} / {r['e2e']['cpu_s']['children']:.1f}")
    if r["e2e"].get("gpu_utilisation") is not None:
        row("  GPU utilisation during end to end (mean, nvidia-smi)", f"{r['e2e']['gpu_utilisation']:.0f}%")
    if "baseline" in r:
        b = r["baseline"]
        row("baseline (fp32): re-encode to a tmp file + batch 1, frames/s", f"{b['fps']:.2f}", b["other_load"])
        row("  of which ffmpeg re-encoding (s of total)", f"{b['reencode_s']:.0f} of {b['seconds']:.0f}")
        row("  vfeat / baseline (target >= 3x)", f"{r['ratio_to_baseline']:.1f}x")
    for key, name in (("small_short", f"{c0['short_clips']} short clips"), ("small_tiny", f"{r.get('small_tiny', {}).get('clips', c0['tiny_clips'])} one-second clips")):
        if key not in r:
            continue
        v = r[key]
        row(f"many small files, {name}: videos/s", f"{v['videos_per_s']:.2f}", v["other_load"])
        row("  videos/s including the model load", f"{v['videos_per_s_with_load']:.2f}")
        row("  frames/s", f"{v['fps']:.1f}")
        row("  model loads / processes started", f"{v['model_loads']} / {v['processes_started']}")
    if "memory" in r:
        mem = r["memory"]
        row(f"memory: {mem['minutes']:g} min of 720p, all {mem['frames']} frames, batch {mem['batch_size']}", "", mem["other_load"])
        row("  peak RSS, whole process tree, MB (target < 3072)", f"{mem['peak_tree_rss_mb']:.0f}")
        row("  peak PSS, whole process tree, MB", f"{mem['peak_tree_pss_mb']:.0f}")
        row("  peak RSS in the first quarter / the last half of the run", f"{mem['peak_rss_first_quarter_mb']:.0f} / {mem['peak_rss_second_half_mb']:.0f}")
        row("  RSS before / after extract(), MB",
            f"{mem['rss_before_extract_mb']:.0f} / {mem.get('rss_after_extract_mb', float('nan')):.0f}")
        row("  frames/s", f"{mem['fps']:.1f}")
    c = r["correctness"]
    row(f"correctness vs workers=0 ({c['videos']} videos, {c['rows']} rows)", "OK" if c["ok"] else "MISMATCH")
    row("  same ids / identical timestamps / features close",
        "/".join("yes" if c[k] else "NO" for k in ("same_ids", "same_timestamps", "features_close")))
    row("  max |diff| / max |feature|; min cosine", f"{c['max_abs_diff_rel']:.0e}; {c['min_cosine']:.4f}")
    lines.append("")
    lines.append("'other load': share of the machine's CPU that other processes used during that measurement.")
    verdicts = [f"end to end / bound {r['ratio_to_bound']:.2f} ({'meets' if r['ratio_to_bound'] >= 0.85 else 'MISSES'} >= 0.85)"]
    if "baseline" in r:
        verdicts.append(f"vfeat / baseline {r['ratio_to_baseline']:.1f}x ({'meets' if r['ratio_to_baseline'] >= 3 else 'MISSES'} >= 3x)")
    if "memory" in r:
        ok = r["memory"]["peak_tree_rss_mb"] < 3072
        verdicts.append(f"peak RSS {r['memory']['peak_tree_rss_mb']:.0f} MB ({'meets' if ok else 'MISSES'} < 3072 MB)")
    if s["device"].startswith("cuda"):
        ok = r["ratio_to_overlapped"] >= 0.9
        bound = "model" if r["model"]["fps"] < r["decode"]["fps"] else "decode"
        verdicts.append(f"end to end / min(decode, model) {r['ratio_to_overlapped']:.2f}, {bound}-bound "
                        f"({'meets' if ok else 'MISSES'} >= 0.9)")
    small = [k for k in ("small_short", "small_tiny") if k in r]
    if small:
        starts = s["decode_workers"] + s.get("hwaccel_workers", 0)
        ok = all(r[k]["model_loads"] <= 1 and r[k]["processes_started"] <= starts for k in small)
        verdicts.append(f"small files: {'one model load, no per-video process' if ok else 'PER-VIDEO START-UP'}")
    verdicts.append(f"correctness {'OK' if c['ok'] else 'MISMATCH'}")
    lines.append("targets: " + "; ".join(verdicts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
