"""Evaluation of stored features: task files (tasks.py), annotation readers (annotations.py), numpy metrics.

Front door: :func:`evaluate` (``vfeat.evaluate.evaluate(store, "ucf101")``), loaded lazily so that the
torch-free modules of this package (metrics, tasks) stay torch-free to import.
"""


def __getattr__(name: str):
    if name == "evaluate":
        from vfeat.evaluate.run import evaluate

        return evaluate
    raise AttributeError(f"module 'vfeat.evaluate' has no attribute {name!r}")
