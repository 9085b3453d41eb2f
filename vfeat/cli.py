"""The ``vfeat`` command line: parses flags, calls the library's front doors, prints. No logic of its own."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vfeat._log import show_warnings
from vfeat.errors import InputError, VfeatError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="vfeat: videos to per-frame CLIP embeddings on disk, and zero-shot evaluation from that cache.",
)
# piped or redirected, tables take the width they need: rich's 80 columns cut ids and hashes with '…'
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, soft_wrap=True)

#: extract's "time:" line. The two waits say what bounds a run: the model waiting for frames (decoding:
#: more --workers, or --precision bf16 leaves more cores to decode on a CPU) or the decode processes
#: waiting for the model to take their frames (the model).
TIMING_LABELS = {"decode_wait_s": "model waiting for frames", "decoders_held_s": "decoders waiting for the model"}


def _print_version(value: bool) -> None:
    if value:
        from vfeat import __version__

        console.print(f"vfeat {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print vfeat's version and exit.")) -> None:
    """vfeat: videos to per-frame CLIP embeddings on disk, and zero-shot evaluation from that cache."""


def _fail(exc: Exception) -> None:
    err.print(f"vfeat: error: {exc}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _quiet_libraries() -> None:
    logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs "random init" warnings on the root logger
    show_warnings()  # vfeat's own still reach stderr


def _say_when_texts_are_embedded() -> None:
    """evaluate, predict and search: a line on stderr before the text tower runs (silent minutes otherwise)."""
    logging.getLogger("vfeat.text").setLevel(logging.INFO)


@app.command(epilog="""Examples:

  vfeat extract videos/ more.mp4 --model ViT-B/16 --fps 1 --out feats.zarr

  vfeat extract --file-list paths.txt --model ViT-L-14 --pretrained laion2b_s32b_b82k --num-frames 16 --out feats.h5

  vfeat extract videos/ --model ViT-B-32 --pretrained ./my_finetuned.pt --fps 2 --batch-size 128 --device cuda:0 --out s.zarr

  vfeat extract --file-list s3://bucket/videos.txt --model ViT-B/16 --fps 1 --engine ray --address auto --gpus-per-worker 1 --out s3://bucket/features/

Exit status: 0 when every video was stored, 1 when some videos failed (each failure is printed and
recorded in the store, see `vfeat info`), 2 for a usage error (bad flag, unknown model, incompatible store, a
store another vfeat extract is writing), 3 for an internal error (a bug: a traceback), 130 when interrupted
(Ctrl-C), 143 when terminated (SIGTERM). Interrupted or terminated, what was written is kept and the same
command resumes.""")
def extract(
    inputs: List[str] = typer.Argument(None, help="Video files, directories (searched recursively for video extensions: .mp4 .mkv .avi .mov .webm ...; the other files are named in one warning), globs or URLs."),
    out: str = typer.Option(..., "--out", "-o", help="Store to write: a shard (*.zarr or *.h5) or a directory of shards."),
    model: str = typer.Option("ViT-B/32", "--model", "-m", help="Model name (see `vfeat models`)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", "-p", help="Weights: an open_clip tag, a local checkpoint file, or 'none' (random weights, tests and benchmarks only). OpenAI names default to 'openai'."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Architecture file: open_clip JSON for CLIP, official config for video models."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Sample F frames per second: the frame on screen at k/F s. With none of --fps, --num-frames, --clips: every frame."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", help="Sample N frames at segment centres (uniform)."),
    clips: Optional[int] = typer.Option(None, "--clips", help="Sample V clips (views) spread evenly over the video."),
    clip_len: Optional[int] = typer.Option(None, "--clip-len", help="Frames per clip (required with --clips)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Source frames between a clip's frames (required with --clips)."),
    file_list: Optional[str] = typer.Option(None, "--file-list", help="Text file (or URL) with one video path or URL per line ('#' comments); relative paths are relative to the list's own folder, and a video's id is its line as written."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="Compute precision: auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16."),
    dtype: str = typer.Option("float16", "--dtype", help="Storage dtype of the features: float16 or float32."),
    batch_size: int = typer.Option(64, "--batch-size", help="Frames per model batch (batches mix videos)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (default: with the model on a GPU, every core the model processes do not use; on the CPU, cores - 1, at most 8; 0 decodes in the main process)."),
    hwaccel: Optional[str] = typer.Option(None, "--hwaccel", help="Also decode on the GPU's video decoder: cuda (NVDEC; H.264/HEVC/VP9/AV1, others fall back to the CPU). Same frames; see docs/performance.md for when it pays."),
    hwaccel_workers: Optional[int] = typer.Option(None, "--hwaccel-workers", help="With --hwaccel: decode processes on the GPU decoder, beside the --workers CPU ones (default 4)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Several model processes, one per device, each writing its own shard of a directory --out: cuda:0,cuda:1 or all."),
    store_format: Optional[str] = typer.Option(None, "--format", help="Shard format when --out is a directory: zarr (default) or h5."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="Open-VCLIP: the original CLIP weights used for --patching-ratio."),
    patching_ratio: Optional[float] = typer.Option(None, "--patching-ratio", help="Open-VCLIP: weight of the original CLIP in the patched weights (0..1)."),
    weights_tag: Optional[str] = typer.Option(None, "--weights-tag", help="With a local --pretrained FILE: the open_clip tag whose weights it holds (e.g. openai, laion2b_s32b_b82k), so that it gets the tag's preprocessing and activation rather than the architecture's defaults."),
    wise_with: Optional[str] = typer.Option(None, "--wise-with", help="WiSE-FT: second checkpoint to interpolate with."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="WiSE-FT: weight of --wise-with (0..1)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the run summary as JSON to this file (- : to stdout, the summary lines then to stderr)."),
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (Ray Data on a cluster; see docs/scale.md)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray: cluster to join (auto, or ray://host:10001, host:6379); default starts a local Ray instance."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="Ray: GPUs per model actor (0: CPU actors)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Ray: videos per shard of the directory --out."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Ray: model actors (default: cluster GPUs / --gpus-per-worker, or 1)."),
) -> None:
    """Extract per-frame (and per-clip) embeddings of videos into a feature store. Rerunning the same
    command resumes: videos already in the store are skipped."""
    _quiet_libraries()
    from vfeat.extractor import extract as run_extract
    from vfeat.progress import ExtractProgress

    if not inputs and not file_list:
        _fail(VfeatError("no input videos: pass files, directories, globs or --file-list"))
    bar = ExtractProgress(enabled=progress)
    previous = _end_on_sigterm()
    try:
        _prepare_output(json_out, "--json")
        summary = run_extract(
            list(inputs or []), out, model, pretrained, fps=fps, num_frames=num_frames, clips=clips, clip_len=clip_len,
            stride=stride, file_list=file_list, model_config=model_config, device=device, precision=precision,
            dtype=dtype, batch_size=batch_size, workers=workers, store_format=store_format, devices=devices,
            hwaccel=hwaccel, hwaccel_workers=hwaccel_workers, on_start=bar.on_start, on_progress=bar.on_progress,
            clip_weights=clip_weights, patching_ratio=patching_ratio, wise_with=wise_with, alpha=alpha, weights_tag=weights_tag,
            engine=engine, address=address, gpus_per_worker=gpus_per_worker, shard_size=shard_size, ray_workers=ray_workers,
        )
    except VfeatError as exc:
        bar.close()
        _fail(exc)
        return
    except KeyboardInterrupt as exc:
        bar.close()
        progress_so_far = f" after {bar.done} of {bar.todo} videos" if bar.todo else ""
        how, status = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        kept = f"what was written is kept in {out}: " if bar.done or not bar.todo else ""
        err.print(f"vfeat: {how}{progress_so_far}; {kept}run the same command again to resume.", markup=False, highlight=False)
        raise typer.Exit(status) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    speed = f", {summary.video_seconds / summary.seconds:.1f}x real time" if summary.seconds > 0 and summary.video_seconds else ""
    human = _human(json_out)
    human.print(
        f"{summary.videos_ok} stored, {summary.videos_failed} failed, {summary.videos_skipped} already in the store; "
        f"{summary.frames} frames in {summary.seconds:.1f} s ({rate:.1f} frames/s{speed}) -> {summary.out}",
        markup=False, highlight=False,
    )
    if summary.timings:
        shown = {k: v for k, v in summary.timings.items() if k != "warm_up_s" or v > 0}  # the warm-up runs on GPUs only
        human.print("time: " + ", ".join(f"{TIMING_LABELS.get(k, k[:-2].replace('_', ' '))} {v:.1f} s" for k, v in shown.items()),
                      markup=False, highlight=False)
    if json_out:
        _write_json(json_out, {
            "timings": summary.timings, "store": out, "out": summary.out, "videos_total": summary.videos_total, "videos_ok": summary.videos_ok,
            "videos_failed": summary.videos_failed, "videos_skipped": summary.videos_skipped, "frames": summary.frames,
            "seconds": summary.seconds, "video_seconds": summary.video_seconds, "failures": [{"id": f.video_id, "path": f.path, "error": f.error} for f in summary.failures],
        })
    if not summary.ok:
        counts: dict[str, int] = {}
        for failure in summary.failures:
            reason = failure.error.split(": ", 1)[-1]
            counts[reason] = counts.get(reason, 0) + 1
        for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            err.print(f"  {count} x {reason}", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command(epilog="Examples:\n\n  vfeat info feats.zarr\n\n  vfeat info features/ --json")
def info(
    store: str = typer.Argument(..., help="A shard (*.zarr, *.h5) or a directory of shards."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Describe a store: videos, frames, model, sampling, size on disk, failures."""
    from vfeat.store.summary import describe

    try:
        summary = describe(store)
    except VfeatError as exc:
        _fail(exc)
        return
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=store, show_header=False)
    for key in ("videos", "frames", "clips", "embed_dim", "dtype", "model", "pretrained", "checkpoint_sha256", "precision", "sampling", "shards",
                "size_bytes", "vfeat_version"):
        value = summary.get(key)
        if value is not None:
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    table.add_row("failures", str(len(summary["failures"])))
    console.print(table)
    for failure in summary["failures"][:20]:
        console.print(f"  failed: {failure['error']}", markup=False, highlight=False)


@app.command(epilog="Examples:\n\n  vfeat models\n\n  vfeat models 'ViT-B*'\n\n  vfeat models --json")
def models(
    pattern: str = typer.Argument("*", help="Glob over model names (case-insensitive)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List every model name and its pretrained tags (video models: where to get the official weights)."""
    _quiet_libraries()
    from vfeat.models.registry import get_spec, list_models, list_pretrained

    rows = []
    names = list_models(pattern)
    if not names:
        _fail(InputError(f"no model name matches '{pattern}' (quote a pattern, e.g. 'ViT-B*'; `vfeat models` lists them all)"))
    for name in names:
        spec = get_spec(name)
        rows.append({"name": name, "pretrained": list_pretrained(name), "family": spec["family"] if spec else "clip",
                     "weights": (spec or {}).get("weights", "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("model", "family", "pretrained tags")
    for row in rows:
        tags = ", ".join(row["pretrained"]) or ("official weights: see below" if row["weights"] else "")
        table.add_row(row["name"], row["family"], tags)
    console.print(table)
    # links are printed whole, one line each, so that they can be copied (a table cell would cut them)
    for row in rows:
        if row["weights"] and not row["pretrained"]:
            console.print(f"{row['name']}: {' '.join(str(row['weights']).split())}", markup=False, highlight=False)


@app.command(epilog="Examples:\n\n  vfeat export feats.zarr --to npy out/\n\n  vfeat export feats.zarr --to pickle out/")
def export(
    store: str = typer.Argument(..., help="Store to export."),
    dest: str = typer.Argument(..., help="Output directory."),
    to: str = typer.Option("npy", "--to", help="npy (per video <stem>_clip.npy, <stem>_timestamps_ms.npy, <stem>_fps.npy) or pickle (one <stem>.pkl dict per video)."),
) -> None:
    """Export a store to the per-video file layout of the older video_features tool."""
    from vfeat.store.export import export_store

    try:
        count = export_store(store, dest, to)
    except VfeatError as exc:
        _fail(exc)
        return
    console.print(f"exported {count} videos to {dest}", markup=False, highlight=False)


@app.command(epilog="""Examples:

  vfeat evaluate --features ucf.zarr --task ucf101

  vfeat evaluate --features ucf.zarr --task ucf101 --split ucfTrainTestlist/testlist01.txt

  vfeat evaluate --features hmdb.zarr --task hmdb51 --split 'testTrainMulti_7030_splits/*_test_split1.txt'

  vfeat evaluate --features k400/ --task kinetics400 --json k400.json

  vfeat evaluate --features s.zarr --classes classes.txt --templates templates.txt --labels labels.csv

  vfeat evaluate --features msrvtt.zarr --task msrvtt --captions MSRVTT_JSFUSION_test.csv --dsl

  vfeat evaluate --features s.zarr --multiple-choice mc.csv

Metrics are percentages (0-100); ranks are 1-based. See docs/evaluate.md.""")
def evaluate(
    features: str = typer.Option(..., "--features", "-f", help="Feature store (shard or directory)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name(s), comma-separated (configs/tasks/*.yaml) or a task YAML path."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class list file (one label per line, or a numbered list as UCF101's classInd.txt)."),
    templates: Optional[str] = typer.Option(None, "--templates", help="Prompt templates file (one per line, each with {})."),
    labels: Optional[str] = typer.Option(None, "--labels", help="CSV video_id,label (overrides labels from file names/folders)."),
    captions: Optional[str] = typer.Option(None, "--captions", help="Retrieval annotations: CSV/JSONL video_id,caption, or the task's official file."),
    multiple_choice: Optional[str] = typer.Option(None, "--multiple-choice", help="CSV video_id,candidate_1..N,answer_index (0-based)."),
    dsl: bool = typer.Option(False, "--dsl", help="Retrieval: dual-softmax re-scoring S * softmax(100 S) over texts, as CLIP-ViP does."),
    split: Optional[List[str]] = typer.Option(None, "--split", help="Evaluate only the videos a split file lists (repeatable; a quoted glob for HMDB51's 51 files): UCF101 testlist01.txt, HMDB51 '*_test_split1.txt' (its test videos), or one video id per line."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Where the store's checkpoint file is now, if it moved (checked by sha256)."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Where the store's model configuration file is now, if it moved (the model rebuilt from it must be the recorded one)."),
    weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Where the store's weight files are now, if they moved to another folder (checkpoint, --wise-with, --clip-weights, configuration): found there by file name; the weights are checked by sha256, the rebuilt model against the record."),
    device: str = typer.Option("cpu", "--device", help="Device for the text tower."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write results as JSON to this file (- : to stdout, the table then to stderr)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a figure (PNG): confusion matrix / per-class bars, or recall@K curve."),
) -> None:
    """Zero-shot classification, text-video retrieval or multiple choice from a feature store."""
    _quiet_libraries()
    _say_when_texts_are_embedded()
    from vfeat.evaluate.plots import check_plot_path
    from vfeat.evaluate.run import evaluate as run_evaluate

    try:
        _prepare_output(json_out, "--json")
        _prepare_output(plot, "--plot")
        if plot:
            check_plot_path(plot)
        results = run_evaluate(features, task, classes=classes, templates=templates, labels=labels, captions=captions,
                               multiple_choice=multiple_choice, dsl=dsl, device=device, pretrained=pretrained,
                               model_config=model_config, weights_dir=weights_dir, split=split)
    except VfeatError as exc:
        _fail(exc)
        return
    table = Table("task", "metric", "value", title=f"{features}")
    for result in results:
        name = result["task"] + (" (DSL)" if result.get("counts", {}).get("dsl") else "")
        for key, value in result["metrics"].items():
            table.add_row(name, key, f"{value:.2f}")
    shown = _human(json_out)
    shown.print(table)
    for result in results:
        for note in result["notes"]:
            shown.print(f"{result['task']}: {note}", markup=False, highlight=False)
    if json_out:
        _write_json(json_out, [{k: v for k, v in r.items() if k != "predictions"} for r in results])
    if plot:
        from vfeat.evaluate.plots import plot_result

        written = []
        for result in results:
            target = plot if len(results) == 1 else str(Path(plot).with_name(f"{Path(plot).stem}_{result['task']}{Path(plot).suffix or '.png'}"))
            written.append(plot_result(result, target))
        shown.print(f"wrote {len(written)} plot(s): {', '.join(written)}", markup=False, highlight=False)


PREDICTION_FORMATS = {  # predict --out: file suffix -> writer
    ".parquet": lambda frame, path: frame.to_parquet(path, index=False),
    ".csv": lambda frame, path: frame.to_csv(path, index=False),
    ".jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True),
}


@app.command(epilog="""Examples:

  vfeat predict --features s.zarr --texts "a dog smiles" "a woman is lifting" --out preds.parquet --plot p.png

  vfeat predict --features s.zarr --task kinetics400 --top 5""")
def predict(
    more_texts: Optional[List[str]] = typer.Argument(None, metavar="[TEXTS]...", help="More candidate texts (so `--texts A B C` works)."),
    features: str = typer.Option(..., "--features", "-f", help="Feature store."),
    texts: Optional[List[str]] = typer.Option(None, "--texts", help="Candidate texts (each its own label): --texts A B C."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Use a classification task's classes and prompts."),
    top: int = typer.Option(1, "--top", help="Labels shown per frame."),
    out_path: Optional[str] = typer.Option(None, "--out", help="Save predictions (.parquet, .csv or .jsonl)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Timeline heatmap PNG (texts x time), one per video: NAME_<video id>.png when there are several."),
    limit: int = typer.Option(50, "--limit", help="Rows printed on the terminal (all rows go to --out)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Where the store's checkpoint file is now, if it moved."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Where the store's model configuration file is now, if it moved (the model rebuilt from it must be the recorded one)."),
    weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Where the store's weight files are now, if they moved to another folder (checkpoint, --wise-with, --clip-weights, configuration): found there by file name; the weights are checked by sha256, the rebuilt model against the record."),
    device: str = typer.Option("cpu", "--device", help="Device for the text tower."),
) -> None:
    """Per-frame zero-shot predictions: for each stored frame, the best labels with logit and probability."""
    _quiet_libraries()
    _say_when_texts_are_embedded()
    from vfeat.evaluate.explore import predict as run_predict
    from vfeat.evaluate.plots import check_plot_path

    out_format = Path(out_path).suffix.lower() if out_path else None
    try:
        if out_format not in (None, *PREDICTION_FORMATS):
            raise InputError(f"Invalid --out {out_path}: predictions are written as {', '.join(PREDICTION_FORMATS)}.")
        if limit < 0:
            raise InputError(f"Invalid --limit ({limit}). It must be >= 0.")
        _prepare_output(out_path, "--out")
        _prepare_output(plot, "--plot")
        if plot:
            check_plot_path(plot)
        result = run_predict(features, texts=(texts or []) + (more_texts or []) or None, task=task, top=top, device=device, pretrained=pretrained,
                             model_config=model_config, weights_dir=weights_dir)
    except VfeatError as exc:
        _fail(exc)
        return
    table = Table("video", "time (s)", "label", "logit", "probability")
    for row in result["rows"][:limit]:
        table.add_row(row["video_id"], f"{row['timestamp_ms'] / 1000:.3f}", row["label"], f"{row['logit']:.2f}", f"{row['probability']:.3f}")
    console.print(table)
    if len(result["rows"]) > limit:
        console.print(f"... {len(result['rows']) - limit} more rows (use --out to save all)", markup=False, highlight=False)
    if out_path:
        import pandas as pd

        PREDICTION_FORMATS[out_format](pd.DataFrame(result["rows"]), out_path)
    if plot:
        from vfeat.evaluate.plots import plot_timelines

        written = plot_timelines(result["labels"], result["timelines"], plot)
        console.print(f"wrote {len(written)} timeline plot(s): {', '.join(written)}", markup=False, highlight=False)


@app.command(epilog="""Examples:

  vfeat search --features s.zarr "a person riding a bike" --top 10

  vfeat search --features s.zarr "a rabbit" --json hits.json""")
def search(
    query: str = typer.Argument(..., help="Text to search for."),
    features: str = typer.Option(..., "--features", "-f", help="Feature store."),
    top: int = typer.Option(10, "--top", help="Number of moments to return."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write hits as JSON to this file (- : to stdout, the table then to stderr)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Where the store's checkpoint file is now, if it moved."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Where the store's model configuration file is now, if it moved (the model rebuilt from it must be the recorded one)."),
    weights_dir: Optional[str] = typer.Option(None, "--weights-dir", help="Where the store's weight files are now, if they moved to another folder (checkpoint, --wise-with, --clip-weights, configuration): found there by file name; the weights are checked by sha256, the rebuilt model against the record."),
    device: str = typer.Option("cpu", "--device", help="Device for the text tower."),
) -> None:
    """Find the moments (video, time) that best match a text."""
    _quiet_libraries()
    _say_when_texts_are_embedded()
    from vfeat.evaluate.explore import search as run_search

    try:
        _prepare_output(json_out, "--json")
        hits = run_search(features, query, top=top, device=device, pretrained=pretrained, model_config=model_config,
                          weights_dir=weights_dir)
    except VfeatError as exc:
        _fail(exc)
        return
    table = Table("rank", "video", "time (s)", "score")
    for hit in hits:
        table.add_row(str(hit["rank"]), hit["video_id"], f"{hit['timestamp_ms'] / 1000:.3f}", f"{hit['score']:.4f}")
    _human(json_out).print(table)
    if json_out:
        _write_json(json_out, {"query": query, "features": features, "hits": hits})


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job, `kill`): the run ends as on Ctrl-C, writing the videos it finished
    since the last journal part, instead of Python's default of dying on the spot."""


def _end_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` for this command; returns the handler to put back (None where
    handlers cannot be set: not the main thread)."""
    def terminate(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:
        return None


def _human(json_out: Optional[str]) -> Console:
    """Where tables and summaries go: stdout, or stderr when the JSON takes stdout (``--json -``)."""
    return err if json_out == "-" else console


def _prepare_output(path: Optional[str], flag: str) -> None:
    """An output file's folder, made (or refused) before any work: an evaluation or an extraction of hours
    ended in a traceback at its last step for a folder that did not exist."""
    if not path or path == "-":
        return
    folder = Path(path).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot create its folder {folder} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"{flag} {path}: cannot write in its folder {folder}")


def _write_json(json_out: str, payload: Any) -> None:
    """``--json FILE``; ``--json -`` prints it on stdout, alone, for the next stage of a pipeline."""
    text = json.dumps(payload, indent=2, default=str)
    if json_out == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        Path(json_out).write_text(text)


def main() -> None:
    try:
        app()
    except VfeatError as exc:
        err.print(f"vfeat: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception:  # a bug: exit 3, so that a pipeline tells it from 1 (some videos failed, each recorded)
        import traceback

        traceback.print_exc()
        err.print("vfeat: internal error (the traceback above is a bug in vfeat; what was stored is kept): exit 3",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
