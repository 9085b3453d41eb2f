"""Where the time goes on a small CPU box, and what the prototypes in ``bench/proto_decode.py`` would buy.

    python bench/investigate.py [--quick] [--rounds 2]

Uses the corpus of ``bench/extract.py`` (run that first). In the same run, interleaved:

- decode-only CPU seconds per sampled frame: vfeat's decoder (frame threads AUTO), one decoder thread,
  the GOP-tail skip (AUTO and one thread), with a pixel-exact check of the frames against vfeat's;
- model-only frames/s: fp32 with 2 and 1 torch threads, and bf16 (``precision="bf16"``);
- end to end ``vfeat.extract`` with each decoder variant (patched into the worker processes through
  ``proto_decode.patched_worker_main``), and with bf16;
- a cProfile of the main process during one end-to-end run (model / waiting on decode / the rest).

Nothing in vfeat/ is changed; the numbers are for the proposal in docs/performance.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from extract import OUT, CpuMeter, log, logging_quiet, videos_in, wait_idle  # noqa: E402


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def decode_variants(paths: list[str]) -> dict:
    import numpy as np

    import proto_decode as pd
    from vfeat.decode import Resize, decode_selected, probe
    from vfeat.sampling import SamplingPlan, select_frames

    resize = Resize(224, 224, "BICUBIC")
    variants = {
        "vfeat (AUTO threads)": lambda p, w: decode_selected(p, w, resize),
        "1 decoder thread": lambda p, w: pd.decode_selected_threads(p, w, resize, 1),
        "GOP-tail skip (AUTO)": lambda p, w: pd.decode_selected_skip(p, w, resize),
        "GOP-tail skip, 1 thread": lambda p, w: pd.decode_selected_skip(p, w, resize, 1),
    }
    totals = {name: {"cpu_s": 0.0, "wall_s": 0.0, "frames": 0, "identical": True} for name in variants}
    for path in paths:
        pr = probe(path)
        sel = select_frames(SamplingPlan(fps=1), pr.timestamps_s, pr.info.duration_s)
        wanted = np.unique(pr.pts[sel.frame_indices])
        reference = None
        for name, fn in variants.items():
            c0, t0 = cpu_self(), time.perf_counter()
            out = list(fn(path, wanted))
            totals[name]["wall_s"] += time.perf_counter() - t0
            totals[name]["cpu_s"] += cpu_self() - c0
            totals[name]["frames"] += len(out)
            if reference is None:
                reference = out
            else:
                same = len(out) == len(reference) and all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(out, reference))
                totals[name]["identical"] &= same
    for t in totals.values():
        t["frames_per_cpu_s"] = t["frames"] / t["cpu_s"]
        t["frames_per_s"] = t["frames"] / t["wall_s"]
    return totals


def model_variants(batch: int = 64, batches: int = 5) -> dict:
    import torch

    out = {}
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = None
    for name, precision, threads in (("fp32, 2 threads", "fp32", 2), ("fp32, 1 thread", "fp32", 1), ("bf16, 2 threads", "bf16", 2)):
        torch.set_num_threads(threads)
        enc = _encoder(precision)
        xx = x.to(enc.compute_dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            enc.encode_frames(xx)
            enc.encode_frames(xx)
            t0 = time.perf_counter()
            for _ in range(batches):
                y = enc.encode_frames(xx)
            seconds = time.perf_counter() - t0
        y = y.float()
        if reference is None:
            reference = y
        cos = torch.nn.functional.cosine_similarity(y, reference).min().item()
        centred = torch.nn.functional.cosine_similarity(y - reference.mean(0), reference - reference.mean(0)).min().item()
        out[name] = {"fps": batch * batches / seconds, "min_cosine_to_fp32": cos, "min_centred_cosine": centred}
    torch.set_num_threads(os.cpu_count() or 1)
    return out


_STATE = None


def _encoder(precision: str):
    """ViT-B/32 with the same random weights whatever the precision (bf16: the fp32 weights cast, as
    ``load_model(precision="bf16")`` does)."""
    import torch

    from vfeat.models.factory import load_model

    enc = load_model("ViT-B-32", "none", device="cpu", precision="fp32")
    enc.model.load_state_dict(_fp32_state())
    if precision == "bf16":
        enc = enc.to(torch.bfloat16)
        enc.compute_dtype = torch.bfloat16
    return enc


def _fp32_state():
    """The same random weights for every precision (seeded once)."""
    global _STATE
    if _STATE is None:
        import torch

        from vfeat.models.factory import load_model

        torch.manual_seed(1234)
        _STATE = {k: v.clone() for k, v in load_model("ViT-B-32", "none", device="cpu", precision="fp32").model.state_dict().items()}
    return _STATE


def e2e(inputs: list[str], out: Path, encoder, skip: bool, threads: str, profile: bool = False) -> dict:
    import vfeat
    import vfeat.decode_processes as decode_processes

    import proto_decode

    os.environ["VFEAT_PROTO_SKIP"] = "1" if skip else "0"
    os.environ["VFEAT_PROTO_THREADS"] = threads
    original = decode_processes.worker_main
    decode_processes.worker_main = proto_decode.patched_worker_main
    shutil.rmtree(out, ignore_errors=True)
    prof = cProfile.Profile() if profile else None
    waits = {}
    try:
        with CpuMeter() as meter:
            if prof:
                prof.enable()
            summary = vfeat.extract(inputs, str(out), model="ViT-B-32", pretrained="none", fps=1, batch_size=64, encoder=encoder,
                                    on_progress=lambda st, n: waits.update(wait=st.decode_wait_s))
            if prof:
                prof.disable()
    finally:
        decode_processes.worker_main = original
    result = {"fps": summary.frames / summary.seconds, "frames": summary.frames, "seconds": summary.seconds,
              "decode_wait_s": waits.get("wait", 0.0), "other_load": meter.foreign_share, "failed": summary.videos_failed}
    if prof:
        stats = pstats.Stats(prof)
        model_s = sum(v[3] for k, v in stats.stats.items() if k[2] == "encode_frames")
        norm_s = sum(v[3] for k, v in stats.stats.items() if k[2] == "_normalise")
        result["profile"] = {"total_s": summary.seconds, "encode_frames_s": model_s, "normalise_s": norm_s,
                             "waiting_for_decode_s": waits.get("wait", 0.0)}
    return result


def same_store(a: Path, b: Path) -> bool:
    import numpy as np

    import vfeat

    with vfeat.open_store(str(a)) as x, vfeat.open_store(str(b)) as y:
        if sorted(x.ids) != sorted(y.ids):
            return False
        for video_id in x.ids:
            fa, ta = x[video_id]
            fb, tb = y[video_id]
            if not (np.array_equal(ta, tb) and np.array_equal(fa, fb)):
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--wait-idle", type=float, default=300, metavar="S", help="wait up to S s for an idle CPU before each measurement")
    p.add_argument("--out-json", default=str(OUT / "investigate.json"))
    args = p.parse_args()
    logging_quiet()
    corpus = OUT / "corpus" / ("quick" if args.quick else "full")
    short, long_ = videos_in(corpus / "short"), videos_in(corpus / "long")
    if not long_:
        raise SystemExit(f"no corpus under {corpus}: run python bench/extract.py --corpus-only{' --quick' if args.quick else ''} first")
    import torch

    r: dict = {"date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads()}
    log("decode variants (CPU seconds per sampled frame, single process)")
    wait_idle(args.wait_idle)
    with CpuMeter() as meter:
        r["decode"] = {"long": decode_variants(long_), "short": decode_variants(short)}
    r["decode"]["other_load"] = meter.foreign_share
    log("model variants")
    wait_idle(args.wait_idle)
    r["model"] = model_variants()
    run_dir = OUT / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs = [str(corpus / "short"), str(corpus / "long")]
    fp32, bf16 = _encoder("fp32"), _encoder("bf16")
    with torch.inference_mode():
        for enc in (fp32, bf16):
            x = torch.randn(64, 3, 224, 224).to(enc.compute_dtype)
            enc.encode_frames(x)
    variants = [
        ("vfeat as is", fp32, False, "AUTO"),
        ("1 decoder thread", fp32, False, "1"),
        ("GOP-tail skip", fp32, True, "AUTO"),
        ("GOP-tail skip, 1 decoder thread", fp32, True, "1"),
        ("bf16", bf16, False, "AUTO"),
        ("bf16 + GOP-tail skip", bf16, True, "AUTO"),
    ]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in variants}
    for k in range(args.rounds):
        for name, enc, skip, threads in variants:
            wait_idle(args.wait_idle)
            log(f"round {k + 1}: end to end, {name}")
            res = e2e(inputs, run_dir / f"inv_{len(runs[name])}_{name.replace(' ', '_').replace(',', '')}.zarr", enc, skip, threads,
                      profile=(k == 0 and name == "vfeat as is"))
            log(f"  {res['fps']:.2f} frames/s (other load {res['other_load']:.0%})")
            runs[name].append(res)
    # the prototypes must not change the stored numbers
    r["skip_store_identical"] = same_store(run_dir / "inv_0_vfeat_as_is.zarr", run_dir / "inv_0_GOP-tail_skip.zarr")
    r["e2e"] = {name: {"fps": statistics.median(x["fps"] for x in v), "per_round": [x["fps"] for x in v],
                       "other_load": max(x["other_load"] for x in v)} for name, v in runs.items()}
    r["profile"] = runs["vfeat as is"][0].get("profile")
    for path in run_dir.glob("inv_*.zarr"):
        shutil.rmtree(path, ignore_errors=True)
    base = r["e2e"]["vfeat as is"]["fps"]
    print(f"\ninvestigation, {r['date']} (other load during decode variants {r['decode']['other_load']:.0%})")
    print(f"{'decode variant':<34}{'720p: f/cpu-s':>15}{'f/s':>8}{'clips: f/cpu-s':>16}{'identical':>11}")
    for name in r["decode"]["long"]:
        lo, sh = r["decode"]["long"][name], r["decode"]["short"][name]
        print(f"{name:<34}{lo['frames_per_cpu_s']:>15.1f}{lo['frames_per_s']:>8.1f}{sh['frames_per_cpu_s']:>16.1f}{str(lo['identical'] and sh['identical']):>11}")
    print(f"\n{'model variant (batch 64)':<34}{'frames/s':>10}{'min cos':>10}{'centred':>10}")
    for name, v in r["model"].items():
        print(f"{name:<34}{v['fps']:>10.1f}{v['min_cosine_to_fp32']:>10.5f}{v['min_centred_cosine']:>10.5f}")
    print(f"\n{'end to end (whole corpus)':<34}{'frames/s':>10}{'vs as is':>10}{'other load':>12}  per round")
    for name, v in r["e2e"].items():
        print(f"{name:<34}{v['fps']:>10.2f}{v['fps'] / base:>9.2f}x{v['other_load']:>11.0%}  {', '.join(f'{x:.2f}' for x in v['per_round'])}")
    print(f"GOP-tail skip store identical to vfeat's: {r['skip_store_identical']}")
    if r["profile"]:
        pr = r["profile"]
        print(f"main process, vfeat as is: {pr['total_s']:.1f} s total, encode_frames {pr['encode_frames_s']:.1f} s, "
              f"waiting on decode {pr['waiting_for_decode_s']:.1f} s, normalise {pr['normalise_s']:.2f} s")
    Path(args.out_json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
