"""vfeat: videos to per-frame CLIP-family embeddings on disk, and zero-shot evaluation from that cache.

Front doors: :func:`extract`, :func:`load_model`, :func:`list_models`, :func:`open_store`, and
:func:`vfeat.evaluate.evaluate` for zero-shot results from a store.
"""

__version__ = "0.1.0"

from vfeat.errors import DecodeError, InputError, ModelError, StoreError, VfeatError  # noqa: E402


def __getattr__(name: str):
    # Lazy front doors: `import vfeat` stays cheap (no torch) for store readers and the CLI's --help.
    if name == "extract":
        from vfeat.extractor import extract

        return extract
    if name == "load_model":
        from vfeat.models.factory import load_model

        return load_model
    if name == "list_models":
        from vfeat.models.registry import list_models

        return list_models
    if name == "open_store":
        from vfeat.store.reader import open_store

        return open_store
    raise AttributeError(f"module 'vfeat' has no attribute {name!r}")


__all__ = ["extract", "load_model", "list_models", "open_store", "VfeatError", "InputError", "DecodeError", "ModelError", "StoreError"]
