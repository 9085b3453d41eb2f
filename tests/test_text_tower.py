"""Extraction drops the text tower (drop_text_tower): less memory, the same video embeddings, and a clear
error if anything still asks the encoder for text."""

from __future__ import annotations

import pytest
import torch

from vfeat.models import clip_vip, open_vclip
from vfeat.models.factory import load_model

from parity_helpers import fixture_dir, spec_for


def _tiny_clip(repo_root):
    return load_model("vfeat-tiny-vit", "none", config=str(repo_root / "tests" / "data" / "vfeat-tiny-vit.json"))


def _clip_vip(repo_root):
    folder = fixture_dir("clip_vip")
    return clip_vip.build(spec_for("clip-vip-b32"), str(folder / "checkpoint.pt"), config_path=str(folder / "config.json"))


def _open_vclip(repo_root):
    folder = fixture_dir("open_vclip")
    return open_vclip.build(spec_for("open-vclip-b16"), str(folder / "checkpoint.pt"), config_path=str(folder / "config.json"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("build", [_tiny_clip, _clip_vip, _open_vclip], ids=["open_clip", "clip_vip", "open_vclip"])
def test_video_embeddings_unchanged_and_text_refused(repo_root, build):
    encoder = build(repo_root).eval()
    size, frames = encoder.preprocess.image_size, encoder.clip_len or 3
    pixels = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = encoder.encode_video(pixels)
        tokens = encoder.tokenize(["a dog"]) if build is _tiny_clip else torch.tensor([[1, 5, 7, 2]])  # tiny vocabularies
        text_before = encoder.encode_text(tokens)
    params_before = sum(p.numel() for p in encoder.parameters())
    scale = encoder.logit_scale
    encoder.drop_text_tower()
    with torch.inference_mode():
        after = encoder.encode_video(pixels)
    assert torch.equal(before.clips, after.clips)
    assert (before.frames is None) == (after.frames is None)
    if before.frames is not None:
        assert torch.equal(before.frames, after.frames)
    assert text_before.shape[-1] == encoder.embed_dim
    assert sum(p.numel() for p in encoder.parameters()) < 0.9 * params_before  # the text side is gone
    assert encoder.logit_scale == scale  # recorded in the store's attributes
    with pytest.raises(RuntimeError, match="loaded for extraction"):
        encoder.encode_text(tokens)
