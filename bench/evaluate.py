"""Evaluation throughput benchmark (issue 3): the evaluation math of ``vfeat evaluate`` at scale, each against
a naive baseline measured in the same run. No text tower: class and caption embeddings are random unit vectors.

    python bench/evaluate.py                    # 1M frames x 512 (float16) x 700 classes; 10k x 10k retrieval
    python bench/evaluate.py --quick            # smoke run (50k frames, 2k x 2k), well under a minute
    python bench/evaluate.py --workdir /data/bench-eval --json bench/out/evaluate.json   # keep and reuse the store

What is measured, every phase in a fresh Python process (so its peak RSS is its own):

- classification, streamed (vfeat): ``open_store`` + ``vfeat.evaluate.video.video_embeddings`` (the store read in
  chunks, per video: frames L2-normalised, mean, renormalised) + scores against the classes + ``classification_metrics``;
- classification, naive: the whole ``features`` array read into memory with plain zarr, then the same math
  vectorised over all frames at once (``np.add.reduceat`` over ``offsets``);
- retrieval, blockwise (vfeat): ``metrics.blockwise_ranks`` for text-to-video and video-to-text (one caption per
  video), plain and with DSL;
- retrieval, dense: the full [texts, videos] matrix and ``metrics.retrieval_metrics`` (plain) /
  ``metrics.retrieval_metrics(metrics.dsl(sim))`` (DSL), skipped when it would not fit in memory.

Both sides of each comparison must give the same answer (predictions / metrics), or the run fails. The store is
written once with ``ShardWriter`` (frames planted near their video's class, so top-1 is a sanity check) and read
from the page cache by both sides. The machine's load average is printed: on a shared machine it explains noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = {"frames": 1_000_000, "classes": 700, "retrieval": 10_000}
QUICK = {"frames": 50_000, "classes": 700, "retrieval": 2_000}


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM belongs to the address space, so it starts afresh at exec (ru_maxrss
    would carry over the parent's RSS at fork time)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- the store -------------------------------------------------------------------------------------------

def store_attrs(dim: int) -> dict:
    """Root attributes of a store without a model (random embeddings; nothing here rebuilds a text tower)."""
    return {"format": "vfeat-store", "format_version": 1, "vfeat_version": "bench",
            "model": {"name": "bench-random", "pretrained": "none", "checkpoint_sha256": None, "options": {}},
            "random_weights": True, "embed_dim": dim, "sampling": {"mode": "fps", "fps": 1.0},
            "preprocess": {}, "dtype": "float16", "normalized": False, "has_frames": True, "has_clips": False,
            "logit_scale": 100.0}


def video_lengths(frames: int, seed: int) -> np.ndarray:
    """Videos of 50..150 frames (mean 100) summing to exactly ``frames``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 151, size=frames // 50 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), frames)) + 1]
    lengths[-1] -= int(lengths.sum()) - frames
    return lengths[lengths > 0]


def make_store(path: Path, frames: int, classes: int, dim: int, seed: int) -> dict:
    """Write the benchmark shard: per video, raw float16 frames near its class vector (plus noise, random norms)."""
    from vfeat.store.format import VideoRecord
    from vfeat.store.writer import ShardWriter

    rng = np.random.default_rng(seed)
    class_emb = unit_rows(np.random.default_rng(seed + 1), classes, dim)
    lengths = video_lengths(frames, seed)
    labels = rng.integers(0, classes, size=len(lengths))
    info = {"fps": 30.0, "duration_s": 100.0, "width": 320, "height": 240, "num_frames": 3000, "start_time_s": 0.0,
            "rotation": 0}
    started = time.perf_counter()
    with ShardWriter(str(path), store_attrs(dim), flush_videos=500, flush_seconds=1e9) as writer:
        for v, (n, label) in enumerate(zip(lengths, labels)):
            rows = class_emb[label] + 0.08 * rng.standard_normal((int(n), dim), dtype=np.float32)
            rows *= rng.uniform(0.5, 2.0, size=(int(n), 1)).astype(np.float32)
            writer.add(VideoRecord(f"v{v:06d}.mp4", f"/bench/v{v:06d}.mp4", info, rows.astype(np.float16),
                                   1000.0 * np.arange(int(n))))
    return {"videos": int(len(lengths)), "seconds": time.perf_counter() - started}


def labels_and_classes(path: Path, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = video_lengths(json.loads((path.parent / "meta.json").read_text())["frames"], seed)
    labels = np.random.default_rng(seed).integers(0, classes, size=len(lengths))
    return labels, unit_rows(np.random.default_rng(seed + 1), classes, dim).astype(np.float32)


# -- phases (each runs in its own process) ------------------------------------------------------------------

def phase_stream(args) -> dict:
    from vfeat.evaluate import metrics
    from vfeat.evaluate.video import video_embeddings
    from vfeat.store.reader import open_store

    labels, class_emb = labels_and_classes(Path(args.store), args.classes, args.dim, args.seed)
    started = time.perf_counter()
    with open_store(args.store) as store:
        frames = store.num_frames
        _, videos = video_embeddings(store)
    scores = videos @ class_emb.T
    result = metrics.classification_metrics(scores, labels)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds, "peak_rss_mb": peak_rss_mb(),
            "top1": result["top1"], "pred": np.argmax(scores, axis=1).tolist()}


def phase_naive(args) -> dict:
    import zarr

    from vfeat.evaluate import metrics

    labels, class_emb = labels_and_classes(Path(args.store), args.classes, args.dim, args.seed)
    started = time.perf_counter()
    group = zarr.open_group(args.store, mode="r")
    offsets = np.asarray(group["offsets"][:])
    rows = np.asarray(group["features"][: int(offsets[-1])]).astype(np.float32)  # everything in memory
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    sums = np.add.reduceat(rows, offsets[:-1], axis=0)
    videos = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    scores = videos @ class_emb.T
    result = metrics.classification_metrics(scores, labels)
    seconds = time.perf_counter() - started
    frames = int(offsets[-1])
    return {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds, "peak_rss_mb": peak_rss_mb(),
            "top1": result["top1"], "pred": np.argmax(scores, axis=1).tolist()}


def retrieval_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n videos and one caption each, the caption a noisy copy of its video (so recall is neither 0 nor 100)."""
    rng = np.random.default_rng(seed + 2)
    videos = unit_rows(rng, n, dim)
    texts = videos + 6.0 * unit_rows(rng, n, dim)
    return texts / np.linalg.norm(texts, axis=1, keepdims=True), videos, np.arange(n)


def phase_blockwise(args) -> dict:
    from vfeat.evaluate import metrics

    texts, videos, targets = retrieval_data(args.retrieval, args.dim, args.seed)
    started = time.perf_counter()
    dsl = "queries" if args.dsl else None
    t2v = metrics.blockwise_ranks(texts, videos, targets, dsl_over=dsl)
    v2t = metrics.blockwise_ranks(videos, texts, targets, key_groups=targets, dsl_over="keys" if args.dsl else None)
    result = {**metrics.rank_summary(t2v, prefix="t2v_"), **metrics.rank_summary(v2t, prefix="v2t_")}
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "metrics": result}


def phase_dense(args) -> dict:
    from vfeat.evaluate import metrics

    texts, videos, targets = retrieval_data(args.retrieval, args.dim, args.seed)
    started = time.perf_counter()
    sim = texts @ videos.T
    result = metrics.retrieval_metrics(metrics.dsl(sim) if args.dsl else sim, targets)
    result = {k: v for k, v in result.items() if k.startswith(("t2v_", "v2t_"))}
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "metrics": result}


PHASES = {"stream": phase_stream, "naive": phase_naive, "blockwise": phase_blockwise, "dense": phase_dense}


def run_phase(name: str, args, **extra) -> dict:
    """Run one phase in a fresh interpreter; it prints one JSON line."""
    cmd = [sys.executable, __file__, "--phase", name, "--classes", str(args.classes), "--dim", str(args.dim),
           "--seed", str(args.seed), "--retrieval", str(args.retrieval)]
    for key, value in extra.items():
        cmd += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mem_available_mb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


# -- the report --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: 50k frames, 2k x 2k retrieval.")
    parser.add_argument("--frames", type=int, help="Stored frames (default 1M, quick 50k).")
    parser.add_argument("--classes", type=int, help="Classes (default 700).")
    parser.add_argument("--retrieval", type=int, help="Captions = videos of the retrieval (default 10k, quick 2k).")
    parser.add_argument("--dim", type=int, default=512, help="Embedding width (default 512).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="Where the store goes (kept and reused when it matches); default a temp dir.")
    parser.add_argument("--json", dest="json_out", help="Also write the results as JSON here.")
    parser.add_argument("--skip-classification", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--dsl", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    args.frames = args.frames or sizes["frames"]
    args.classes = args.classes or sizes["classes"]
    args.retrieval = args.retrieval or sizes["retrieval"]
    if args.phase:
        out = PHASES[args.phase](args)
        print(json.dumps(out))
        return

    report: dict = {"argv": sys.argv[1:], "python": platform.python_version(), "numpy": np.__version__,
                    "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    print(f"vfeat evaluation benchmark: {args.frames:,} frames x {args.dim} (float16) x {args.classes} classes; "
          f"{args.retrieval:,} x {args.retrieval:,} retrieval; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    ok = True
    if not args.skip_classification:
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vfeat-bench-eval-"))
        store = workdir / "bench.zarr"
        meta = {"frames": args.frames, "classes": args.classes, "dim": args.dim, "seed": args.seed}
        try:
            meta_path = workdir / "meta.json"
            if not (store.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta):
                shutil.rmtree(store, ignore_errors=True)
                workdir.mkdir(parents=True, exist_ok=True)
                written = make_store(store, args.frames, args.classes, args.dim, args.seed)
                meta_path.write_text(json.dumps(meta))
                print(f"  wrote {store} ({written['videos']:,} videos) in {written['seconds']:.1f} s")
            naive = run_phase("naive", args, store=store)
            stream = run_phase("stream", args, store=store)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        same = stream.pop("pred") == naive.pop("pred")
        ok &= same
        report["classification"] = {"stream": stream, "naive": naive, "same_predictions": same}
        print(f"  classification ({stream['frames']:,} frames, top-1 {stream['top1']:.1f}%, same predictions: {same})")
        print(f"    streamed (vfeat): {stream['seconds']:7.2f} s  {stream['frames_per_s']:12,.0f} frames/s  "
              f"peak RSS {stream['peak_rss_mb']:8,.0f} MB")
        print(f"    naive (in RAM):   {naive['seconds']:7.2f} s  {naive['frames_per_s']:12,.0f} frames/s  "
              f"peak RSS {naive['peak_rss_mb']:8,.0f} MB")
        print(f"    ratio vfeat/naive: speed x{stream['frames_per_s'] / naive['frames_per_s']:.2f}, "
              f"peak RSS x{stream['peak_rss_mb'] / naive['peak_rss_mb']:.2f}")
    if not args.skip_retrieval:
        n = args.retrieval
        report["retrieval"] = {}
        dense_fits = 48.0 * n * n / 2**20 < 0.7 * mem_available_mb()  # sim, float64 copies and masks
        for dsl in (False, True):
            label = "dsl" if dsl else "plain"
            flags = {"dsl": True} if dsl else {}
            block = run_phase("blockwise", args, **flags)
            dense = run_phase("dense", args, **flags) if dense_fits else None
            entry = {"blockwise": block, "dense": dense}
            print(f"  retrieval {n:,} x {n:,} ({label}, t2v R@1 {block['metrics']['t2v_r1']:.1f}%, "
                  f"v2t R@1 {block['metrics']['v2t_r1']:.1f}%)")
            print(f"    blockwise (vfeat): {block['seconds']:7.2f} s  peak RSS {block['peak_rss_mb']:8,.0f} MB")
            if dense is None:
                print("    dense: skipped (the full matrix would not fit in memory)")
            else:
                same = all(abs(block["metrics"][k] - v) < 1e-9 for k, v in dense["metrics"].items())
                ok &= same
                entry["same_metrics"] = same
                print(f"    dense numpy:       {dense['seconds']:7.2f} s  peak RSS {dense['peak_rss_mb']:8,.0f} MB  "
                      f"(same metrics: {same})")
                print(f"    ratio vfeat/dense: time x{block['seconds'] / dense['seconds']:.2f}, "
                      f"peak RSS x{block['peak_rss_mb'] / dense['peak_rss_mb']:.2f}")
            report["retrieval"][label] = entry
    report["load_avg_end"] = os.getloadavg()
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    if not ok:
        raise SystemExit("vfeat and the baseline disagree (see above)")


if __name__ == "__main__":
    main()
