"""Extraction drops the text tower and evaluation the image tower (``load_model(towers=...)``): the same
embeddings as the whole model, less memory, a load that leaves the dropped tower's weights out of a file,
and a clear error if anything still asks the encoder for the tower it lacks."""

from __future__ import annotations

from pathlib import Path

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


# -- loading one tower -------------------------------------------------------------------------------------

def _families(tiny_model):
    """(family, build(weight file, without) -> encoder, its weight file) for each family."""
    from vfeat.models import clip

    vip, vclip = fixture_dir("clip_vip"), fixture_dir("open_vclip")
    return [
        ("open_clip", lambda path, without: clip.build(tiny_model.name, str(path), config_path=tiny_model.config,
                                                       without=without), tiny_model.state_dict),
        ("clip_vip", lambda path, without: clip_vip.build(spec_for("clip-vip-b32"), str(path),
                                                          config_path=str(vip / "config.json"), without=without),
         vip / "checkpoint.pt"),
        ("open_vclip", lambda path, without: open_vclip.build(spec_for("open-vclip-b16"), str(path),
                                                              config_path=str(vclip / "config.json"), without=without),
         vclip / "checkpoint.pt"),
    ]


def _tokens(family, encoder):
    return encoder.tokenize(["a dog", "a red car"]) if family == "open_clip" else torch.tensor([[1, 5, 7, 2], [1, 3, 2, 0]])


def _tower_of(file_key: str, encoder) -> str | None:
    """Which tower a weight file's key belongs to, by the wrapped model's part names (wrapper prefixes of the
    official files stripped: ``module.``, ``model.``, ``clipmodel.``)."""
    from vfeat.models.base import tower_parts
    from vfeat.models.weights import under_prefixes

    key = file_key
    while key.startswith(("module.", "model.", "clipmodel.")):
        key = key.split(".", 1)[1]
    owner = next(encoder.children())
    for tower in ("text", "image"):
        if under_prefixes(key, tower_parts(owner, tower)):
            return tower
    return None


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["open_clip", "clip_vip", "open_vclip"])
def test_one_tower_gives_the_whole_models_embeddings(tiny_model, family):
    _, build, path = next(f for f in _families(tiny_model) if f[0] == family)
    whole, image, text = build(path, None).eval(), build(path, "text").eval(), build(path, "image").eval()
    size, frames = whole.preprocess.image_size, whole.clip_len or 3
    pixels = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want_video, got_video = whole.encode_video(pixels), image.encode_video(pixels)
        want_text, got_text = whole.encode_text(_tokens(family, whole)), text.encode_text(_tokens(family, text))
    assert torch.equal(want_video.clips, got_video.clips)
    assert torch.equal(want_text, got_text)
    counts = [sum(p.numel() for p in e.parameters()) for e in (whole, image, text)]
    assert max(counts[1:]) < counts[0] <= counts[1] + counts[2] <= counts[0] + 2, counts  # the logit scale (and bias) in both
    assert image.logit_scale == text.logit_scale == whole.logit_scale  # recorded in the store's attributes
    with pytest.raises(RuntimeError, match="loaded for extraction"):
        image.encode_text(_tokens(family, image))
    with pytest.raises(RuntimeError, match="loaded for text only"):
        text.encode_video(pixels)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["open_clip", "clip_vip", "open_vclip"])
def test_the_dropped_towers_weights_are_left_out_the_kept_ones_loaded_strictly(tiny_model, tmp_path, family):
    """A file whose text tower does not fit (a misshapen weight) loads for extraction, and not whole; a file
    lacking one image weight fails for extraction, naming it, and still loads for text: what is loaded is
    loaded strictly, what is dropped is left out."""
    from vfeat.errors import ModelError
    from vfeat.models.weights import read_state_dict

    _, build, path = next(f for f in _families(tiny_model) if f[0] == family)
    whole = build(path, None)
    state = read_state_dict(path)
    towers = {k: _tower_of(k, whole) for k in state}
    assert {"text", "image"} <= set(towers.values()), towers

    misshapen = next(k for k in state if towers[k] == "text" and ".0." in k and k.endswith("weight"))
    bad_text = tmp_path / "bad-text.pt"
    torch.save({**state, misshapen: torch.zeros(3)}, bad_text)
    image = build(bad_text, "text")
    assert image.text_dropped and not image.image_dropped
    with pytest.raises(ModelError, match="wrong shape"):
        build(bad_text, None)

    dropped = next(k for k in state if towers[k] == "image")
    no_image_weight = tmp_path / "lacks-one-image-weight.pt"
    torch.save({k: v for k, v in state.items() if k != dropped}, no_image_weight)
    with pytest.raises(ModelError, match="1 missing: .*" + dropped.rsplit(".", 1)[-1]):
        build(no_image_weight, "text")
    assert build(no_image_weight, "image").image_dropped


def test_load_model_towers(tiny_model):
    """The front door: towers='image' / 'text' drop the other one; anything else is refused."""
    image = load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, towers="image")
    text = load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, towers="text")
    assert image.text_dropped and not image.image_dropped and text.image_dropped and not text.text_dropped
    with pytest.raises(ValueError, match="towers"):
        load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, towers="video")


def test_a_tokenizer_that_needs_transformers_is_built_only_to_tokenize(tiny_model, monkeypatch):
    """SigLIP's tokenizer is Hugging Face's, which needs `transformers` (not a vfeat dependency): extraction
    never tokenizes, so it loads and encodes frames; tokenizing is one clear error, not a traceback."""
    import open_clip

    from vfeat.errors import ModelError

    def missing(name):
        raise RuntimeError("Please `pip install transformers` to use pre-trained HuggingFace tokenizers")

    monkeypatch.setattr(open_clip, "get_tokenizer", missing)
    encoder = load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, device="cpu", towers="image")
    size = encoder.preprocess.image_size
    assert encoder.encode_frames(torch.zeros(1, 3, size, size)).shape == (1, encoder.embed_dim)
    both = load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, device="cpu")
    with pytest.raises(ModelError, match=f"^{tiny_model.name}: its text tokenizer needs the transformers package"):
        both.tokenize(["a dog"])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_clip_encode_video_takes_fp32_pixels_at_reduced_precision(tiny_model, precision):
    """As the video models do: the Python API's fp32 pixels meet fp16/bf16 weights (a dtype error before)."""
    kwargs = dict(config=tiny_model.config, device="cpu")
    reduced = load_model(tiny_model.name, tiny_model.state_dict, precision=precision, **kwargs)
    full = load_model(tiny_model.name, tiny_model.state_dict, precision="fp32", **kwargs)
    size = reduced.preprocess.image_size
    pixels = torch.rand(2, 3, 3, size, size)
    got, want = reduced.encode_video(pixels).frames.float(), full.encode_video(pixels).frames
    assert torch.nn.functional.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1)).min() > 0.99


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_logit_scale_is_not_rounded_to_the_model_precision(tiny_model, precision):
    """The store records it and `vfeat predict` scales logits by it: bf16 made OpenAI's 100 into 98.9."""
    kwargs = dict(config=tiny_model.config, device="cpu")
    full = load_model(tiny_model.name, tiny_model.state_dict, precision="fp32", **kwargs)
    reduced = load_model(tiny_model.name, tiny_model.state_dict, precision=precision, **kwargs)
    assert reduced.logit_scale == full.logit_scale
    assert next(reduced.model.visual.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def test_weights_tag_gives_a_local_file_the_tags_preprocessing_and_activation(tiny_model, monkeypatch, tmp_path):
    """A local copy of a tag's weights (offline) was preprocessed and activated as the architecture's defaults:
    OpenAI mean/std, shortest-side crop, GELU. --weights-tag names the tag; its open_clip config decides."""
    import open_clip
    from open_clip.model import QuickGELU

    from vfeat.errors import InputError

    import json

    config = json.loads(Path(tiny_model.config).read_text())
    config["quick_gelu"] = False  # a GELU architecture, as ViT-B-32 is, whose OpenAI weights need QuickGELU
    gelu = tmp_path / "vfeat-tiny-gelu.json"
    gelu.write_text(json.dumps(config))
    name = "vfeat-tiny-gelu"
    tag = {"quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash",
           "interpolation": "bilinear"}
    real_tags, real_cfg = open_clip.list_pretrained_tags_by_model, open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model",
                        lambda arch: ["webli"] if arch == name else real_tags(arch))
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda arch, tag_name: dict(tag) if (arch, tag_name) == (name, "webli") else real_cfg(arch, tag_name))
    kwargs = dict(config=str(gelu), device="cpu")
    plain = load_model(name, tiny_model.state_dict, **kwargs)
    tagged = load_model(name, tiny_model.state_dict, weights_tag="webli", **kwargs)
    assert (plain.preprocess.resize_mode, plain.preprocess.interpolation) == ("shortest", "bicubic")
    assert tagged.preprocess.as_dict() == {**plain.preprocess.as_dict(), "mean": [0.5] * 3, "std": [0.5] * 3,
                                           "resize_mode": "squash", "interpolation": "bilinear"}
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())
    assert any(isinstance(m, QuickGELU) for m in tagged.model.modules())
    assert tagged.identity.options["weights_tag"] == "webli" and tagged.identity.options["quick_gelu"] is True
    with pytest.raises(InputError, match="--weights-tag laion is not a tag of"):
        load_model(name, tiny_model.state_dict, weights_tag="laion", **kwargs)
    with pytest.raises(InputError, match="--pretrained none is not a file"):
        load_model(name, "none", weights_tag="webli", **kwargs)


def _store_with_its_own_config(tiny_model, folder: Path, name: str) -> tuple[Path, dict]:
    """A store extracted with a copy of the tiny configuration, ``folder/NAME.json``, under its own architecture
    name (open_clip's registry is global: editing the tiny one would change it for later tests)."""
    import shutil

    import vfeat
    from conftest import make_video

    folder.mkdir(exist_ok=True)
    config = folder / f"{name}.json"
    shutil.copy(tiny_model.config, config)
    store = folder / "s.zarr"
    vfeat.extract([str(make_video(folder, "a.mp4", 1.0))], str(store), fps=1.0, workers=0,
                  **{**tiny_model.extract_kwargs(), "model": name, "model_config": str(config)})
    with vfeat.open_store(str(store)) as opened:
        return config, opened.attrs


def test_a_configuration_edited_since_the_extraction_is_refused(tiny_model, tmp_path, monkeypatch):
    """Evaluation rebuilds the text tower from the store's record; a configuration file changed since (here
    its activation) gave another model without a word."""
    import json

    from vfeat.errors import StoreError
    from vfeat.evaluate.text import load_store_model

    config, attrs = _store_with_its_own_config(tiny_model, tmp_path / "run", "vfeat-tiny-edited")
    load_store_model(attrs)  # as written: the same model
    edited = json.loads(config.read_text())
    edited["quick_gelu"] = not edited.get("quick_gelu", False)
    config.write_text(json.dumps(edited))
    with pytest.raises(StoreError, match=r"differs from the one that wrote it \(config_sha256, quick_gelu\)"):
        load_store_model(attrs)
    edited["quick_gelu"] = not edited["quick_gelu"]  # back, and an edit that keeps every weight's shape
    edited["vision_cfg"]["pool_type"] = "avg"
    config.write_text(json.dumps(edited))
    with pytest.raises(StoreError, match=r"differs from the one that wrote it \(config_sha256\)"):
        load_store_model(attrs)


def test_a_moved_configuration_is_passed_with_model_config(tiny_model, tmp_path, monkeypatch):
    """A store evaluated on another machine: its weights can be pointed at with --pretrained, and now its
    configuration file with --model-config (the rebuilt model must still be the recorded one)."""
    import shutil

    from typer.testing import CliRunner

    from vfeat.cli import app
    from vfeat.errors import StoreError
    from vfeat.evaluate.text import load_store_model

    config, attrs = _store_with_its_own_config(tiny_model, tmp_path / "first", "vfeat-tiny-moved")
    store, moved = tmp_path / "first" / "s.zarr", tmp_path / "elsewhere"
    moved.mkdir()
    before = load_store_model(attrs).encode_text(["a dog"])
    shutil.move(str(config), moved / config.name)
    with pytest.raises(StoreError, match=r"model configuration .*vfeat-tiny-moved\.json is not on this machine; "
                                         r"pass it with --model-config PATH"):
        load_store_model(attrs)
    after = load_store_model(attrs, model_config=str(moved / config.name)).encode_text(["a dog"])
    assert torch.equal(before, after)
    monkeypatch.setenv("VFEAT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["search", "--features", str(store), "a dog", "--model-config", str(moved / config.name)])
    assert result.exit_code == 0, result.output


def _moved_away(files: list[Path], folder: Path) -> None:
    import shutil

    folder.mkdir(exist_ok=True)
    for file in files:
        shutil.move(str(file), folder / file.name)


def test_weight_files_moved_to_another_folder_are_found_with_weights_dir(tiny_model, tmp_path, monkeypatch):
    """A WiSE-FT store evaluated after its three files (checkpoint, --wise-with, configuration) moved: before,
    a moved --wise-with file stopped evaluation with no way to point at it."""
    import shutil

    import vfeat
    from conftest import make_video
    from typer.testing import CliRunner

    from vfeat.cli import app
    from vfeat.errors import StoreError
    from vfeat.evaluate.text import load_store_model

    run = tmp_path / "run"
    run.mkdir()
    config, first, second = run / "vfeat-tiny-wdir.json", run / "first.pt", run / "second.pt"
    shutil.copy(tiny_model.config, config)
    shutil.copy(tiny_model.state_dict, first)
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in torch.load(first).items()}, second)
    store = run / "s.zarr"
    vfeat.extract([str(make_video(run, "a.mp4", 1.0))], str(store), model="vfeat-tiny-wdir", pretrained=str(first),
                  model_config=str(config), wise_with=str(second), alpha=0.3, fps=1.0, workers=0)
    with vfeat.open_store(str(store)) as opened:
        attrs = opened.attrs
    before = load_store_model(attrs).encode_text(["a dog"])

    _moved_away([first, second, config], tmp_path / "elsewhere")
    with pytest.raises(StoreError, match=r"first\.pt are not on this machine; .*--weights-dir DIR"):
        load_store_model(attrs)
    with pytest.raises(StoreError, match=r"--wise-with weights .*second\.pt are not on this machine; .*--weights-dir DIR"):
        load_store_model(attrs, pretrained=str(tmp_path / "elsewhere" / "first.pt"))
    after = load_store_model(attrs, weights_dir=str(tmp_path / "elsewhere")).encode_text(["a dog"])
    assert torch.equal(before, after)

    torch.save(torch.load(tmp_path / "elsewhere" / "first.pt"), tmp_path / "elsewhere" / "second.pt")  # another file, same name
    with pytest.raises(StoreError, match=r"differs from the one that wrote it \(wise_sha256\)"):
        load_store_model(attrs, weights_dir=str(tmp_path / "elsewhere"))

    monkeypatch.setenv("VFEAT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["search", "--features", str(store), "a dog", "--weights-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "--weights-dir" in result.output and "no such folder" in result.output, result.output


def test_open_vclip_clip_weights_moved_are_found_with_weights_dir(tmp_path, monkeypatch):
    """Open-VCLIP patched with --clip-weights: the original CLIP moved too, and is found by name."""
    import shutil

    import vfeat
    from conftest import make_video
    from typer.testing import CliRunner

    from vfeat.cli import app
    from vfeat.evaluate.text import load_store_model

    folder = fixture_dir("open_vclip")
    run = tmp_path / "run"
    run.mkdir()
    files = [run / "checkpoint.pt", run / "clip_original.pt", run / "config.json"]
    for file in files:
        shutil.copy(folder / file.name, file)
    store = run / "s.zarr"
    vfeat.extract([str(make_video(run, "a.mp4", 1.0))], str(store), model="open-vclip-b16", pretrained=str(files[0]),
                  model_config=str(files[2]), clip_weights=str(files[1]), patching_ratio=0.5, clips=1, clip_len=4, stride=1,
                  workers=0)
    with vfeat.open_store(str(store)) as opened:
        attrs = opened.attrs
    before = load_store_model(attrs).state_dict()
    _moved_away(files, tmp_path / "elsewhere")
    monkeypatch.setenv("VFEAT_CACHE_DIR", str(tmp_path / "cache"))
    # (the fixture's text tower has a tiny vocabulary: no real text embeds; the error comes at the load, before)
    result = CliRunner().invoke(app, ["search", "--features", str(store), "a dog",
                                      "--pretrained", str(tmp_path / "elsewhere" / "checkpoint.pt"),
                                      "--model-config", str(tmp_path / "elsewhere" / "config.json")])
    assert result.exit_code == 2 and "--clip-weights weights" in result.output and "--weights-dir" in result.output, result.output
    after = load_store_model(attrs, weights_dir=str(tmp_path / "elsewhere")).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
