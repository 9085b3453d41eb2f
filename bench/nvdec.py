"""Hardware decoding (issue 5): does the GPU's video decoder (NVDEC, ``vfeat extract --hwaccel cuda``)
beat, or add to, the CPU decoders on this machine? Run on a GPU machine:

    python bench/nvdec.py --corpus bench/out/corpus --replicate 30 --out-json bench/out/nvdec.json

On the 720p videos of bench/extract.py's corpus (generated there first; ``--replicate`` hard-links each
video N times so the run is long enough to time), for each mix of CPU and NVDEC decode processes:
decode-only frames/s through the pipeline's own workers (frames resized to 224 and handed to the main
process, as in a run), at ``--fps 1`` and at all frames. First it checks that NVDEC really decodes
(``is_hwaccel``) and that its frames equal the CPU decoder's after vfeat's resize.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

MIXES = [(15, 0), (0, 4), (0, 8), (15, 4), (15, 8), (8, 8)]


def check_frames(video: str, frames: int = 60) -> dict:
    """Decode the first ``frames`` frames on the CPU and with NVDEC; compare after vfeat's 224 resize and
    at full size. Returns whether NVDEC was used and the largest pixel differences."""
    import av
    import numpy as np
    from av.codec.hwaccel import HWAccel

    from vfeat.decode import Resize, _to_rgb

    resize = Resize(short_side=224, crop=224)

    def decode(hwaccel):
        out_small, out_full, used, fmt = [], [], None, None
        kwargs = {"hwaccel": HWAccel(device_type="cuda", allow_software_fallback=False)} if hwaccel else {}
        with av.open(video, **kwargs) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                fmt = frame.format.name
                out_small.append(_to_rgb(frame, 0, resize))
                out_full.append(frame.to_ndarray(format="rgb24"))
                if len(out_small) == frames:
                    break
            used = bool(getattr(stream.codec_context, "is_hwaccel", False))
        return np.stack(out_small), np.stack(out_full), used, fmt

    started = time.perf_counter()
    cpu_small, cpu_full, _, cpu_fmt = decode(False)
    try:
        gpu_small, gpu_full, used, gpu_fmt = decode(True)
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        return {"nvdec_works": False, "error": f"{type(exc).__name__}: {exc}"}
    diff_small = np.abs(cpu_small.astype(int) - gpu_small.astype(int))
    diff_full = np.abs(cpu_full.astype(int) - gpu_full.astype(int))
    return {"nvdec_works": True, "is_hwaccel": used, "cpu_frame_format": cpu_fmt, "nvdec_frame_format": gpu_fmt,
            "frames": len(cpu_small), "max_abs_diff_224": int(diff_small.max()), "mean_abs_diff_224": float(diff_small.mean()),
            "identical_224": bool((diff_small == 0).all()), "max_abs_diff_full": int(diff_full.max()),
            "mean_abs_diff_full": float(diff_full.mean()), "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=str(HERE / "out" / "corpus"), help="bench/extract.py's --corpus")
    p.add_argument("--replicate", type=int, default=30)
    p.add_argument("--mixes", default=",".join(f"{c}+{g}" for c, g in MIXES), help="CPU+NVDEC decode processes, e.g. 15+0,0+4,15+4")
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)

    import extract as bench  # bench/extract.py: corpus, replicate, decode-only
    from vfeat.decode import Resize
    from vfeat.sampling import SamplingPlan

    bench.logging_quiet()
    root = Path(args.corpus) / "full"
    dirs = bench.replicate({"long": root / "long"}, root, args.replicate)
    videos = bench.videos_in(dirs["long"])
    originals = bench.videos_in(root / "long")
    if not videos:
        print(f"no videos under {root / 'long'}: generate the corpus with bench/extract.py --corpus-only first", file=sys.stderr)
        return 2
    result: dict = {"machine": bench.machine(), "videos": len(videos), "replicate": args.replicate,
                    "check": {Path(v).name: check_frames(v) for v in originals}}
    bench.log(f"frame check: {json.dumps(result['check'])}")
    resize = Resize(short_side=224, crop=224)
    mixes = [tuple(int(x) for x in m.split("+")) for m in args.mixes.split(",")]
    rows = []
    for label, plan in (("1 fps", SamplingPlan(fps=1.0)), ("all frames", SamplingPlan())):
        for cpu, gpu in mixes:
            if gpu and not all(c.get("nvdec_works") for c in result["check"].values()):
                continue
            r = bench.decode_only_mixed(videos, plan, resize, cpu, "cuda" if gpu else None, gpu)
            r.update(plan=label, cpu_workers=cpu, nvdec_workers=gpu)
            rows.append(r)
            bench.log(f"{label:>10}: {cpu:2d} CPU + {gpu} NVDEC decode processes: {r['fps']:8.1f} frames/s "
                      f"({r['decoded_fps']:.1f} decoded/s, {r['seconds']:.1f} s)")
            if args.out_json:
                Path(args.out_json).write_text(json.dumps(dict(result, runs=rows), indent=2))
    result["runs"] = rows
    print(f"{'plan':<12}{'CPU':>5}{'NVDEC':>7}{'frames/s':>12}{'decoded/s':>12}{'s':>8}")
    for r in rows:
        print(f"{r['plan']:<12}{r['cpu_workers']:>5}{r['nvdec_workers']:>7}{r['fps']:>12.1f}{r['decoded_fps']:>12.1f}{r['seconds']:>8.1f}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
