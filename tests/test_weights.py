"""Loading weights fast and exactly: weight files are mapped rather than read, models that a checkpoint will
fill are built without drawing random weights first, and an open_clip tag loads from the hub cache offline.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import vfeat
from conftest import make_video, vfeat_command
from vfeat.models.weights import no_random_init, read_state_dict


def _init_functions() -> dict[str, object]:
    import torch.nn.modules.activation as activation
    import torch.nn.modules.transformer as transformer

    return {"init.normal_": torch.nn.init.normal_, "init.uniform_": torch.nn.init.uniform_,
            "init.kaiming_uniform_": torch.nn.init.kaiming_uniform_, "init.trunc_normal_": torch.nn.init.trunc_normal_,
            "activation.xavier_uniform_": activation.xavier_uniform_, "transformer.xavier_uniform_": transformer.xavier_uniform_}


def _seeded_tiny(tiny_model) -> dict[str, torch.Tensor]:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return open_clip.create_model(tiny_model.name, pretrained=None).state_dict()


def test_random_init_comes_back_after_the_build_even_on_error(tiny_model):
    before_functions, before_model = _init_functions(), _seeded_tiny(tiny_model)
    with pytest.raises(RuntimeError, match="checkpoint broke"):
        with no_random_init():
            assert _init_functions() != before_functions  # MultiheadAttention's own imports too
            raise RuntimeError("checkpoint broke")
    assert _init_functions() == before_functions
    after_model = _seeded_tiny(tiny_model)
    assert all(torch.equal(after_model[k], before_model[k]) for k in before_model)


def test_model_from_a_file_computes_what_open_clip_computes(tiny_model):
    """Every parameter comes from the file, and what the model computes for itself (the text tower's causal
    mask, a non-persistent buffer) is built as usual: images and texts give open_clip's outputs exactly."""
    import open_clip

    reference = open_clip.create_model(tiny_model.name, pretrained=tiny_model.state_dict).eval()
    encoder = vfeat.load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config)
    ours = encoder.model
    assert {k: v.dtype for k, v in ours.named_buffers()} == {k: v.dtype for k, v in reference.named_buffers()}
    for (name, buffer), (_, expected) in zip(ours.named_buffers(), reference.named_buffers()):
        assert torch.equal(buffer, expected), name
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(tiny_model.name)(["a dog", "a cat playing the piano", ""])
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), reference.encode_image(images))
        assert torch.equal(encoder.encode_text_tokens(tokens), reference.encode_text(tokens))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_weight_files_of_either_torch_save_format_read_the_same(tmp_path, zip_format):
    state = {"a": torch.randn(4, 5), "b": torch.arange(6, dtype=torch.int64), "c": torch.randn(3).half()}
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=zip_format)
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_a_file_that_cannot_be_mapped_is_read_whole(tmp_path, monkeypatch):
    state = {"w": torch.randn(3, 3)}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    real_load, mapped = torch.load, []

    def no_mmap(*args, **kwargs):  # as on a file system that cannot map files
        if kwargs.get("mmap"):
            mapped.append(True)
            raise RuntimeError("unable to mmap 4096 bytes from file: Operation not supported")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", no_mmap)
    assert torch.equal(read_state_dict(path)["w"], state["w"])
    assert mapped == [True]


def test_a_file_is_hashed_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """Evaluation checks the weight file's hash, then the load records it: one read of the file. A file
    rewritten in place (same size) is hashed again."""
    import hashlib
    import types

    from vfeat.models import weights

    hashed = []

    def counting_sha256() -> object:
        hashed.append(True)
        return hashlib.sha256()

    monkeypatch.setattr(weights, "hashlib", types.SimpleNamespace(sha256=counting_sha256))
    path = tmp_path / "weights.pt"
    path.write_bytes(b"a" * 5000)
    assert weights.sha256_file(path) == hashlib.sha256(b"a" * 5000).hexdigest()
    assert weights.sha256_file(str(path)) == hashlib.sha256(b"a" * 5000).hexdigest()
    assert len(hashed) == 1
    before = path.stat()
    path.write_bytes(b"b" * 5000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # even within one clock tick
    assert weights.sha256_file(path) == hashlib.sha256(b"b" * 5000).hexdigest()
    assert len(hashed) == 2


def _fill_hub_cache(hub: Path, state: dict[str, torch.Tensor]) -> None:
    """What a first online run leaves in the Hugging Face cache for open_clip's ``ViT-B-32`` / ``openai``
    tag (repo timm/vit_base_patch32_clip_224.openai, whose safetensors file open_clip prefers)."""
    from safetensors.torch import save_file

    repo = hub / "models--timm--vit_base_patch32_clip_224.openai"
    revision = "1" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "open_clip_model.safetensors"))


def test_pretrained_tag_loads_from_the_hub_cache_offline(tmp_path):
    """`vfeat extract --model ViT-B/32` (the ``openai`` tag) on a machine with no network whose cache a first
    run filled: the tag's weights, with the tag's settings (QuickGELU), the same features as passing that
    file with --pretrained."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        state = open_clip.create_model("ViT-B-32", force_quick_gelu=True).state_dict()
    _fill_hub_cache(tmp_path / "hf" / "hub", state)
    weight_file = tmp_path / "ViT-B-32.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(weight_file))
    del state
    video = make_video(tmp_path, "clip.mp4", 2.0, 25, (320, 240))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "XDG_CACHE"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    by_tag = tmp_path / "tag.zarr"
    proc = subprocess.run([*vfeat_command(), "extract", str(video), "--model", "ViT-B/32", "--fps", "1", "--out",
                           str(by_tag), "--workers", "0", "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    by_file = tmp_path / "file.zarr"
    summary = vfeat.extract([str(video)], str(by_file), model="ViT-B/32", pretrained=str(weight_file), fps=1.0,
                            workers=0, device="cpu", precision="fp32")
    assert summary.videos_ok == 1

    tag_group, file_group = zarr.open_group(str(by_tag), mode="r"), zarr.open_group(str(by_file), mode="r")
    tag_model = dict(tag_group.attrs)["model"]
    assert tag_model["pretrained"] == "openai"
    assert tag_model["options"]["quick_gelu"] is True
    assert dict(file_group.attrs)["model"]["options"]["quick_gelu"] is True
    np.testing.assert_array_equal(tag_group["timestamps_ms"][:], file_group["timestamps_ms"][:])
    assert tag_group["features"].shape == (2, 512)
    np.testing.assert_array_equal(tag_group["features"][:], file_group["features"][:])


def test_a_weight_file_load_does_not_warn_of_random_weights(tiny_model, caplog):
    """open_clip logs "initialized randomly" for the model vfeat builds before loading a file into it; a Python
    caller must not see that false warning (the random-weight model, pretrained='none', still says so)."""
    import logging

    with caplog.at_level(logging.WARNING):
        vfeat.load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config)
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        vfeat.load_model(tiny_model.name, "none", config=tiny_model.config)
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]
