"""The model process's own overhead when decoding is the bound (issue 5): what a GPU machine sees, measured
on any machine. The model is a stub that costs nothing, so end to end can only lose to decode-only
through what the pipeline itself adds (moving frames between processes, batching, committing videos to
the store). Many short clips make that per-video work count, as on a 16-core GPU machine where 15
decoders feed one model process.

    python bench/overhead.py                                   # this checkout
    python bench/overhead.py --tree /tmp/vfeat-old             # and another checkout, in the same run

On the H200 machine of 2026-11-26 (ViT-B/32 fp16, 15 one-thread decoders, one core left to the model
process) end to end reached 0.73-0.78 of decode-only; this benchmark sets up the same on 2 cores: one
decoder with one FFmpeg thread, and the other core for the model process (docs/performance.md).

For each tree, in a fresh process per measurement and interleaved rounds: decode-only (vfeat's decode
path in ``--workers`` processes, frames counted there) and end to end (``vfeat.extract`` with the stub,
frames through the pipeline into a Zarr store). Prints medians and end to end / decode-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(kind: str, folders: list[str], workers: int, out: str, tree: str, device: str = "cpu") -> None:
    """One measurement, in a process whose ``vfeat`` (and its decode workers') is ``tree``'s."""
    sys.path.insert(0, str(HERE))
    import extract as bench
    from memory_growth import stub_encoder

    # the bench modules put this checkout first on sys.path; spawned decode workers copy sys.path
    sys.path[:] = [tree] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, Path(tree).resolve())]
    import vfeat
    from vfeat.decode import Resize
    from vfeat.sampling import SamplingPlan

    import torch

    torch.set_num_threads(1)  # the model process has one core, as beside 15 decoders on a 16-core GPU machine
    bench.logging_quiet()
    videos = bench.videos_in(*map(Path, folders))
    if kind == "decode":
        r = bench.decode_only(videos, SamplingPlan(fps=1.0), Resize(224, 224), workers)
        result = {"seconds": r["seconds"], "frames": r["rows"]}
    else:
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        encoder = stub_encoder(size=224).to(device)  # on a GPU, batches are normalised there, as in a real run
        summary = vfeat.extract(folders, out, encoder=encoder, fps=1.0, workers=workers, batch_size=256)
        result = {"seconds": time.perf_counter() - started, "frames": summary.frames, "timings": summary.timings}
        shutil.rmtree(out, ignore_errors=True)
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the decode processes, joined by now
    result["decoders_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["vfeat"] = str(Path(vfeat.__file__).parent)  # which tree was measured
    print("RESULT " + json.dumps(result), flush=True)


def measure(tree: Path, kind: str, folders: list[str], workers: int, threads: int, device: str) -> dict:
    env = dict(os.environ, VFEAT_DECODE_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--workers", str(workers),
               "--out", str(Path(tmp) / "s.zarr"), "--child-tree", str(tree), "--device", device, *folders]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{kind} on {tree} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="video folders (default: the short and one-second clips of bench/extract.py's corpus)")
    p.add_argument("--tree", action="append", default=[], help="another vfeat checkout to measure in the same run (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="decode processes (default 1: one decoder, one model process, 2 cores)")
    p.add_argument("--decode-threads", type=int, default=1,
                   help="FFmpeg threads per decode process (VFEAT_DECODE_THREADS; default 1: the other core is the "
                        "model process's, as on a GPU machine where 15 one-thread decoders leave it one core)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where the stub model's batches go (cuda: as on a GPU machine)")
    p.add_argument("--corpus", default=str(HERE / "out" / "corpus"), help="bench/extract.py's --corpus")
    p.add_argument("--replicate", type=int, default=3, help="use each corpus video N times (hard links)")
    p.add_argument("--out-json", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--child-tree", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.folders, args.workers, args.out, args.child_tree, args.device)
        return 0

    folders = [str(Path(f).resolve()) for f in args.folders]  # the children run in a temporary folder
    if not folders:
        sys.path.insert(0, str(HERE))
        import extract as bench

        spec = {"short": 40, "short_s": (3.0, 5.0), "long": 0, "long_s": 0, "tiny": 200, "rss_min": 0}
        root = Path(args.corpus) / "overhead"
        dirs = bench.replicate(bench.make_corpus(spec, root), root, args.replicate)
        folders = [str(dirs["short"]), str(dirs["tiny"])]
    empty = [f for f in folders if not any(Path(f).glob("*.mp4"))]
    if empty:  # a ratio over no frames would look like a measurement
        p.error(f"no .mp4 videos in {', '.join(empty)}")
    trees = [ROOT] + [Path(t).resolve() for t in args.tree]
    runs: dict[str, dict[str, list[dict]]] = {str(t): {"decode": [], "e2e": []} for t in trees}
    for k in range(args.rounds):
        for tree in trees:
            for kind in ("decode", "e2e"):
                r = measure(tree, kind, folders, args.workers, args.decode_threads, args.device)
                runs[str(tree)][kind].append(r)
                print(f"[round {k + 1}] {tree.name}: {kind:<6} {r['frames']} frames in {r['seconds']:.2f} s (vfeat from {r['vfeat']})", file=sys.stderr, flush=True)
    print(f"{'tree':<32}{'decode-only s':>15}{'end to end s':>14}{'e2e / decode':>14}   per round")
    summary = {}
    for tree in trees:
        d = statistics.median(r["seconds"] for r in runs[str(tree)]["decode"])
        e = statistics.median(r["seconds"] for r in runs[str(tree)]["e2e"])
        per_round = [a["seconds"] / b["seconds"] for a, b in zip(runs[str(tree)]["decode"], runs[str(tree)]["e2e"])]
        summary[str(tree)] = {"decode_s": d, "e2e_s": e, "ratio": d / e, "ratio_per_round": per_round}
        print(f"{str(tree)[-32:]:<32}{d:>15.2f}{e:>14.2f}{d / e:>14.2f}   {', '.join(f'{x:.2f}' for x in per_round)}")
        cpu = {kind: statistics.median(r.get("decoders_cpu_s", float("nan")) for r in runs[str(tree)][kind]) for kind in ("decode", "e2e")}
        held = [r["timings"]["decoders_held_s"] for r in runs[str(tree)]["e2e"] if "decoders_held_s" in r.get("timings", {})]
        summary[str(tree)].update(decoders_cpu_s=cpu, decoders_held_s=statistics.median(held) if held else None)
        print(f"{'':<32}decode processes' CPU s: decode-only {cpu['decode']:.2f}, end to end {cpu['e2e']:.2f}"
              + (f"; waited for the model process {statistics.median(held):.2f} s (mean per process)" if held else ""))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"folders": folders, "workers": args.workers, "decode_threads": args.decode_threads,
                                                   "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
