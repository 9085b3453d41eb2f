"""Open-VCLIP at parity with the official code (wengzejia1/Open-VCLIP) on the shared fixtures.

``shared/fixtures/open_vclip`` holds a fine-tuned SWA-format checkpoint, the original CLIP as an OpenAI
TorchScript archive (mixed fp16/fp32), and what the official ``TemporalClipVideo`` computed after patching
with r in {0, 0.3, 0.5, 1}. A missing fixture folder fails the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from vfeat.errors import ModelError
from vfeat.models import open_vclip

from parity_helpers import LOGIT_TOL, TOL, max_err, normalize, spec_for
from parity_helpers import fixture_dir as _fixture_dir

# OpenAI archives (clip_original.pt, ViT-B-16.pt) are TorchScript; reading them goes through torch.jit.load
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def fixture_dir() -> Path:
    return _fixture_dir("open_vclip")


def build(ratio: float = 0.0, **options):
    folder = fixture_dir()
    if ratio > 0:
        options.setdefault("clip_weights", str(folder / "clip_original.pt"))
    return open_vclip.build(
        spec_for("open-vclip-b16"), str(folder / "checkpoint.pt"), config_path=str(folder / "config.json"),
        patching_ratio=ratio, **options,
    )


@pytest.fixture(scope="module")
def data():
    folder = fixture_dir()
    return torch.load(folder / "inputs.pt", map_location="cpu"), torch.load(folder / "expected.pt", map_location="cpu")


def fixture_ratios() -> list[float]:
    keys = torch.load(fixture_dir() / "expected.pt", map_location="cpu")
    return sorted(float(k.rsplit("_", 1)[1]) for k in keys if k.startswith("frame_embeds_ratio_"))


def test_fixture_covers_the_ratios_that_matter():
    assert {0.0, 0.3, 0.5, 1.0} <= set(fixture_ratios())


@pytest.mark.parametrize("ratio", fixture_ratios())
def test_parity_for_every_patching_ratio(data, ratio):
    inputs, expected = data
    key = f"_ratio_{ratio}"
    encoder = build(ratio)
    captured: dict[str, torch.Tensor] = {}
    visual = encoder.model.visual
    visual.ln_pre.register_forward_hook(lambda m, i, out: captured.__setitem__("ln_pre", out))
    for index, block in enumerate(visual.transformer.resblocks):
        block.register_forward_hook(lambda m, i, out, index=index: captured.__setitem__(f"block{index}", out))
    clips = inputs["frames"].reshape(2, 4, 3, 32, 32)  # 2 clips x T 4, clip-major
    assert encoder.class_token_only  # the default: the last block for the class token only
    with torch.no_grad():
        video = encoder.encode_video(clips)
        text = encoder.encode_text_tokens(inputs["input_ids"])
        per_template = [normalize(encoder.encode_text(ids)) for ids in inputs["prompt_ids"]]
        encoder.class_token_only = False  # every token through every block, for the block outputs below
        every_token = encoder.encode_video(clips).frames.reshape(8, -1)
    frames = video.frames.reshape(8, -1)
    assert max_err(frames, expected["frame_embeds" + key]) < TOL
    assert max_err(every_token, expected["frame_embeds" + key]) < TOL
    assert max_err(normalize(frames), expected["frame_embeds_normalized" + key]) < TOL
    assert max_err(video.clips, video.frames.mean(dim=1)) == 0.0
    assert max_err(text, expected["text_embeds" + key]) < TOL

    classifier = normalize(torch.stack(per_template).mean(dim=0))  # achieve_csf_matrix
    assert max_err(classifier, expected["dynamic_classifier" + key]) < TOL
    logits = (encoder.logit_scale * normalize(frames) @ classifier.T).reshape(2, 4, -1).mean(dim=1)
    assert max_err(logits, expected["logits" + key]) < LOGIT_TOL
    assert encoder.model.logit_scale.item() == pytest.approx(expected["logit_scale" + key].item(), abs=1e-6)

    if "visual_ln_pre_out" + key in expected:  # official layout of block outputs: sequence-first [L, N, D]
        assert max_err(captured["ln_pre"], expected["visual_ln_pre_out" + key]) < TOL
        for index in range(2):
            official = expected[f"visual_block{index}_out" + key]
            assert max_err(captured[f"block{index}"].transpose(0, 1), official) < TOL


def test_patched_weights_at_0_3_are_computed_in_the_archive_dtype(data):
    """The pure patching function on the raw files gives the official tensors; the same formula in fp32 does
    not (so this test can tell the two apart)."""
    _, expected = data
    folder = fixture_dir()
    finetuned = {k[len("model."):]: v for k, v in torch.load(folder / "checkpoint.pt", map_location="cpu")["model_state"].items()}
    original = torch.jit.load(str(folder / "clip_original.pt"), map_location="cpu").state_dict()
    original = {k: v for k, v in original.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    patched = open_vclip.patch_state_dict(finetuned, original, 0.3)
    checked = [k for k in expected if k.startswith("patched_ratio_0.3.")]
    assert len(checked) == 4
    for key in checked:
        name = key[len("patched_ratio_0.3.model."):]
        assert patched[name].dtype == torch.float32
        assert max_err(patched[name], expected[key]) == 0.0, name
    conv = "visual.conv1.weight"
    assert original[conv].dtype == torch.float16
    in_fp32 = original[conv].float() * 0.3 + finetuned[conv] * 0.7
    assert max_err(in_fp32, expected["patched_ratio_0.3.model." + conv]) > 0


def test_patch_state_dict_by_hand():
    half = torch.tensor([0.1], dtype=torch.float16)
    patched = open_vclip.patch_state_dict({"w": torch.tensor([1.0]), "only_ft": torch.tensor([2.0])}, {"w": half}, 0.3)
    by_hand = (half * 0.3).float() + torch.tensor([1.0]) * 0.7  # product rounded to fp16 first
    assert torch.equal(patched["w"], by_hand) and patched["w"].dtype == torch.float32
    assert torch.equal(patched["only_ft"], torch.tensor([2.0]))
    with pytest.raises(ModelError, match="original CLIP has 1 key.*extra"):
        open_vclip.patch_state_dict({"w": torch.ones(1)}, {"w": torch.ones(1), "extra": torch.ones(1)}, 0.5)
    with pytest.raises(ModelError, match=r"differ in shape \(w: \(2,\) vs \(1,\)\)"):
        open_vclip.patch_state_dict({"w": torch.ones(1)}, {"w": torch.ones(2)}, 0.5)


def test_neighbour_frames_attention_zero_fills_clip_edges():
    """An independent loop: frame t attends to [frame t+1 or zeros, frame t-1 or zeros, frame t]."""
    torch.manual_seed(0)
    frames, heads, length, dim = 3, 2, 4, 5
    q, k, v = (torch.randn(2 * frames, heads, length, dim) for _ in range(3))
    out = open_vclip.neighbour_frames_core(frames)(q, k, v)
    zeros = torch.zeros(heads, length, dim)
    for clip in range(2):
        for t in range(frames):
            row = clip * frames + t
            nxt = k[row + 1] if t + 1 < frames else zeros, v[row + 1] if t + 1 < frames else zeros
            prv = k[row - 1] if t > 0 else zeros, v[row - 1] if t > 0 else zeros
            keys = torch.cat([nxt[0], prv[0], k[row]], dim=1)
            values = torch.cat([nxt[1], prv[1], v[row]], dim=1)
            ref = torch.softmax(q[row] @ keys.transpose(1, 2), dim=-1) @ values
            assert max_err(out[row], ref) < 1e-6


def test_clip_weights_as_a_model_state_dict_give_the_same_patch(data, tmp_path):
    inputs, expected = data
    original = torch.jit.load(str(fixture_dir() / "clip_original.pt"), map_location="cpu").state_dict()
    wrapped = tmp_path / "clip_ori.pyth"
    torch.save({"model_state": {"model." + k: v for k, v in original.items()}}, wrapped)
    encoder = build(0.3, clip_weights=str(wrapped))
    with torch.no_grad():
        frames = encoder.encode_video(inputs["frames"].reshape(2, 4, 3, 32, 32)).frames.reshape(8, -1)
    assert max_err(frames, expected["frame_embeds_ratio_0.3"]) < TOL


def test_tokenizer_matches_clip_tokenize(data):
    inputs, _ = data
    encoder = build()
    prompts = [template.format(name) for template in inputs["templates"] for name in inputs["classnames"]]
    tokens = encoder.tokenize(prompts).reshape(len(inputs["templates"]), len(inputs["classnames"]), -1)
    assert torch.equal(tokens, inputs["prompt_ids_tokenizer"])
    assert torch.equal(tokens[0], inputs["input_ids_tokenizer"])


def test_state_dict_round_trips_to_the_released_format():
    official = torch.load(fixture_dir() / "checkpoint.pt", map_location="cpu")["model_state"]
    ours = build().state_dict()
    assert set(ours) == set(official)
    for key, value in official.items():
        assert torch.equal(ours[key], value), key


def test_identity_records_what_changes_the_numbers(data):
    inputs, expected = data
    folder = fixture_dir()
    encoder = build(0.3)
    identity = encoder.identity
    assert identity.name == "open-vclip-b16"
    assert identity.checkpoint_sha256 == hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()
    options = identity.options
    assert options["patching_ratio"] == 0.3
    assert options["clip_weights_sha256"] == hashlib.sha256((folder / "clip_original.pt").read_bytes()).hexdigest()
    assert options["architecture"]["T"] == 4 and options["architecture"]["vision_heads"] == 2
    json.dumps(identity.as_dict())
    assert encoder.frame_level is False and encoder.embed_dim == 32 and encoder.clip_len == 4
    assert encoder.preprocess.image_size == 32 and encoder.preprocess.interpolation == "bicubic"
    again = open_vclip.build(spec_for("open-vclip-b16"), identity.pretrained, **options)
    with torch.no_grad():
        frames = again.encode_video(inputs["frames"].reshape(2, 4, 3, 32, 32)).frames.reshape(8, -1)
    assert max_err(frames, expected["frame_embeds_ratio_0.3"]) < TOL
    with pytest.raises(ModelError, match="clip_weights_sha256 differs"):
        open_vclip.build(spec_for("open-vclip-b16"), identity.pretrained, **dict(options, clip_weights_sha256="0" * 64))


def official_shapes(fixture_keys: list[str], width: int, patch: int, text: int, embed: int, layers: int) -> dict:
    """The released key set at real size: the fixture's names with layers 0..N-1, OpenAI ViT shapes."""
    positions = (224 // patch) ** 2 + 1

    def block(rest: str, w: int) -> tuple[int, ...]:
        return {
            "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,), "attn.out_proj.weight": (w, w),
            "attn.out_proj.bias": (w,), "mlp.c_fc.weight": (4 * w, w), "mlp.c_fc.bias": (4 * w,),
            "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,),
        }.get(rest, (w,))  # ln_1 / ln_2

    other = {
        "model.positional_embedding": (77, text), "model.text_projection": (text, embed), "model.logit_scale": (),
        "model.visual.class_embedding": (width,), "model.visual.positional_embedding": (positions, width),
        "model.visual.proj": (width, embed), "model.visual.conv1.weight": (width, 3, patch, patch),
        "model.visual.ln_pre.weight": (width,), "model.visual.ln_pre.bias": (width,),
        "model.visual.ln_post.weight": (width,), "model.visual.ln_post.bias": (width,),
        "model.token_embedding.weight": (49408, text), "model.ln_final.weight": (text,), "model.ln_final.bias": (text,),
    }
    shapes = {}
    for key in fixture_keys:
        match = re.fullmatch(r"model\.(visual\.)?transformer\.resblocks\.\d+\.(.+)", key)
        if match:
            visual, rest = match.groups()
            for index in range(layers if visual else 12):
                w = width if visual else text
                shapes[f"model.{visual or ''}transformer.resblocks.{index}.{rest}"] = block(rest, w)
        else:
            shapes[key] = other[key]
    return shapes


def test_real_size_b16_random_init_has_the_released_names_and_shapes():
    fixture_keys = list(torch.load(fixture_dir() / "checkpoint.pt", map_location="cpu")["model_state"])
    encoder = open_vclip.build(spec_for("open-vclip-b16"), "none")
    ours = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == official_shapes(fixture_keys, width=768, patch=16, text=512, embed=512, layers=12)
    assert [b.attn.heads for b in encoder.model.visual.transformer.resblocks][:1] == [12]
    assert encoder.model.transformer.resblocks[0].attn.heads == 8
    assert encoder.embed_dim == 512 and encoder.clip_len == 8 and encoder.preprocess.image_size == 224


@pytest.mark.parametrize("name, width, heads", [("open-vclip-b32", 768, 12), ("open-vclip-b16", 768, 12), ("open-vclip-l14", 1024, 16)])
def test_registry_architectures(name, width, heads):
    config = open_vclip.resolve_config(spec_for(name)["architecture"], None)
    assert config.vision_width == width and config.heads[0] == heads and config.T == 8
    assert config.heads[1] == config.transformer_width // 64 and config.context_length == 77


def test_patching_without_clip_weights_is_refused():
    with pytest.raises(ModelError, match="--patching-ratio 0.5 needs --clip-weights"):
        build(0.5, clip_weights=None)


def test_bad_patching_ratio_and_unknown_option():
    with pytest.raises(ModelError, match=r"Invalid --patching-ratio \(1.5\). It must be in \[0, 1\]"):
        build(1.5)
    with pytest.raises(ModelError, match=r": --alpha does not apply to Open-VCLIP \(it takes --clip-weights, --patching-ratio\)"):
        build(0.0, alpha=0.5)


def test_missing_files_name_the_file_and_the_download():
    with pytest.raises(ModelError, match=r"nowhere/swa_2_22\.pth: open-vclip-b16 checkpoint not found.*drive\.google\.com"):
        open_vclip.build(spec_for("open-vclip-b16"), "/nowhere/swa_2_22.pth")
    with pytest.raises(ModelError, match=r"nowhere/ViT-B-16\.pt: .*original CLIP weights.*not found.*ViT-B-16\.pt"):
        build(0.5, clip_weights="/nowhere/ViT-B-16.pt")


def test_key_mismatch_is_named(tmp_path):
    folder = fixture_dir()
    state = torch.load(folder / "checkpoint.pt", map_location="cpu")["model_state"]
    state.pop("model.visual.ln_post.bias")
    state["model.visual.adapter.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"model_state": state}, bad)
    with pytest.raises(ModelError, match=r"bad\.pth: .*missing: model\.visual\.ln_post\.bias.*unexpected: model\.visual\.adapter\.weight"):
        open_vclip.build(spec_for("open-vclip-b16"), str(bad), config_path=str(folder / "config.json"))


def test_checkpoint_of_another_size_than_the_registry_is_refused():
    with pytest.raises(ModelError, match=r"checkpoint\.pt: the weights have embed_dim 32 but the architecture says 512"):
        open_vclip.build(spec_for("open-vclip-b16"), str(fixture_dir() / "checkpoint.pt"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_when_cast_to_low_precision(data, dtype):
    """``load_model(precision=...)`` casts the whole encoder (layer norms included); still the fp32 numbers
    up to rounding, and the zero-filled neighbours take the model's dtype."""
    inputs, expected = data
    encoder = build(0.5).to(dtype)
    with torch.no_grad():
        frames = encoder.encode_video(inputs["frames"].reshape(2, 4, 3, 32, 32)).frames.reshape(8, -1).float()
        text = encoder.encode_text_tokens(inputs["input_ids"]).float()
    assert (normalize(frames) * expected["frame_embeds_normalized_ratio_0.5"]).sum(-1).min() > 0.999
    assert (normalize(text) * normalize(expected["text_embeds_ratio_0.5"])).sum(-1).min() > 0.999
