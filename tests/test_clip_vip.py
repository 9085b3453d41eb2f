"""CLIP-ViP at parity with the official code (microsoft/XPretrain) on the shared fixtures.

The fixtures (``shared/fixtures/clip_vip*``, see their README) hold official checkpoints of tiny random
configurations and what the official ``VidCLIP`` computed from them; everything here is compared to those
tensors, or to plain numpy over our embeddings where the official step is numpy (retrieval scores).
A missing fixture folder fails the run: parity that is not checked is not parity.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from vfeat.errors import ModelError
from vfeat.models import clip_vip

from parity_helpers import LOGIT_TOL, TOL, fixture_dir, max_err, normalize, spec_for

def load(name: str, checkpoint: str = "checkpoint.pt"):
    folder = fixture_dir(name)
    encoder = clip_vip.build(spec_for("clip-vip-b32"), str(folder / checkpoint), config_path=str(folder / "config.json"))
    inputs = torch.load(folder / "inputs.pt", map_location="cpu")
    expected = torch.load(folder / "expected.pt", map_location="cpu")
    return encoder, inputs, expected


@pytest.fixture(scope="module")
def ext():
    return load("clip_vip_ext")


@pytest.mark.parametrize("name", ["clip_vip", "clip_vip_interp"])
def test_first_fixtures_video_text_and_scale(name):
    """clip_vip: T = temporal_size 4; clip_vip_interp: T = 6, the temporal embedding interpolated from 4."""
    encoder, inputs, expected = load(name)
    with torch.no_grad():
        video = encoder.encode_video(inputs["pixel_values"])
        text = encoder.encode_text({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
    assert video.frames is None
    assert max_err(video.clips, expected["video_embeds"]) < TOL
    assert max_err(normalize(video.clips), expected["video_embeds_normalized"]) < TOL
    assert max_err(text, expected["text_embeds"]) < TOL
    assert max_err(normalize(text), expected["text_embeds_normalized"]) < TOL
    assert encoder.clipmodel.logit_scale.item() == pytest.approx(expected["logit_scale"].item(), abs=1e-6)


@pytest.mark.parametrize("suffix", ["", "_T6", "_T3", "_T1"])
def test_ext_vision_outputs_for_every_frame_count(ext, suffix):
    encoder, inputs, expected = ext
    pixels = inputs["pixel_values" + suffix]
    with torch.no_grad():
        out = encoder.clipmodel.vision_model(pixels)
        clips = encoder.encode_video(pixels).clips
    assert max_err(out.embeddings, expected["vision_embeddings" + suffix]) < TOL
    assert max_err(out.last_hidden_state, expected["vision_last_hidden_state" + suffix]) < TOL
    assert max_err(out.pooled, expected["video_pooled" + suffix]) < TOL
    assert max_err(clips, expected["video_embeds" + suffix]) < TOL
    assert max_err(normalize(clips), expected["video_embeds_normalized" + suffix]) < TOL


def test_ext_text_logits_and_retrieval(ext):
    encoder, inputs, expected = ext
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        hidden = encoder.clipmodel.text_model(ids, mask)
        pooled = encoder.clipmodel.text_pooled(ids, mask)
        text = encoder.encode_text_tokens({"input_ids": ids, "attention_mask": mask})
        video = encoder.encode_video(inputs["pixel_values"]).clips
    assert max_err(hidden, expected["text_last_hidden_state"]) < TOL
    assert max_err(pooled, expected["text_pooled"]) < TOL
    assert max_err(text, expected["text_embeds"]) < TOL
    assert max_err(normalize(text), expected["text_embeds_normalized"]) < TOL
    assert max_err(normalize(text), expected["forward_text_features"]) < TOL
    assert max_err(normalize(video), expected["forward_vis_features"]) < TOL

    assert encoder.clipmodel.logit_scale.item() == pytest.approx(4.2, abs=1e-6)  # stored, not the 4.6 init
    assert encoder.logit_scale == pytest.approx(expected["logit_scale_exp"].item(), rel=1e-6)
    logits = encoder.logit_scale * normalize(text) @ normalize(video).T
    assert max_err(logits, expected["logits_per_text"]) < LOGIT_TOL
    assert max_err(logits.T, expected["logits_per_image"]) < LOGIT_TOL

    # src/utils/metrics.py: cal_cossim(text, video) and the DSL form of validate(), in numpy
    t, v = normalize(text).numpy().astype(np.float64), normalize(video).numpy().astype(np.float64)
    sim = t @ v.T
    scaled = sim * 100
    dsl = sim * (np.exp(scaled - scaled.max(axis=0)) / np.exp(scaled - scaled.max(axis=0)).sum(axis=0))
    assert np.abs(sim - expected["retrieval_sim"].numpy()).max() < TOL
    assert np.abs(dsl - expected["retrieval_sim_dsl"].numpy()).max() < TOL


def test_text_padding_mask_only_moves_padded_positions(ext):
    """Without the mask the end token's state is unchanged (causal attention never looks right of it)."""
    encoder, inputs, expected = ext
    with torch.no_grad():
        bare = encoder.encode_text_tokens(inputs["input_ids"])
    assert max_err(bare, expected["text_embeds"]) < TOL


def test_fp16_checkpoint_is_copied_into_fp32(ext):
    encoder, inputs, expected = load("clip_vip_ext", "checkpoint_fp16.pt")
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    with torch.no_grad():
        video = encoder.encode_video(inputs["pixel_values"]).clips
        text = encoder.encode_text({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
    assert max_err(video, expected["fp16ckpt_video_embeds"]) < TOL
    assert max_err(normalize(video), expected["fp16ckpt_video_embeds_normalized"]) < TOL
    assert max_err(text, expected["fp16ckpt_text_embeds"]) < TOL
    assert max_err(normalize(text), expected["fp16ckpt_text_embeds_normalized"]) < TOL
    logits = encoder.logit_scale * normalize(text) @ normalize(video).T
    assert max_err(logits, expected["fp16ckpt_logits_per_text"]) < LOGIT_TOL
    assert encoder.clipmodel.logit_scale.item() == expected["fp16ckpt_logit_scale"].item() == 4.19921875
    assert encoder.logit_scale == pytest.approx(expected["fp16ckpt_logit_scale_exp"].item(), rel=1e-6)
    # and the fp16 rounding is really there: the fp32 checkpoint gives other numbers
    assert max_err(video, ext[2]["video_embeds"]) > 1e-5


def test_tokenizer_matches_hf_clip_tokenizer_fast(ext):
    encoder, inputs, _ = ext
    tokens = encoder.tokenize(inputs["texts"])
    assert torch.equal(tokens["input_ids"], inputs["input_ids_tokenizer"])
    assert torch.equal(tokens["attention_mask"], inputs["attention_mask"])


def test_tokenizer_truncates_like_hf():
    """HF keeps SOT + the first max_length - 2 tokens + EOT, and never pads a full row."""
    tokens = clip_vip.hf_clip_tokenize(["a " * 60 + "end"], max_length=50)
    ids = tokens["input_ids"][0].tolist()
    assert ids[0] == 49406 and ids[-1] == 49407 and ids[1:49] == [320] * 48
    assert tokens["attention_mask"].sum().item() == 50


def test_state_dict_round_trips_to_the_official_format(ext):
    encoder, _, _ = ext
    path = fixture_dir("clip_vip_ext") / "checkpoint.pt"
    official = torch.load(path, map_location="cpu")
    ours = encoder.state_dict()
    assert set(ours) == set(official)
    for key, value in official.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_identity_and_surface(ext):
    encoder, _, _ = ext
    path = fixture_dir("clip_vip_ext") / "checkpoint.pt"
    assert encoder.identity.name == "clip-vip-b32"
    assert encoder.identity.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    arch = encoder.identity.options["architecture"]
    assert arch["clip_vision_additional_config"]["temporal_size"] == 4 and arch["max_txt_len"] == 50
    json.dumps(encoder.identity.as_dict())  # a store can record it
    assert encoder.frame_level is False and encoder.embed_dim == 32 and encoder.clip_len == 4
    assert encoder.preprocess.image_size == 32 and encoder.preprocess.interpolation == "bicubic"


def test_rebuild_from_identity_checks_the_architecture(ext):
    encoder, inputs, expected = ext
    identity = encoder.identity
    again = clip_vip.build(spec_for("clip-vip-b32"), identity.pretrained, **identity.options)
    with torch.no_grad():
        assert max_err(again.encode_video(inputs["pixel_values"]).clips, expected["video_embeds"]) < TOL
    options = dict(identity.options, architecture={**identity.options["architecture"], "max_txt_len": 77})
    with pytest.raises(ModelError, match="architecture differs"):
        clip_vip.build(spec_for("clip-vip-b32"), identity.pretrained, **options)


def test_hf_config_json_and_run_config_pointing_to_it(tmp_path):
    """The official run config names its clip_config by path; a bare HF config.json takes ViP fields from
    the registry spec."""
    folder = fixture_dir("clip_vip")
    inputs = torch.load(folder / "inputs.pt")
    expected = torch.load(folder / "expected.pt")
    extra = json.loads((folder / "config.json").read_text())["clip_vision_additional_config"]
    run_config = tmp_path / "run.json"
    run_config.write_text(json.dumps({"clip_config": str(folder / "hf_config"), "clip_vision_additional_config": extra}))
    spec = spec_for("clip-vip-b32")
    spec["architecture"]["clip_vision_additional_config"] = extra
    for config_path, used_spec in [(run_config, spec_for("clip-vip-b32")), (folder / "hf_config" / "config.json", spec)]:
        encoder = clip_vip.build(used_spec, str(folder / "checkpoint.pt"), config_path=str(config_path))
        with torch.no_grad():
            assert max_err(encoder.encode_video(inputs["pixel_values"]).clips, expected["video_embeds"]) < TOL


def _hf_layer_shapes(rest: str, width: int, mlp: int) -> tuple[int, ...]:
    if rest.startswith("self_attn."):
        return (width, width) if rest.endswith("weight") else (width,)
    if rest.startswith("layer_norm"):
        return (width,)
    return {"mlp.fc1.weight": (mlp, width), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (width, mlp), "mlp.fc2.bias": (width,)}[rest]


def official_shapes(fixture_keys: list[str], patch: int) -> dict[str, tuple[int, ...]]:
    """The official key set at real size: the fixture's names with layers 0..11, shapes of the released B/32 or
    B/16 (HF openai/clip-vit-base-patch{32,16} + 3 proxies + 12 temporal steps)."""
    v, t, positions = 768, 512, (224 // patch) ** 2 + 1
    other = {
        "clipmodel.logit_scale": (),
        "clipmodel.text_model.embeddings.position_ids": (1, 77),
        "clipmodel.text_model.embeddings.token_embedding.weight": (49408, t),
        "clipmodel.text_model.embeddings.position_embedding.weight": (77, t),
        "clipmodel.text_model.final_layer_norm.weight": (t,),
        "clipmodel.text_model.final_layer_norm.bias": (t,),
        "clipmodel.vision_model.embeddings.added_cls": (3, v),
        "clipmodel.vision_model.embeddings.class_embedding": (v,),
        "clipmodel.vision_model.embeddings.temporal_embedding": (1, 12, v),
        "clipmodel.vision_model.embeddings.position_ids": (1, positions),
        "clipmodel.vision_model.embeddings.patch_embedding.weight": (v, 3, patch, patch),
        "clipmodel.vision_model.embeddings.position_embedding.weight": (positions, v),
        "clipmodel.vision_model.pre_layrnorm.weight": (v,),
        "clipmodel.vision_model.pre_layrnorm.bias": (v,),
        "clipmodel.vision_model.post_layernorm.weight": (v,),
        "clipmodel.vision_model.post_layernorm.bias": (v,),
        "clipmodel.visual_projection.weight": (512, v),
        "clipmodel.text_projection.weight": (512, t),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for key in fixture_keys:
        layer = re.fullmatch(r"clipmodel\.(text|vision)_model\.encoder\.layers\.\d+\.(.+)", key)
        if layer:
            tower, rest = layer.groups()
            width, mlp = (t, 2048) if tower == "text" else (v, 3072)
            for index in range(12):
                shapes[f"clipmodel.{tower}_model.encoder.layers.{index}.{rest}"] = _hf_layer_shapes(rest, width, mlp)
        else:
            shapes[key] = other[key]
    return shapes


@pytest.mark.parametrize("name, patch", [("clip-vip-b32", 32), ("clip-vip-b16", 16)])
def test_real_size_random_init_has_the_official_names_and_shapes(name, patch):
    fixture_keys = list(torch.load(fixture_dir("clip_vip_ext") / "checkpoint.pt", map_location="cpu"))
    encoder = clip_vip.build(spec_for(name), "none")
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == official_shapes(fixture_keys, patch)
    assert encoder.identity.pretrained == "none" and encoder.identity.checkpoint_sha256 is None
    assert encoder.embed_dim == 512 and encoder.clip_len == 12 and encoder.preprocess.image_size == 224
    assert encoder.clipmodel.logit_scale.item() == pytest.approx(4.6)  # VidCLIP's init value


def test_missing_checkpoint_names_the_file_and_the_download():
    with pytest.raises(ModelError, match=r"nowhere/ckpt\.pt: clip-vip-b32 checkpoint not found.*hdvila\.blob"):
        clip_vip.build(spec_for("clip-vip-b32"), "/nowhere/ckpt.pt")


def test_key_mismatch_is_named(tmp_path):
    folder = fixture_dir("clip_vip_ext")
    state = torch.load(folder / "checkpoint.pt", map_location="cpu")
    state.pop("clipmodel.vision_model.embeddings.added_cls")
    state["clipmodel.vision_model.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ModelError, match=r"bad\.pt: .*missing: clipmodel\.vision_model\.embeddings\.added_cls.*unexpected: clipmodel\.vision_model\.extra\.weight"):
        clip_vip.build(spec_for("clip-vip-b32"), str(bad), config_path=str(folder / "config.json"))


def test_wrong_size_checkpoint_is_refused():
    """The tiny checkpoint against the real B/32 architecture: shapes named, nothing loaded."""
    with pytest.raises(ModelError, match=r"wrong shape: clipmodel\.text_model\.embeddings\.token_embedding\.weight \(1000, 64\) vs \(49408, 512\)"):
        clip_vip.build(spec_for("clip-vip-b32"), str(fixture_dir("clip_vip_ext") / "checkpoint.pt"))


def test_config_errors_are_for_people(tmp_path):
    hub = tmp_path / "run.json"
    hub.write_text(json.dumps({"clip_config": "openai/clip-vit-base-patch32", "clip_vision_additional_config": {}}))
    with pytest.raises(ModelError, match="clip_config 'openai/clip-vit-base-patch32' is not a local file"):
        clip_vip.build(spec_for("clip-vip-b32"), "none", config_path=str(hub))
    with pytest.raises(ModelError, match=r"missing\.json: CLIP-ViP config not found"):
        clip_vip.build(spec_for("clip-vip-b32"), "none", config_path=str(tmp_path / "missing.json"))
    with pytest.raises(ModelError, match=r"clip-vip-b32: --patching-ratio does not apply to CLIP-ViP \(it takes none of these options\)"):
        clip_vip.build(spec_for("clip-vip-b32"), "none", patching_ratio=0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_when_cast_to_low_precision(ext, dtype):
    """``load_model(precision=...)`` casts the whole encoder; the numbers stay those of fp32 up to rounding."""
    _, inputs, expected = ext
    encoder = load("clip_vip_ext")[0].to(dtype)
    with torch.no_grad():
        video = encoder.encode_video(inputs["pixel_values"]).clips.float()
        text = encoder.encode_text({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}).float()
    assert (normalize(video) * expected["video_embeds_normalized"]).sum(-1).min() > 0.999
    assert (normalize(text) * expected["text_embeds_normalized"]).sum(-1).min() > 0.999
