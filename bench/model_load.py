"""How long a model takes to load from a local weight file, against open_clip's own path, in the same run.

Every `vfeat extract` and `vfeat evaluate` starts with it. open_clip builds the model with random weights,
then reads the file, then copies it in; vfeat maps the file, skips the random weights that the strict load
overwrites, and hashes the file (for the store's record) beside the load.

    python bench/model_load.py                              # ViT-B/32, ViT-B/16, ViT-L/14
    python bench/model_load.py --tree /tmp/vfeat-old        # and another checkout's load_model, in the same run
    python bench/model_load.py --towers                     # and one tower only: towers="image" (extraction), "text" (evaluation)

Random weights are saved once to ``bench/out/weights/`` (2.9 GB for the three models; the file is then in
the page cache, as for a user's second run). Each measurement runs in a fresh process, in interleaved rounds;
the time is the load alone (the imports come before it) and, with ``--cli``, the wall time of a whole
``vfeat extract`` of one 1-second clip with ``--workers 0`` (Python start, imports, model, decode, store).
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
ROOT = HERE.parent
MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


def child(kind: str, arch: str, weights: str, tree: str, device: str) -> None:
    """One load onto ``device``, in a process whose ``vfeat`` is ``tree``'s (or open_clip's own path)."""
    sys.path.insert(0, tree)
    import open_clip
    import torch

    import vfeat

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    if kind == "open_clip":
        model = open_clip.create_model(arch, pretrained=weights, device=device)
    elif kind.startswith("vfeat["):  # vfeat[image], vfeat[text]: load_model(towers=...)
        model = vfeat.load_model(arch, weights, device=device, towers=kind[len("vfeat["):-1])
    else:
        model = vfeat.load_model(arch, weights, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del model
    print("RESULT " + json.dumps({"seconds": seconds, "vfeat": str(Path(vfeat.__file__).parent)}), flush=True)


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{args} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def cli_extract(tree: Path, arch: str, weights: str, video: Path) -> float:
    """Wall time of ``vfeat extract`` on one clip, with ``tree``'s vfeat."""
    with tempfile.TemporaryDirectory() as tmp:
        code = f"import sys; sys.path.insert(0, {str(tree)!r}); from vfeat.cli import app; app()"
        cmd = [sys.executable, "-c", code, "extract", str(video), "--model", arch, "--pretrained", weights, "--fps", "1",
               "--workers", "0", "--out", str(Path(tmp) / "s.zarr"), "--no-progress"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"vfeat extract with {tree} failed:\n{proc.stderr[-3000:]}")
    return seconds


def save_weights(folder: Path, arch: str) -> Path:
    path = folder / f"{arch}.pt"
    if not path.is_file():
        import open_clip
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(arch).state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    return path


def one_second_clip(folder: Path) -> Path:
    path = folder / "one_second.mp4"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
                        "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="open_clip architectures, comma-separated")
    p.add_argument("--tree", action="append", default=[], help="another vfeat checkout to measure in the same run (repeatable)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cli", action="store_true", help="also time a whole `vfeat extract` of a 1-second clip per model and tree")
    p.add_argument("--device", default="cpu", help="where the model goes (cuda: CUDA's start-up included, as in a run)")
    p.add_argument("--towers", action="store_true", help="also this tree's load of one tower: towers='image' (extraction) and 'text' (evaluation)")
    p.add_argument("--weights-dir", default=str(HERE / "out" / "weights"))
    p.add_argument("--out-json", default=None)
    p.add_argument("--child", nargs=5, metavar=("KIND", "ARCH", "WEIGHTS", "TREE", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    trees = [ROOT] + [Path(t).resolve() for t in args.tree]
    weights = {arch: save_weights(Path(args.weights_dir), arch) for arch in models}
    video = one_second_clip(Path(args.weights_dir)) if args.cli else None
    kinds = ["open_clip"] + [f"vfeat:{t}" for t in trees] + ([f"cli:{t}" for t in trees] if args.cli else [])
    if args.towers:
        kinds[2:2] = [f"vfeat[{towers}]:{ROOT}" for towers in ("image", "text")]
    runs: dict[str, dict[str, list[float]]] = {arch: {kind: [] for kind in kinds} for arch in models}
    for k in range(args.rounds):
        for arch in models:
            for kind in kinds:
                if kind.startswith("cli:"):
                    seconds = cli_extract(Path(kind[4:]), arch, str(weights[arch]), video)
                else:
                    name, _, tree = kind.partition(":")
                    seconds = run_child(["--child", name, arch, str(weights[arch]), tree or str(ROOT), args.device])["seconds"]
                runs[arch][kind].append(seconds)
                print(f"[round {k + 1}] {arch} {kind}: {seconds:.2f} s", file=sys.stderr, flush=True)

    print(f"{'model':<10} {'measure':<44}{'median s':>10}{'open_clip / this':>18}")
    summary: dict[str, dict[str, float]] = {}
    for arch in models:
        base = statistics.median(runs[arch]["open_clip"])
        summary[arch] = {}
        for kind in kinds:
            median = statistics.median(runs[arch][kind])
            summary[arch][kind] = median
            label = kind if len(kind) <= 44 else kind[:8] + "..." + kind[-33:]
            ratio = f"{base / median:>17.2f}x" if not kind.startswith("cli:") else f"{'':>18}"
            print(f"{arch:<10} {label:<44}{median:>10.2f}{ratio}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"cpu_count": os.cpu_count(), "device": args.device, "runs": runs,
                                                   "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
