"""Reading weight files in every format the field ships, in one place.

Formats: OpenAI's TorchScript archive (``ViT-B-32.pt``), a plain state dict, a dict wrapping one under
``state_dict`` / ``model_state`` / ``model`` (open_clip training checkpoints, Open-VCLIP SWA files), and
safetensors. Key prefixes added by wrappers (``module.``, ``model.``) are stripped by the caller that
knows which prefix its format uses, via :func:`strip_prefix`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from vfeat.errors import ModelError

#: Integer entries OpenAI's archives carry beside the weights; never parameters.
OPENAI_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")

_WRAPPER_KEYS = ("state_dict", "model_state", "model", "module")

#: the ``torch.nn.init`` functions that draw random weights (the constant ones cost nothing)
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                 "xavier_normal_", "orthogonal_", "sparse_")


#: sha256 of the files hashed in this process, by (path, inode, size, modification and change times): evaluation
#: checks a weight file's hash before loading it, and the load records it again (~1 s for ViT-L/14)
_hashed: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (weight files are GBs); once per process while the file is unchanged."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _hashed:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
        _hashed[key] = digest.hexdigest()
    return _hashed[key]


def recorded_path(path: str | None) -> str | None:
    """A local file as a store records it: absolute, so that evaluation finds it from any folder (``./b32.pt``
    means nothing elsewhere). Tags, URLs, ``"none"`` and ``None`` are kept as they are."""
    if path is None or path == "none" or "://" in str(path) or not os.path.exists(path):
        return path
    return os.path.abspath(path)


def require_weight_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path; :class:`ModelError` naming it when it is not a file (missing, or a directory)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: {'a directory, not a weight file' if path.is_dir() else 'weight file not found'}")
    return path


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder (plain ``torch.save`` zips have none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """Build a model without drawing random weights that a checkpoint will overwrite: open_clip draws all
    428M of ViT-L/14's at random (2.4 s on 2 cores) before a strict load replaces every one. Inside, the
    ``torch.nn.init`` functions that draw leave their tensor as it is (allocated, not initialised), so the
    caller must then load a state dict strictly (:func:`load_strict`, open_clip's ``load_checkpoint``):
    a strict load covers every parameter and persistent buffer. Buffers a module computes itself (attention
    masks, position ids) are built as usual. Not for use while another thread builds a random model."""
    import torch.nn.modules.activation
    import torch.nn.modules.transformer

    originals = {name: getattr(torch.nn.init, name) for name in _RANDOM_INITS if hasattr(torch.nn.init, name)}
    # the module that holds each name: torch.nn.init, and modules that imported one by name (MultiheadAttention's)
    patched = [(module, name, function) for module in (torch.nn.init, torch.nn.modules.activation, torch.nn.modules.transformer)
               for name, function in originals.items() if getattr(module, name, None) is function]

    def leave(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    try:
        for module, name, _ in patched:
            setattr(module, name, leave)
        yield
    finally:
        for module, name, function in patched:
            setattr(module, name, function)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the tensors of a weight file, whatever the wrapper, on the CPU, dtypes as stored.

    Raises :class:`ModelError` naming the file when it is missing or holds no state dict.
    """
    path = require_weight_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        if is_torchscript_archive(path):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, but it is the format
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        obj = _torch_load(path)
    except ModelError:
        raise
    except Exception as exc:  # torch raises many types for a bad file; name the file and the cause
        raise ModelError(f"{path}: could not read weights ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, path)


def _torch_load(path: Path) -> object:
    """A zip-format file (every torch.save since 1.6) is mapped, not read: its tensors are copied once, into
    the model, instead of twice (2.7 s for ViT-L/14's 1.7 GB on 2 cores). Read whole where mapping fails (a
    file system that cannot map files)."""
    if zipfile.is_zipfile(path):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        except (OSError, RuntimeError):
            pass
    return torch.load(str(path), map_location="cpu", weights_only=False)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, torch.nn.Module)):
                return _unwrap(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelError(f"{path}: no state dict found (expected tensors, or a dict with one of {_WRAPPER_KEYS})")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from every key that has it (keys without it are kept as they are)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def drop_archive_extras(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the integer metadata entries of OpenAI archives."""
    return {k: v for k, v in state_dict.items() if k not in OPENAI_ARCHIVE_EXTRAS}


def under_prefixes(key: str, prefixes: Sequence[str]) -> bool:
    """``key`` is one of ``prefixes`` or inside one (``visual`` holds ``visual.conv1.weight``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                skip: Sequence[str] = ()) -> None:
    """``load_state_dict(strict=True)`` with a message that names the missing, unexpected and misshapen
    keys (a few of each) and the file they came from. Keys under a ``skip`` prefix (a tower the caller drops
    next) are neither loaded nor required, in the module or the file; every other key is, strictly."""

    own = {k: v for k, v in module.state_dict().items() if not under_prefixes(k, skip)}
    state_dict = {k: v for k, v in state_dict.items() if not under_prefixes(k, skip)}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshapen:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise ModelError(f"{source}: weights do not fit the architecture; " + "; ".join(parts))
    with torch.no_grad():  # not strict only about the skipped keys: every other one was checked above
        module.load_state_dict(state_dict, strict=not skip)


def interpolate_state_dicts(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], alpha: float, source: str = "WiSE"
) -> dict[str, torch.Tensor]:
    """WiSE-FT weight-space interpolation: ``(1 - alpha) * first + alpha * second`` for floating tensors
    (in fp32), integer tensors taken from ``first``. Keys and shapes must match exactly."""
    if not 0.0 <= alpha <= 1.0:
        raise ModelError(f"Invalid --alpha ({alpha}). It must be in [0, 1].")
    only_first = sorted(set(first) - set(second))
    only_second = sorted(set(second) - set(first))
    if only_first or only_second:
        raise ModelError(
            f"{source}: checkpoints are not compatible: {len(only_first)} keys only in the first "
            f"({', '.join(only_first[:3])}), {len(only_second)} only in the second ({', '.join(only_second[:3])})"
        )
    mixed: dict[str, torch.Tensor] = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise ModelError(f"{source}: {key} has shape {tuple(a.shape)} in one checkpoint, {tuple(b.shape)} in the other")
        if a.is_floating_point():
            mixed[key] = (1.0 - alpha) * a.float() + alpha * b.float()
        else:
            mixed[key] = a
    return mixed
