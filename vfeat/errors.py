"""Errors meant for people: each message names the thing (file, flag, key) and the reason."""


class VfeatError(Exception):
    """Base class: anything vfeat raises on purpose. The CLI prints these as one line, never a traceback."""


class InputError(VfeatError):
    """A user-supplied value is wrong: a path, a flag, a config key, a task file."""


class DecodeError(VfeatError):
    """A video could not be opened or decoded. Recorded per video; the run goes on."""


class ModelError(VfeatError):
    """A model could not be built or its weights could not be loaded."""


class StoreError(VfeatError):
    """A feature store is missing, damaged, or incompatible with the requested run."""


class WorkerError(VfeatError, RuntimeError):
    """No decode process is left for the videos still queued (they died before taking one: processes that
    cannot start, or a signal): the run stops, what was stored stays, and rerunning the
    same command resumes. One that dies *while* decoding a video only fails that video."""
