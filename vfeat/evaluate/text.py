"""The text side of evaluation: embed prompts or captions with the store's own model, through an on-disk
cache keyed by the store's model record and the exact texts; the model is rebuilt only on a miss."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vfeat.errors import ModelError, StoreError
from vfeat.store.format import comparable_setting, same_setting, without_later_options

#: says when texts are embedded (the CLI shows it: the official prompt sets take minutes on a CPU the first time)
log = logging.getLogger("vfeat.text")


def cache_dir() -> Path:
    return Path(os.environ.get("VFEAT_CACHE_DIR", Path.home() / ".cache" / "vfeat")) / "text"


class TextTower:
    """The text side of the model that wrote a store, loaded the first time a text is not in the cache.

    Evaluating the same texts with the same model again (another store, split or sampling rate) then
    reads their embeddings from the cache and loads no model at all, nor torch: seconds per run, most of
    it for a large model. The cache key is the store's own model record, so it does not depend on where
    the weights are now. A ``pretrained`` file passed in is still checked against that record at once:
    a wrong file is an error, not an argument quietly left unused.
    """

    def __init__(self, attrs: dict[str, Any], device: str = "cpu", pretrained: str | None = None,
                 model_config: str | None = None, weights_dir: str | None = None) -> None:
        self.identity = _model_record(attrs)
        self._attrs, self._device, self._pretrained, self._model_config = attrs, device, pretrained, model_config
        self._weights_dir = weights_dir
        self._encoder: Any = None
        if weights_dir is not None and not Path(weights_dir).is_dir():
            raise StoreError(f"--weights-dir {weights_dir}: no such folder")
        if pretrained is not None:
            _weights_for(self.identity, pretrained)

    @property
    def encoder(self) -> Any:
        """The store's model, loaded on first use (:func:`load_store_model`)."""
        if self._encoder is None:
            self._encoder = load_store_model(self._attrs, device=self._device, pretrained=self._pretrained,
                                             model_config=self._model_config, weights_dir=self._weights_dir)
        return self._encoder

    @property
    def embed_dim(self) -> int:
        return int(self._attrs.get("embed_dim") or self.encoder.embed_dim)

    @property
    def logit_scale(self) -> float:
        """The scale the store recorded, else the model's own."""
        return float(self._attrs.get("logit_scale") or self.encoder.logit_scale)


def _model_record(attrs: dict[str, Any]) -> dict[str, Any]:
    """The store's ``model`` attribute: what rebuilds its model and keys its text cache."""
    model = dict(attrs.get("model") or {})
    if not model.get("name"):
        raise StoreError("store has no model attribute: not written by vfeat extract?")
    return model


def _where_now(recorded: str | None, weights_dir: str | None) -> str | None:
    """A file the store's record names: where it was, or the file of that name in ``weights_dir`` (the
    folder the user moved the weights to) when it is no longer there."""
    if not recorded or Path(recorded).is_file() or weights_dir is None:
        return recorded
    moved = Path(weights_dir) / Path(recorded).name
    return str(moved) if moved.is_file() else recorded


def _weights_for(model: dict[str, Any], pretrained: str | None, weights_dir: str | None = None) -> str | None:
    """The weights to rebuild the store's model from: its recorded ones, or ``pretrained`` where they
    moved (or the file of that name in ``weights_dir``), which must be the same file (by sha256) or, for a
    tag, the same tag."""
    stored = model.get("pretrained")
    weights = pretrained or stored
    if model.get("checkpoint_sha256"):
        from vfeat.models.weights import sha256_file

        if pretrained is None:
            weights = _where_now(stored, weights_dir)
        if not weights or not Path(weights).is_file():
            raise StoreError(
                f"the store's weights {stored} are not on this machine; pass the same file with --pretrained PATH "
                "(or the folder that holds the store's weight files with --weights-dir DIR)"
            )
        if sha256_file(weights) != model["checkpoint_sha256"]:
            raise StoreError(
                f"--pretrained {weights} is not the checkpoint the store was written with (sha256 differs from "
                f"{model['checkpoint_sha256'][:12]}...); evaluating with another model's text tower is meaningless"
            )
    elif pretrained and pretrained != stored:
        raise StoreError(f"the store was written with pretrained={stored!r}, not {pretrained!r}")
    return weights


#: weight files a model record names besides its checkpoint: the option, and the extract flag that set it
SECOND_WEIGHTS = (("wise_with", "--wise-with"), ("clip_weights", "--clip-weights"))


def load_store_model(attrs: dict[str, Any], device: str = "cpu", pretrained: str | None = None,
                     model_config: str | None = None, weights_dir: str | None = None):
    """The model that wrote the store (name + weights + options from its attributes). ``pretrained``
    points at the same weights when they moved; a different file (by sha256) is refused. ``model_config``
    points at its configuration file when that moved; the model rebuilt from it must be the recorded one.
    ``weights_dir``: the folder the store's files (checkpoint, second weights, configuration) moved to,
    found there by name; each is checked as above."""
    from vfeat.models.factory import load_model

    model = _model_record(attrs)
    name = model["name"]
    weights = _weights_for(model, pretrained, weights_dir)
    options = dict(model.get("options") or {})
    family_options = {k: options[k] for k in ("clip_weights", "patching_ratio", "weights_tag") if k in options}
    if "wise_with" in options:
        family_options.update(wise_with=options["wise_with"], alpha=options["alpha"])
    for option, flag in SECOND_WEIGHTS:
        if family_options.get(option):
            family_options[option] = _where_now(family_options[option], weights_dir)
            if not Path(family_options[option]).is_file():
                raise StoreError(f"the store's {flag} weights {options[option]} are not on this machine; pass the "
                                 "folder that holds them with --weights-dir DIR (the same file, checked by sha256)")
    config = model_config or _where_now(options.get("model_config") or options.get("config_path"), weights_dir)
    if config and not Path(config).is_file():
        raise StoreError(f"the store's model configuration {config} is not on this machine; pass it with --model-config PATH "
                         "(or the folder that holds it with --weights-dir DIR)")
    encoder = load_model(name, weights, config=config, device=device, precision="fp32", towers="text", **family_options)
    _check_rebuilt(model, encoder.identity.as_dict())
    return encoder


def _check_rebuilt(recorded: dict[str, Any], rebuilt: dict[str, Any]) -> None:
    """The model rebuilt from the record must be the one that wrote the store: a configuration file edited
    since (quick_gelu, a width) would embed the texts with another model without a word."""
    if same_setting("model", recorded, rebuilt):
        return
    want = comparable_setting("model", without_later_options(recorded, rebuilt))
    got = comparable_setting("model", without_later_options(rebuilt, recorded))
    want_options, got_options = dict(want.get("options") or {}), dict(got.get("options") or {})
    differ = sorted(k for k in set(want_options) | set(got_options) if want_options.get(k) != got_options.get(k))
    differ += sorted(k for k in set(want) | set(got) if k != "options" and want.get(k) != got.get(k))
    raise StoreError(f"the model rebuilt from the store's record differs from the one that wrote it ({', '.join(differ)}): "
                     "a configuration or weight file changed since the extraction?")


def _key(identity: dict[str, Any], texts: Sequence[str]) -> str:
    blob = json.dumps({"model": identity, "texts": list(texts)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def embed_texts(tower: TextTower, texts: Sequence[str], batch: int = 256, use_cache: bool = True) -> np.ndarray:
    """L2-normalised text embeddings [N, D] (float32), cached on disk per model and text list."""
    path = cache_dir() / f"{_key(tower.identity, texts)}.npy"
    if use_cache and path.is_file():
        return np.load(path)
    import torch

    encoder = tower.encoder
    log.info("embedding %d text(s) with the text tower of %s (cached for later runs)", len(texts), tower.identity["name"])
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            try:
                emb = encoder.encode_text(list(texts[start:start + batch])).float()
            except IndexError as exc:  # an embedding lookup past the vocabulary
                raise ModelError(f"the text tower of {tower.identity['name']} cannot embed these texts: a token falls "
                                 f"outside its vocabulary ({exc}); its configuration does not fit the standard CLIP "
                                 "tokenizer") from None
            chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
    out = np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out


def class_embeddings(tower: TextTower, prompts: list[list[str]]) -> np.ndarray:
    """Prompt ensembling: per class, the mean of its L2-normalised template embeddings, renormalised."""
    if not prompts:
        return np.zeros((0, tower.embed_dim), np.float32)
    per_class = len(prompts[0])
    flat = [p for row in prompts for p in row]
    emb = embed_texts(tower, flat).reshape(len(prompts), per_class, -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)
