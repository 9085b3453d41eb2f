"""Where the model process's wall time goes in an end-to-end run: a py-spy profile of it, summarised.

    python bench/profile_e2e.py --device cuda --model ViT-L-14 --precision bf16 --batch-size 128 --fps 25 \\
        --out OUT_DIR DIR [DIR ...]

Loads the model (random weights) once, runs ``vfeat.extract`` over every video in the folders twice: once
timed alone, once with ``py-spy record --idle --nonblocking`` on this process (the model process; the
decode processes are not sampled). Writes the raw stacks (``OUT_DIR/<name>.stacks``) and prints, for each
thread, the share of samples in each stage of the model process's loop. Needs ``py-spy`` (pip) and the
right to trace this process (root, or ptrace_scope 0).

``--cold-only``: the first run alone, as a command-line run starts: the model freshly loaded, no batch
before (compare ``VFEAT_WARM_UP=0`` with the default to see what the warm-up buys).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from extract import log, logging_quiet, videos_in  # noqa: E402

#: stage of a sample: the first of these found in its stack, innermost frame first
STAGES = [
    ("gpu wait (event.synchronize)", ("synchronize",)),
    ("model forward (launch)", ("encode_frames", "encode_video")),
    ("batch: stage / normalise / copy back", ("_stage", "_normalise", "_to_host")),
    ("batch: write outputs", ("_collect",)),
    ("frames: wait for a message", ("wait (multiprocessing/connection.py", "_poll", "select")),
    ("frames: copy out of the ring / recv", ("frame_ring", "recv_bytes", "_recv", "recv (")),
    ("store: write / merge", ("zarr", "store", "journal", "writer")),
]


def stage_of(stack: str) -> str:
    frames = stack.split(";")[::-1]  # innermost first
    for frame in frames:
        for name, keys in STAGES:
            if any(k in frame for k in keys):
                return name
    return "other: " + (frames[0].split(" (")[0] if frames else "?")


def summarise(stacks_file: Path) -> dict:
    """Samples per thread and stage from py-spy's raw output (``thread;frame;frame... count``)."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in stacks_file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread = stack.split(";", 1)[0]
        per_thread[thread][stage_of(stack)] += int(count)
    return {t: dict(c.most_common()) for t, c in per_thread.items()}


def run(inputs: list[str], out: Path, args: argparse.Namespace, encoder) -> float:
    import vfeat

    shutil.rmtree(out, ignore_errors=True)
    summary = vfeat.extract(inputs, str(out), model=args.model, pretrained="none", fps=args.fps, device=args.device,
                            precision=args.precision, batch_size=args.batch_size, encoder=encoder)
    print(f"  {summary.frames} frames in {summary.seconds:.2f} s = {summary.frames / summary.seconds:.1f} frames/s; "
          f"timings {json.dumps({k: round(v, 3) for k, v in summary.timings.items()})}", flush=True)
    return summary.frames / summary.seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=HERE / "out" / "profile")
    p.add_argument("--cold-only", action="store_true", help="one run on the freshly loaded model, no profile")
    args = p.parse_args()
    logging_quiet()
    from vfeat.models.factory import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.model}-{args.precision}-b{args.batch_size}-fps{args.fps:g}"
    inputs = videos_in(*args.folders)
    encoder = load_model(args.model, "none", device=args.device, precision=args.precision)
    if args.cold_only:
        log(f"{name}: {len(inputs)} videos; one run on the freshly loaded model, VFEAT_WARM_UP={os.environ.get('VFEAT_WARM_UP', '1')}")
        run(inputs, args.out / "stores" / "1.zarr", args, encoder)
        shutil.rmtree(args.out / "stores", ignore_errors=True)
        return 0
    log(f"{name}: {len(inputs)} videos; run 1 alone, run 2 under py-spy")
    run(inputs, args.out / "stores" / "1.zarr", args, encoder)
    stacks = args.out / f"{name}.stacks"
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--idle", "--nonblocking", "--threads",
                            "--rate", str(args.rate), "--format", "raw", "--output", str(stacks)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    run(inputs, args.out / "stores" / "2.zarr", args, encoder)
    seconds = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not stacks.exists():
        print("py-spy wrote nothing:", err.decode(errors="replace")[-2000:])
        return 1
    result = summarise(stacks)
    (args.out / f"{name}.json").write_text(json.dumps({"seconds": seconds, "threads": result}, indent=1))
    shutil.rmtree(args.out / "stores", ignore_errors=True)
    for thread, stages in result.items():
        total = sum(stages.values())
        print(f"thread {thread}: {total} samples")
        for stage, n in stages.items():
            print(f"  {n / total:6.1%}  {stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
