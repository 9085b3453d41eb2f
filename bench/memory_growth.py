"""How peak memory grows with video length, without hours of model time.

    python bench/memory_growth.py --minutes 10 120

For each length, a 64x64 25 fps H.264 video is generated (cheap to encode and decode), and
``vfeat.extract`` runs on it in "all frames" mode at batch 256 in a fresh process with a stub encoder
(512-d output like ViT-B/32, random numbers, no compute). The per-row state that vfeat keeps (features,
timestamps, the writer's journal) does not depend on the pixels or the model, so the difference between
two lengths is what a long video adds on top of the ViT-B/32 peak that ``bench/extract.py`` measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from extract import OUT, MemorySampler, ffmpeg, log  # noqa: E402


def stub_encoder(dim: int = 512, size: int = 32):
    import torch

    from vfeat.models.base import OPENAI_MEAN, OPENAI_STD, ModelIdentity, Preprocess, VideoEncoder

    class Stub(VideoEncoder):
        frame_level = True

        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))
            self.embed_dim = dim
            self.preprocess = Preprocess(size, OPENAI_MEAN, OPENAI_STD)
            self.identity = ModelIdentity("stub", "none")

        def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.randn(len(pixels), dim)

        @property
        def logit_scale(self) -> float:
            return 100.0

    return Stub()


def child(video: str, out: str, batch: int, resident: str | None) -> None:
    import shutil

    import vfeat

    shutil.rmtree(out, ignore_errors=True)
    encoder = stub_encoder()
    # --resident: keep a real model's weights in memory (not used), as during a real run's commits
    kept = vfeat.load_model(resident, "none", device="cpu", precision="fp32") if resident else None
    with MemorySampler() as sampler:
        before = sampler.sample()
        started = time.perf_counter()
        summary = vfeat.extract([video], out, encoder=encoder, batch_size=batch)
        seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    del kept
    print("RESULT " + json.dumps({"frames": summary.frames, "seconds": seconds, "before_mb": before / 2**20,
                                  "peak_rss_mb": sampler.peak_rss / 2**20, "peak_pss_mb": sampler.peak_pss / 2**20}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resident", default=None, help="also hold this model's weights (fp32, random) in the process")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch_size, args.resident)
        return 0
    folder = OUT / "corpus" / "growth"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for minutes in args.minutes:
        video = folder / f"tiny_{minutes:g}min.mp4"
        if not video.exists():
            log(f"generating {minutes:g} min of 64x64 at 25 fps")
            ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25", "-t", str(minutes * 60), "-c:v", "libx264", "-preset",
                   "ultrafast", "-g", "50", "-pix_fmt", "yuv420p", str(video) + ".part.mp4")
            Path(str(video) + ".part.mp4").rename(video)
        log(f"extracting {minutes:g} min, all frames, batch {args.batch_size}, stub encoder (fresh process)")
        extra = ["--resident", args.resident] if args.resident else []
        proc = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), *extra, "--child", str(video),
                               str(OUT / "runs" / "growth.zarr")], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise SystemExit(proc.stderr[-3000:])
        result = dict(json.loads(line[0][7:]), minutes=minutes, resident=args.resident)
        rows.append(result)
        log(f"  {result}")
    print(f"\n{'minutes':>8}{'rows':>10}{'peak RSS MB':>13}{'peak PSS MB':>13}{'seconds':>9}")
    for r in rows:
        print(f"{r['minutes']:>8g}{r['frames']:>10}{r['peak_rss_mb']:>13.0f}{r['peak_pss_mb']:>13.0f}{r['seconds']:>9.0f}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        per_hour = (b["peak_rss_mb"] - a["peak_rss_mb"]) / ((b["minutes"] - a["minutes"]) / 60)
        print(f"growth: {per_hour:.0f} MB of peak RSS per hour of 25 fps video ({per_hour * 2**20 / (90000):.0f} bytes per row)")
    (OUT / f"memory_growth{'_' + args.resident if args.resident else ''}.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
