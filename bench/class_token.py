"""The model pass with the last block for the class token only (the default) against every token through
every block (``VFEAT_CLASS_TOKEN_ONLY=0``), in the same run: frames/s of each and their ratio.

    python bench/class_token.py                                   # ViT-B/32, B/16, CLIP-ViP B/32, Open-VCLIP B/32, fp32 CPU
    python bench/class_token.py --models ViT-L-14 --batch-size 8 --rounds 3
    python bench/class_token.py --device cuda --precision bf16 --models ViT-B-16,ViT-L-14 --batch-size 256

Random weights (``pretrained="none"``: the same cost as real ones), random pixels at the model's input size;
one encoder per model, switched between the two forwards round by round (``--passes`` timed together in
each), after one warm-up pass of each; the ratio is the median of the rounds' ratios.
Frame-level CLIP models get ``--batch-size`` frames per pass, the video families ``--batch-size`` frames in
clips of their ``clip_len``. Also prints the largest difference between the two embeddings, relative to the
embeddings' largest magnitude.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "ViT-B-32,ViT-B-16,clip-vip-b32,open-vclip-b32"


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, device: str, precision: str, batch: int, rounds: int, passes: int) -> dict:
    import torch

    from vfeat.models.factory import load_model

    encoder = load_model(name, "none", device=device, precision=precision)
    encoder.drop_text_tower()
    size = encoder.preprocess.image_size
    dtype = next(encoder.parameters()).dtype
    if encoder.frame_level:
        pixels = torch.randn(batch, 3, size, size, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        run, frames = (lambda: encoder.encode_frames(pixels)), batch
    else:
        clip_len = encoder.clip_len or 8
        pixels = torch.randn(max(1, batch // clip_len), clip_len, 3, size, size, device=device).to(dtype)
        run, frames = (lambda: encoder.encode_video(pixels).clips), pixels.shape[0] * clip_len
    rates: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    with torch.inference_mode():
        for short in (True, False):
            encoder.class_token_only = short
            outputs[short] = run().float()
        for _ in range(rounds):
            for short in (False, True):
                encoder.class_token_only = short
                synchronize(device)
                started = time.perf_counter()
                for _ in range(passes):
                    run()
                synchronize(device)
                rates[short].append(passes * frames / (time.perf_counter() - started))
    difference = (outputs[True] - outputs[False]).abs().max() / outputs[False].abs().max()
    ratios = [a / b for a, b in zip(rates[True], rates[False])]
    return {"frames_per_pass": frames, "every_token": statistics.median(rates[False]),
            "class_token_only": statistics.median(rates[True]), "ratio": statistics.median(ratios),
            "per_round_ratio": ratios, "max_relative_difference": float(difference)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=32, help="frames per pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passes", type=int, default=3, help="passes timed together in each round (default 3)")
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)

    results = {}
    for name in args.models.split(","):
        results[name] = r = measure(name, args.device, args.precision, args.batch_size, args.rounds, args.passes)
        print(f"{name}: {r['every_token']:.1f} -> {r['class_token_only']:.1f} frames/s, per round "
              f"{[round(x, 3) for x in r['per_round_ratio']]}", file=sys.stderr, flush=True)
    print(f"{args.device} {args.precision}, {args.rounds} interleaved rounds of {args.passes} passes")
    print(f"{'model':<16}{'frames/pass':>12}{'every token f/s':>17}{'class token only f/s':>22}{'ratio':>8}{'max rel diff':>14}")
    for name, r in results.items():
        print(f"{name:<16}{r['frames_per_pass']:>12}{r['every_token']:>17.1f}{r['class_token_only']:>22.1f}"
              f"{r['ratio']:>8.3f}{r['max_relative_difference']:>14.1e}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
