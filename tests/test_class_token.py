"""The class-token-only last block (``vfeat/models/class_token.py``): the same embeddings as open_clip's own
forward for every ViT it applies to, the full forward for every ViT it does not, and really one token in
the last block's MLP when it applies."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer

from vfeat.models.class_token import class_token_only, image_embedding

SMALL = dict(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=4.0, output_dim=24)


def _vit(**options) -> VisionTransformer:
    """A small open_clip ViT whose every parameter is moved off its init (no layer norm or bias is a no-op)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        visual = VisionTransformer(**{**SMALL, **options}).eval()
        with torch.no_grad():
            for param in visual.parameters():
                param.add_(0.1 * torch.randn_like(param))
    return visual


def _pixels(count: int = 5) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


STOCK_VARIANTS = {
    "gelu": {},
    "quick_gelu": {"act_layer": QuickGELU},
    "layer_scale": {"ls_init_value": 0.5},
    "ln_after_pool": {"final_ln_after_pool": True},
    "no_ln_pre": {"no_ln_pre": True},
}


@pytest.mark.parametrize("variant", STOCK_VARIANTS)
def test_same_embeddings_as_the_full_forward(variant):
    visual = _vit(**STOCK_VARIANTS[variant])
    assert class_token_only(visual)
    pixels = _pixels()
    with torch.inference_mode():
        full, short = visual(pixels), image_embedding(visual, pixels)
    assert short.shape == full.shape == (5, 24)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


def test_same_embeddings_in_bf16():
    visual = _vit().to(torch.bfloat16)
    pixels = _pixels().to(torch.bfloat16)
    with torch.inference_mode():
        full, short = visual(pixels).float(), image_embedding(visual, pixels).float()
    cosine = torch.nn.functional.cosine_similarity(full, short, dim=-1)
    assert cosine.min() > 0.999, cosine


def test_vit_b32_architecture():
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    assert class_token_only(model.visual)
    with torch.inference_mode():
        torch.testing.assert_close(image_embedding(model.visual, pixels), model.encode_image(pixels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    {"pool_type": "avg"},  # the embedding is the mean of all tokens
    {"attentional_pool": True},  # CoCa's attention pooler reads every token
    {"output_tokens": True},  # the caller wants the tokens too
    {"block_type": "custom"},  # CustomResidualAttentionBlock: other norms and scales inside the block
], ids=["avg_pool", "attentional_pool", "output_tokens", "custom_blocks"])
def test_other_vits_keep_the_full_forward(options):
    assert not class_token_only(_vit(**options))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("VFEAT_CLASS_TOKEN_ONLY", "0")
    assert not class_token_only(_vit())


def test_the_encoder_runs_one_token_through_the_last_mlp(tiny_model):
    """Through ``load_model`` as extraction loads it: the tiny test architecture qualifies, its last block's
    MLP sees one token per frame (every earlier block sees all of them), and the embeddings are open_clip's."""
    from vfeat.models.factory import load_model

    encoder = load_model(tiny_model.name, tiny_model.state_dict, config=tiny_model.config, device="cpu", precision="fp32")
    assert encoder.class_token_only
    blocks = encoder.model.visual.transformer.resblocks
    tokens_seen = []
    hooks = [block.mlp.register_forward_hook(lambda module, args, out: tokens_seen.append(args[0].shape[1]))
             for block in blocks]
    pixels = _pixels(3)
    try:
        with torch.inference_mode():
            ours = encoder.encode_frames(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    patches = (32 // 8) ** 2
    assert tokens_seen == [patches + 1] * (len(blocks) - 1) + [1]
    with torch.inference_mode():
        torch.testing.assert_close(ours, encoder.model.encode_image(pixels), rtol=1e-5, atol=1e-5)


def _tokens_through_each_mlp(blocks, run) -> list[int]:
    seen: list[int] = []
    hooks = [block.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1])) for block in blocks]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_video_families_run_one_token_through_their_last_mlp(monkeypatch):
    """CLIP-ViP and Open-VCLIP on the parity fixtures (whose embeddings the parity tests check against the
    official code on both paths): one token in the last block, the same clips as with every token, and
    ``VFEAT_CLASS_TOKEN_ONLY=0`` builds encoders that keep every token."""
    from vfeat.models import clip_vip, open_vclip
    from parity_helpers import fixture_dir, spec_for

    vip_folder, vclip_folder = fixture_dir("clip_vip_ext"), fixture_dir("open_vclip")
    builders = {
        "clip-vip": lambda: clip_vip.build(spec_for("clip-vip-b32"), str(vip_folder / "checkpoint.pt"),
                                           config_path=str(vip_folder / "config.json")),
        "open-vclip": lambda: open_vclip.build(spec_for("open-vclip-b16"), str(vclip_folder / "checkpoint.pt"),
                                               config_path=str(vclip_folder / "config.json")),
    }
    for family, build in builders.items():
        encoder = build()
        blocks = (encoder.clipmodel.vision_model.encoder.layers if family == "clip-vip"
                  else encoder.model.visual.transformer.resblocks)
        pixels = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        short = _tokens_through_each_mlp(blocks, lambda: encoder.encode_video(pixels))
        tokens = short[0]
        assert tokens > 1 and short == [tokens] * (len(blocks) - 1) + [1], (family, short)
        with torch.inference_mode():
            ours = encoder.encode_video(pixels).clips
        encoder.class_token_only = False
        assert _tokens_through_each_mlp(blocks, lambda: encoder.encode_video(pixels)) == [tokens] * len(blocks)
        with torch.inference_mode():
            torch.testing.assert_close(ours, encoder.encode_video(pixels).clips, rtol=1e-5, atol=1e-5)
        monkeypatch.setenv("VFEAT_CLASS_TOKEN_ONLY", "0")
        assert not build().class_token_only, family
        monkeypatch.delenv("VFEAT_CLASS_TOKEN_ONLY")
