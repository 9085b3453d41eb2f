"""The import rules of STYLE.md: no arrow points back up the data flow. Checked twice: by importing in a fresh
interpreter (what actually gets loaded) and by reading the source (imports inside functions included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vfeat"

TORCH_FREE = [
    "vfeat.sampling",          # sampling plans are pure functions of timestamps
    "vfeat.evaluate.metrics",  # metrics are numpy over score matrices
    "vfeat.store.format",      # the documented layout
    "vfeat.store.reader",      # reading a store needs no model
    "vfeat.store.summary",     # `vfeat info`
    "vfeat.decode",            # decode workers load no model
    "vfeat.workers",
    "vfeat._spawn",            # starting decode processes needs no model
    "vfeat",                   # `import vfeat` stays cheap
]


def loaded_after_import(module: str) -> set[str]:
    code = f"import {module}, sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    return set(json.loads(out))


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    loaded = loaded_after_import(module)
    assert "torch" not in loaded, f"importing {module} loads torch"
    assert "open_clip" not in loaded


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, at any depth (``from vfeat import pipeline`` counts as vfeat.pipeline)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


STORE_FILES = sorted((PACKAGE / "store").glob("*.py"))


@pytest.mark.parametrize("path", STORE_FILES, ids=lambda p: p.name)
def test_store_never_imports_the_pipeline(path):
    names = imported_names(path)
    upward = sorted(n for n in names if n.startswith(("vfeat.pipeline", "vfeat.extractor", "vfeat.workers", "vfeat.engines")))
    assert not upward, f"{path.name} imports {upward}"


def test_importing_every_store_module_loads_no_pipeline():
    modules = [f"vfeat.store.{p.stem}" for p in STORE_FILES if p.stem != "__init__"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "bad = sorted(m for m in sys.modules if m in ('vfeat.pipeline', 'vfeat.extractor', 'torch'))\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("path", [PACKAGE / "sampling.py", PACKAGE / "evaluate" / "metrics.py", PACKAGE / "store" / "format.py"],
                         ids=lambda p: p.name)
def test_pure_modules_name_no_torch_even_lazily(path):
    names = imported_names(path)
    assert not [n for n in names if n.split(".")[0] in ("torch", "open_clip", "torchvision")]


def test_pipeline_does_not_import_engines():
    """Engines import the pipeline, not the reverse."""
    names = imported_names(PACKAGE / "pipeline.py")
    assert not [n for n in names if n.startswith("vfeat.engines")]


def test_wheel_ships_every_subpackage_and_the_configs(tmp_path):
    """A non-editable install (``pip install .``, the Docker image, a wheel) must find the task and model
    YAML: pyproject maps ``configs/`` into the wheel as ``vfeat/configs``, and lists packages explicitly."""
    import tomllib
    import zipfile

    root = PACKAGE.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vfeat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("models", "tasks"):
        for yaml_file in (root / "configs" / kind).glob("*.yaml"):
            assert f"vfeat/configs/{kind}/{yaml_file.name}" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = "import vfeat; from vfeat.evaluate.tasks import load_task; print(vfeat.__file__, len(load_task('ucf101').classes))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, count = out.stdout.split()
    assert Path(where).is_relative_to(target) and count == "101"


def test_documented_front_doors_exist():
    """vfeat/__init__.py names the Python API; each name must resolve to a callable."""
    import vfeat
    import vfeat.evaluate

    for name in ("extract", "load_model", "list_models", "open_store"):
        assert callable(getattr(vfeat, name))
    assert vfeat.evaluate.evaluate.__module__ == "vfeat.evaluate.run"
