"""Frames from decode processes to the model process (issue 5): what receiving costs the model process.

On a GPU machine one model process receives every decoded frame: 150 KB a frame at 224 px, thousands a
second when the model is fast enough (ViT-L/14 bf16 encodes ~2,700 frames/s on an H200). This measures the
decode path of ``vfeat extract`` (``vfeat.decode_processes.decode_in_processes``) on every frame of the
benchmark's 320x240 clips, with the frames in the messages through each decode process's connection
(``VFEAT_FRAME_RING=0``, as before the ring) and through the shared-memory ring (``vfeat/frame_ring.py``),
in interleaved rounds of the same run:

- frames/s through the pipeline (decoding included);
- the model process's CPU time per frame received (its own process time: receiving, unpickling).

    python bench/transport.py                       # the clips of bench/extract.py's corpus
    python bench/transport.py --workers 1 --rounds 5 DIR...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(videos: list[str], workers: int, ring: bool) -> dict:
    import os

    from vfeat import pipeline
    from vfeat.decode import Resize
    from vfeat.decode_processes import decode_in_processes
    from vfeat.sampling import SamplingPlan

    os.environ["VFEAT_FRAME_RING"] = "1" if ring else "0"  # read when the decode processes start
    frames = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for message in decode_in_processes(list(enumerate(videos)), SamplingPlan(), Resize(224, 224), False, workers,
                                       pipeline.RunStats()):
        if message[0] == "frames":
            frames += len(message[3])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"frames": frames, "fps": frames / seconds, "receiver_cpu_us_per_frame": cpu / frames * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="video folders (default: the clips of bench/extract.py's corpus)")
    p.add_argument("--workers", type=int, default=1, help="decode processes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import extract as bench

    folders = [Path(f) for f in args.folders] or [HERE / "out" / "corpus" / "full" / "short"]
    videos = bench.videos_in(*folders)
    if not videos:
        p.error(f"no videos in {', '.join(map(str, folders))} (python bench/extract.py --corpus-only makes the corpus)")
    settings = {"pipe": False, "shared-memory ring": True}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for k in range(args.rounds):
        for name, size in settings.items():
            results[name].append(measure(videos, args.workers, size))
            r = results[name][-1]
            print(f"round {k + 1}: {name}: {r['fps']:.0f} frames/s, receiver {r['receiver_cpu_us_per_frame']:.0f} us CPU/frame",
                  file=sys.stderr)
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("fps", "receiver_cpu_us_per_frame")} | {"frames": rs[0]["frames"]}
               for name, rs in results.items()}
    (base, new) = summary.values()
    print(f"{len(videos)} videos, every frame at 224 px, {args.workers} decode process(es), median of {args.rounds} rounds")
    print(f"{'frames through':<24}{'frames/s':>10}{'receiver CPU, us/frame':>26}")
    for name, r in summary.items():
        print(f"{name:<24}{r['fps']:>10.0f}{r['receiver_cpu_us_per_frame']:>26.0f}")
    print(f"ratio (ring / pipe): {new['fps'] / base['fps']:.2f}x frames/s, "
          f"{base['receiver_cpu_us_per_frame'] / new['receiver_cpu_us_per_frame']:.2f}x less receiver CPU per frame")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"videos": len(videos), "workers": args.workers, "rounds": results,
                                                   "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
