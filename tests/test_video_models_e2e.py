"""extract -> evaluate end to end for every model family, with random-init checkpoints saved in the
official file formats (real vocabulary, tiny widths), and WiSE-FT against a direct interpolation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vfeat
from vfeat.cli import app

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VFEAT_FIXTURES", REPO.parent / "shared" / "fixtures"))
TINY_CLIP = REPO / "tests" / "data" / "vfeat-tiny-vit.json"
runner = CliRunner()


def _video(path: Path, duration: float, source: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size=96x64:rate=10", "-t", str(duration),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    _video(folder / "bars.mp4", 3.0, "testsrc2")
    _video(folder / "fractal.mp4", 2.5, "mandelbrot")
    return folder


def _real_vocab_config(src: Path, dest: Path, edit) -> Path:
    config = json.loads(src.read_text())
    edit(config)
    dest.write_text(json.dumps(config))
    return dest


def _extract_and_evaluate(tmp_path: Path, videos: Path, extract_args: list[str]) -> dict:
    store = tmp_path / "s.zarr"
    result = runner.invoke(app, ["extract", str(videos), "--out", str(store), "--no-progress", "--workers", "0", *extract_args])
    assert result.exit_code == 0, result.output
    (tmp_path / "captions.csv").write_text("video_id,caption\nbars.mp4,colour bars\nfractal.mp4,a fractal\n")
    out_json = tmp_path / "r.json"
    result = runner.invoke(app, ["evaluate", "--features", str(store), "--captions", str(tmp_path / "captions.csv"), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out_json.read_text())[0]["metrics"]
    assert set(metrics) == {f"{d}_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "r50", "median_rank", "mean_rank")}
    assert metrics["t2v_r5"] == 100.0  # two videos: every caption ranks its video in the top 5
    return metrics


def test_clip_vip_end_to_end(tmp_path, videos):
    def edit(config):
        config["clip_config"]["text_config"]["vocab_size"] = 49408
    config = _real_vocab_config(FIXTURES / "clip_vip_ext" / "config.json", tmp_path / "vip.json", edit)
    encoder = vfeat.load_model("clip-vip-b32", "none", config=str(config))
    checkpoint = tmp_path / "pretrain_clipvip_tiny.pt"
    state = encoder.state_dict()
    assert all(k.startswith("clipmodel.") for k in state)  # the official VidCLIP naming
    torch.save(state, checkpoint)
    _extract_and_evaluate(tmp_path, videos, ["--model", "clip-vip-b32", "--pretrained", str(checkpoint), "--model-config", str(config), "--num-frames", "4"])
    with vfeat.open_store(str(tmp_path / "s.zarr")) as store:
        assert not store.has_frames and store.has_clips
        clip, start_ms, end_ms = store.clips("bars.mp4")
        assert clip.shape == (1, 32) and start_ms[0] < end_ms[0]


def test_open_vclip_end_to_end_with_patching(tmp_path, videos):
    config = _real_vocab_config(FIXTURES / "open_vclip" / "config.json", tmp_path / "ovc.json", lambda c: c.update(vocab_size=49408))
    finetuned = vfeat.load_model("open-vclip-b16", "none", config=str(config))
    state = finetuned.state_dict()
    assert all(k.startswith("model.") for k in state)
    torch.save({"model_state": state}, tmp_path / "swa_tiny.pth")  # the released SWA layout
    original = {k[len("model."):]: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(original, tmp_path / "clip_original.pt")
    _extract_and_evaluate(tmp_path, videos, ["--model", "open-vclip-b16", "--pretrained", str(tmp_path / "swa_tiny.pth"),
                                             "--clip-weights", str(tmp_path / "clip_original.pt"), "--patching-ratio", "0.5",
                                             "--model-config", str(config), "--clips", "2", "--clip-len", "4", "--stride", "3"])
    with vfeat.open_store(str(tmp_path / "s.zarr")) as store:
        feats, stamps = store["bars.mp4"]
        clips, _, _ = store.clips("bars.mp4")
        assert feats.shape == (8, 32) and clips.shape == (2, 32)
        # a clip embedding is the mean of its frames' embeddings (stored in float16)
        np.testing.assert_allclose(clips[0].astype(np.float32), feats[:4].astype(np.float32).mean(axis=0), atol=2e-3)


def test_open_vclip_says_once_what_differs_from_its_own_setting(tmp_path, videos):
    """Another clip length than the checkpoint's T, and no weight patching, run (a user may want either) but
    are said, once: both change the embeddings against the release's own evaluation."""
    config = FIXTURES / "open_vclip" / "config.json"  # T = 4
    checkpoint = FIXTURES / "open_vclip" / "checkpoint.pt"

    def extract(name: str, *args: str) -> str:
        result = runner.invoke(app, ["extract", str(videos / "bars.mp4"), "--out", str(tmp_path / name), "--no-progress",
                                     "--workers", "0", "--model", "open-vclip-b16", "--model-config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    own = extract("own.zarr", "--pretrained", str(checkpoint), "--clips", "1", "--clip-len", "4", "--stride", "2")
    assert "trained on clips" not in own
    assert own.count("no --patching-ratio") == 1 and "--clip-weights" in own
    longer = extract("longer.zarr", "--pretrained", str(checkpoint), "--clips", "1", "--clip-len", "6", "--stride", "2")
    assert longer.count("trained on clips of 4 frames; --clip-len 6 gives clips of 6") == 1
    random = extract("random.zarr", "--pretrained", "none", "--clips", "1", "--clip-len", "4", "--stride", "2")
    assert "patching" not in random and "trained on clips" not in random


def _tiny_clip_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    import open_clip

    open_clip.add_model_config(TINY_CLIP)
    return open_clip.create_model("vfeat-tiny-vit").state_dict()


def test_wise_equals_direct_interpolation(tmp_path):
    a, b = _tiny_clip_state(1), _tiny_clip_state(2)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    alpha = 0.3
    mixed = vfeat.load_model("vfeat-tiny-vit", str(tmp_path / "a.pt"), config=str(TINY_CLIP), wise_with=str(tmp_path / "b.pt"), alpha=alpha)
    direct = {k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k] for k in a}
    reference = vfeat.load_model("vfeat-tiny-vit", "none", config=str(TINY_CLIP))
    reference.model.load_state_dict(direct)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got, want = mixed.encode_frames(pixels), reference.encode_frames(pixels)
    assert torch.allclose(got, want, atol=1e-5)
    assert mixed.identity.options["alpha"] == alpha


def test_wise_refuses_incompatible_checkpoints(tmp_path):
    a = _tiny_clip_state(1)
    torch.save(a, tmp_path / "a.pt")
    torch.save({k: v for k, v in a.items() if not k.startswith("visual.proj")}, tmp_path / "b.pt")
    with pytest.raises(vfeat.ModelError, match="not compatible"):
        vfeat.load_model("vfeat-tiny-vit", str(tmp_path / "a.pt"), config=str(TINY_CLIP), wise_with=str(tmp_path / "b.pt"), alpha=0.5)
    with pytest.raises(vfeat.ModelError, match=r"Invalid --alpha \(1.5\)"):
        vfeat.load_model("vfeat-tiny-vit", str(tmp_path / "a.pt"), config=str(TINY_CLIP), wise_with=str(tmp_path / "a.pt"), alpha=1.5)


def test_a_text_tower_smaller_than_the_tokenizer_is_one_clear_error(tmp_path, videos):
    """The parity fixtures' text towers have tiny vocabularies: a real caption's tokens fall outside them.
    search says so in one line (it was an IndexError traceback)."""
    folder = FIXTURES / "clip_vip_ext"
    store = tmp_path / "tiny_vocab.zarr"
    result = runner.invoke(app, ["extract", str(videos / "bars.mp4"), "--out", str(store), "--no-progress", "--workers", "0",
                                 "--model", "clip-vip-b32", "--pretrained", str(folder / "checkpoint.pt"),
                                 "--model-config", str(folder / "config.json"), "--num-frames", "4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", "--features", str(store), "a dog on a skateboard"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert " ".join(result.output.split()).endswith(
        "vfeat: error: the text tower of clip-vip-b32 cannot embed these texts: a token falls outside its vocabulary "
        "(index out of range in self); its configuration does not fit the standard CLIP tokenizer")
