"""How fast decode processes start, and how much memory each holds, for a caller's script that imports torch
at its top (as nearly every script that calls vfeat does), against Python's plain spawn start, in the same run.

With the plain spawn start method each decode process imports the caller's main module first, and with it
everything that module imports; vfeat's processes leave it out (``vfeat/_spawn.py``).

    python bench/decoder_start.py                  # 1, 2 and 4 decode processes, 3 rounds
    python bench/decoder_start.py --workers 15     # as on a 16-core GPU machine

Each measurement runs a fresh caller script (``import torch`` at its top, then vfeat's decode processes on
20 one-second clips at 1 fps) and reports the time from starting the processes to the first decoded frames,
the time to decode everything, and the resident memory of each decode process when the first frames arrive.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CALLER = '''
import sys, time
import torch  # what the caller's script imports: a decode process that imports this module imports it too

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

if __name__ == "__main__":
    import glob, json, multiprocessing
    import vfeat.decode_processes as decode_processes
    from vfeat.decode import Resize
    from vfeat.pipeline import RunStats
    from vfeat.sampling import SamplingPlan
    start_method, workers, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if start_method == "spawn":  # Python's own: each process imports this module first
        decode_processes.spawn_context = lambda: multiprocessing.get_context("spawn")
    jobs = list(enumerate(sorted(glob.glob(folder + "/*.mp4"))))
    started, first, rss = time.perf_counter(), None, []
    with decode_processes.start_decode_processes(jobs, SamplingPlan(fps=1.0), Resize(224, 224), False, workers) as procs:
        for message in procs.messages(RunStats()):
            if message[0] == "frames" and first is None:
                first = time.perf_counter() - started
                rss = [rss_mb(seat.process.pid) for seat in procs.seats if seat.process.is_alive()]
    print("RESULT " + json.dumps({"first_frames_s": first, "all_s": time.perf_counter() - started, "rss_mb": rss}))
'''


def clips(folder: Path, count: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"clip{i:02d}.mp4"
        if not path.is_file():
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
                            "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)
    return folder


def measure(script: Path, start_method: str, workers: int, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, str(script), start_method, str(workers), str(folder)], capture_output=True,
                          text=True, cwd=script.parent)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{start_method} with {workers} workers failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4", help="decode process counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", default=None, help="a folder of short .mp4 videos to decode (default: 20 one-second clips "
                                                  "generated with the ffmpeg CLI)")
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)
    folder = Path(args.clips).resolve() if args.clips else clips(HERE / "out" / "decoder_start_clips")
    counts = [int(n) for n in args.workers.split(",")]
    runs: dict[str, list[dict]] = {f"{method}:{n}": [] for n in counts for method in ("spawn", "vfeat")}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "caller.py"
        script.write_text(CALLER)
        for k in range(args.rounds):
            for n in counts:
                for method in ("spawn", "vfeat"):
                    r = measure(script, method, n, folder)
                    runs[f"{method}:{n}"].append(r)
                    print(f"[round {k + 1}] {method} x{n}: first frames {r['first_frames_s']:.2f} s, all {r['all_s']:.2f} s, "
                          f"RSS {', '.join(f'{m:.0f}' for m in r['rss_mb'])} MB", file=sys.stderr, flush=True)
    print(f"{'processes':>9} {'start':<7}{'first frames s':>16}{'all s':>8}{'RSS each MB':>13}{'spawn / vfeat (first frames)':>30}")
    summary = {}
    for n in counts:
        medians = {}
        for method in ("spawn", "vfeat"):
            rs = runs[f"{method}:{n}"]
            medians[method] = {"first_frames_s": statistics.median(r["first_frames_s"] for r in rs),
                               "all_s": statistics.median(r["all_s"] for r in rs),
                               "rss_mb": statistics.median(m for r in rs for m in r["rss_mb"])}
        summary[n] = medians
        for method in ("spawn", "vfeat"):
            m = medians[method]
            ratio = medians["spawn"]["first_frames_s"] / m["first_frames_s"]
            print(f"{n:>9} {method:<7}{m['first_frames_s']:>16.2f}{m['all_s']:>8.2f}{m['rss_mb']:>13.0f}{ratio:>29.1f}x")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
