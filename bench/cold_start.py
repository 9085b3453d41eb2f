"""A command-line run from its first instant: `vfeat extract` as a user starts it, with the decode processes
started before the model loads (the default) against after it (``VFEAT_EARLY_DECODE=0``), in the same run.

    python bench/cold_start.py                                  # ViT-B/32 on the 40 short clips of bench/extract.py
    python bench/cold_start.py --models ViT-B-32,ViT-L-14 --rounds 3 --out-json bench/out/cold-start.json
    python bench/cold_start.py --device cuda --inputs gpu_corpus/full/short      # on a GPU machine

Every measurement is a fresh ``vfeat extract`` process (Python start, imports, the model from a local weight
file saved once by bench/model_load.py into ``bench/out/weights/``, decoding, the store), the two settings
interleaved round by round. Prints the median wall time of each and the run's own "time:" figures (its
``--json`` summary): how long the model loaded, and how long it then waited for its first frames.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SETTINGS = {"after the load": "0", "during the load": "1"}  # VFEAT_EARLY_DECODE


def cli_run(inputs: list[str], arch: str, weights: Path, device: str, early: str, workers: int | None) -> dict:
    """Wall time and ``--json`` summary of one ``vfeat extract`` at ``--fps 1``."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "vfeat.cli", "extract", *inputs, "--model", arch, "--pretrained", str(weights),
               "--fps", "1", "--device", device, "--out", str(Path(tmp) / "s.zarr"), "--no-progress", "--json", str(summary)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=dict(os.environ, VFEAT_EARLY_DECODE=early))
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"vfeat extract failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(summary.read_text())
    return {"wall_s": wall, "frames": result["frames"], "timings": result["timings"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="ViT-B-32", help="open_clip architectures, comma-separated")
    p.add_argument("--inputs", nargs="*", help="videos or folders (default: bench/extract.py's 40 short clips)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: vfeat's)")
    p.add_argument("--weights-dir", default=str(HERE / "out" / "weights"))
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)

    from model_load import save_weights

    inputs = [str(Path(i).resolve()) for i in args.inputs or []]  # each run's working folder is a temporary one
    if not inputs:
        import extract as bench

        spec = {"short": 40, "short_s": (3.0, 5.0), "long": 0, "long_s": 0, "tiny": 0, "rss_min": 0}
        inputs = [str(bench.make_corpus(spec, HERE / "out" / "corpus" / "full")["short"])]
    models = args.models.split(",")
    weights = {arch: save_weights(Path(args.weights_dir), arch) for arch in models}
    runs: dict[str, dict[str, list[dict]]] = {arch: {name: [] for name in SETTINGS} for arch in models}
    for k in range(args.rounds):
        for arch in models:
            for name, early in SETTINGS.items():
                r = cli_run(inputs, arch, weights[arch], args.device, early, args.workers)
                runs[arch][name].append(r)
                t = r["timings"]
                print(f"[round {k + 1}] {arch} decoding {name}: {r['wall_s']:.2f} s, model load {t['model_load_s']:.2f} s, "
                      f"waiting for frames {t['decode_wait_s']:.2f} s", file=sys.stderr, flush=True)
    print(f"{'model':<10} {'decoding starts':<18}{'wall s':>9}{'model load s':>14}{'waiting for frames s':>22}{'frames':>8}")
    summary = {}
    for arch in models:
        base = statistics.median(r["wall_s"] for r in runs[arch]["after the load"])
        for name in SETTINGS:
            rs = runs[arch][name]
            wall = statistics.median(r["wall_s"] for r in rs)
            load = statistics.median(r["timings"]["model_load_s"] for r in rs)
            wait = statistics.median(r["timings"]["decode_wait_s"] for r in rs)
            summary.setdefault(arch, {})[name] = {"wall_s": wall, "model_load_s": load, "decode_wait_s": wait,
                                                  "per_round_wall_s": [r["wall_s"] for r in rs]}
            print(f"{arch:<10} {name:<18}{wall:>9.2f}{load:>14.2f}{wait:>22.2f}{rs[0]['frames']:>8}")
        print(f"{'':<10} saved {base - summary[arch]['during the load']['wall_s']:.2f} s a run "
              f"({base / summary[arch]['during the load']['wall_s']:.2f}x)")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"inputs": inputs, "device": args.device, "workers": args.workers,
                                                   "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
