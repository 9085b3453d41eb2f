"""Evaluation tasks as data: configs/tasks/<name>.yaml, loaded into a Task. No torch here.

Task file schema (unknown keys are refused, naming the key and the file):

    name: ucf101                      # required; the file's stem by convention
    type: classification              # classification | retrieval | multiple_choice
    description: ...                  # one line for people
    source: ...                       # where the class list / split comes from (official URL as text)
    notes: ...                        # optional free text
    labels:                           # classification: how a stored video id gets its label
      from: filename                  #   filename | parent_folder | csv
      pattern: 'v_(?P<label>[A-Za-z]+)_g\\d+_c\\d+'   # filename only: a regex with a (?P<label>...) group,
                                      #   searched in the file name (not the folders)
    classes: [ApplyEyeMakeup, ...]    # classification: official label strings, official order, no duplicates
    class_text: {ApplyEyeMakeup: apply eye makeup}   # optional overrides of the derived readable text
    templates: ["a video of a person {}.", ...]      # classification: each with exactly one {}
    captions:                         # retrieval / multiple_choice: the expected annotation file
      format: msrvtt_jsfusion_csv     #   a key of vfeat.evaluate.annotations.READERS (or multiple_choice_csv)
      file: MSRVTT_JSFUSION_test.csv  #   the official file name (informational)
      strip_prefix: v_                #   optional, passed to match_ids
      subset: validation              #   optional reader options (YouCook2)
      level: clip

Label strings are matched to classes after normalisation (match_key): case, spaces, underscores, hyphens,
'+', parentheses and apostrophes do not matter, so 'petting_animal_(not_cat)', mmaction2's
'petting_animal_-not_cat-' and 'petting animal (not cat)' are the same class. Two classes of one task that
normalise to the same key are refused.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import yaml

from vfeat._resources import config_dir
from vfeat.errors import InputError
from vfeat.evaluate.annotations import READERS, examples, match_ids

TASKS_DIR = config_dir("tasks")  # $VFEAT_CONFIG_DIR/tasks when set
TASK_TYPES = ("classification", "retrieval", "multiple_choice")
LABEL_SOURCES = ("filename", "parent_folder", "csv")
CAPTION_FORMATS = tuple(sorted(READERS)) + ("multiple_choice_csv",)
DEFAULT_TEMPLATES = ("a video of {}.",)

_TOP_KEYS = {"name", "type", "description", "source", "notes", "labels", "classes", "class_text", "templates",
             "captions"}
_LABEL_KEYS = {"from", "pattern"}
_CAPTION_KEYS = {"format", "file", "strip_prefix", "subset", "level"}


def class_text(label: str) -> str:
    """Readable text for a label string: CamelCase, '_' and '+' split, lowercased, spaces collapsed.

    'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo', 'air_drumming' -> 'air drumming',
    'adult+female+singing' -> 'adult female singing'. Parentheses and apostrophes are kept.
    """
    s = re.sub(r"[_+]", " ", label)
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", s)
    return " ".join(s.lower().split())


def match_key(label: str) -> str:
    """Normalised key used to compare label strings (see the module docstring)."""
    s = re.sub(r"['\u2019\"]", "", label.lower())
    return re.sub(r"[^0-9a-z]+", "", s)


@dataclass(frozen=True)
class Task:
    """One evaluation task, as read from its YAML file (or built from --classes/--templates files)."""
    name: str
    type: str
    description: str = ""
    source: str = ""
    notes: str = ""
    labels: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    class_text: dict = field(default_factory=dict)
    templates: tuple[str, ...] = ()
    captions: dict = field(default_factory=dict)
    path: Path | None = None

    def texts(self) -> list[str]:
        """Readable text per class, in class order (overrides from class_text, else derived)."""
        return [self.class_text.get(c) or class_text(c) for c in self.classes]

    def prompts(self) -> list[list[str]]:
        """For each class, every template filled with its readable text: [C][T] strings."""
        return [[t.replace("{}", text) for t in self.templates] for text in self.texts()]

    def class_index(self) -> dict[str, int]:
        """match_key(class) -> class index."""
        return {match_key(c): i for i, c in enumerate(self.classes)}


def _where(path) -> str:
    return f"task file {path}" if path else "task"


def _check_templates(templates, where: str) -> tuple[str, ...]:
    if not isinstance(templates, (list, tuple)) or not templates:
        raise InputError(f"{where}: 'templates' must be a non-empty list of strings with one {{}} each.")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise InputError(f"{where}: template {t!r} must contain exactly one {{}} (where the class text goes).")
    dup = [t for i, t in enumerate(templates) if t in templates[:i]]
    if dup:
        raise InputError(f"{where}: duplicate templates: {examples(dup)}.")
    return tuple(templates)


def _check_classes(classes, where: str) -> tuple[str, ...]:
    if not isinstance(classes, (list, tuple)) or not classes:
        raise InputError(f"{where}: 'classes' must be a non-empty list of label strings.")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"{where}: class labels must be non-empty strings, got {examples(map(repr, bad))}.")
    seen: dict[str, str] = {}
    dups = []
    for c in classes:
        k = match_key(c)
        if k in seen:
            dups.append(c if seen[k] == c else f"{seen[k]!r} ~ {c!r}")
        seen[k] = c
    if dups:
        raise InputError(f"{where}: duplicate classes: {examples(dups)}.")
    return tuple(classes)


def _check_keys(d, allowed: set, where: str, section: str = "") -> None:
    if not isinstance(d, dict):
        raise InputError(f"{where}: {section or 'the file'} must be a mapping.")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}{' in ' + section if section else ''}; "
                         f"allowed keys: {', '.join(sorted(allowed))}.")


def task_from_dict(data: dict, path: Path | None = None) -> Task:
    """Validate a task mapping (as parsed from YAML) and build the Task."""
    where = _where(path)
    _check_keys(data, _TOP_KEYS, where)
    for key in ("name", "type"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise InputError(f"{where}: '{key}' is required and must be a string.")
    if data["type"] not in TASK_TYPES:
        raise InputError(f"{where}: unknown type {data['type']!r}; choose one of {', '.join(TASK_TYPES)}.")
    kw = {k: data[k] for k in ("name", "type") if k in data}
    kw.update({k: str(data.get(k) or "").strip() for k in ("description", "source", "notes")})
    if data["type"] == "classification":
        kw["classes"] = _check_classes(data.get("classes"), where)
        kw["templates"] = _check_templates(data.get("templates", list(DEFAULT_TEMPLATES)), where)
        labels = data.get("labels", {"from": "parent_folder"})
        _check_keys(labels, _LABEL_KEYS, where, "labels")
        if labels.get("from") not in LABEL_SOURCES:
            raise InputError(f"{where}: labels.from must be one of {', '.join(LABEL_SOURCES)}, got {labels.get('from')!r}.")
        if labels["from"] == "filename":
            try:
                rx = re.compile(labels.get("pattern") or "")
            except re.error as e:
                raise InputError(f"{where}: labels.pattern is not a valid regex ({e}).") from None
            if "label" not in rx.groupindex:
                raise InputError(f"{where}: labels.pattern must contain a named group (?P<label>...).")
        kw["labels"] = dict(labels)
        overrides = data.get("class_text") or {}
        if not isinstance(overrides, dict):
            raise InputError(f"{where}: class_text must map class labels to text.")
        unknown = [k for k in overrides if k not in kw["classes"]]
        if unknown:
            raise InputError(f"{where}: class_text names labels that are not classes: {examples(unknown)}.")
        kw["class_text"] = dict(overrides)
    else:
        for key in ("classes", "templates", "labels", "class_text"):
            if key in data:
                raise InputError(f"{where}: '{key}' only applies to classification tasks, not {data['type']}.")
        caps = data.get("captions")
        _check_keys(caps, _CAPTION_KEYS, where, "captions")
        if caps.get("format") not in CAPTION_FORMATS:
            raise InputError(f"{where}: captions.format must be one of {', '.join(CAPTION_FORMATS)}, "
                             f"got {caps.get('format')!r}.")
        kw["captions"] = dict(caps)
    return Task(path=path, **kw)


def list_tasks(tasks_dir: Path | str | None = None) -> list[str]:
    """Names of the task files in configs/tasks/ (sorted)."""
    d = Path(tasks_dir) if tasks_dir else TASKS_DIR
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_task(name_or_path: str | Path, tasks_dir: Path | str | None = None) -> Task:
    """Load a task by name (configs/tasks/<name>.yaml) or from a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise InputError(f"Task file {p} does not exist.")
    else:
        names = list_tasks(tasks_dir)
        if str(name_or_path) not in names:
            close = difflib.get_close_matches(str(name_or_path), names, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise InputError(f"Unknown task {str(name_or_path)!r}.{hint} Known tasks: {', '.join(names)}; "
                             f"or pass a path to a task YAML file.")
        p = (Path(tasks_dir) if tasks_dir else TASKS_DIR) / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"task file {p}: not valid YAML ({e}).") from None
    return task_from_dict(data, p)


def _read_lines(path, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist.")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise InputError(f"{what} file {p} is empty; put one entry per line.")
    return lines


def _numbered_or_plain(lines: list[str]) -> list[str]:
    """Class names, one a line; a numbered list as UCF101's classInd.txt ("1 ApplyEyeMakeup"), where every
    line starts with its number, gives its names in that order."""
    numbered = [ln.split(maxsplit=1) for ln in lines]
    if all(len(parts) == 2 and parts[0].isdigit() for parts in numbered):
        return [name.strip() for _, name in sorted(numbered, key=lambda parts: int(parts[0]))]
    return lines


def task_from_files(classes_path=None, templates_path=None, base: Task | None = None,
                    name: str = "custom") -> Task:
    """A classification Task from --classes (one label per line) and/or --templates (one per line, each
    with {}) files, replacing those parts of `base` when given (else labels come from parent folders and
    the template is 'a video of {}.')."""
    where_c = f"--classes file {classes_path}"
    where_t = f"--templates file {templates_path}"
    if base is not None and base.type != "classification":
        raise InputError(f"--classes/--templates only apply to classification tasks; {base.name} is {base.type}.")
    task = base or Task(name=name, type="classification", labels={"from": "parent_folder"},
                        templates=DEFAULT_TEMPLATES, description="custom classes")
    if classes_path is not None:
        classes = _check_classes(_numbered_or_plain(_read_lines(classes_path, "--classes")), where_c)
        task = replace(task, classes=classes, class_text={k: v for k, v in task.class_text.items() if k in classes},
                       source=str(classes_path))
    if templates_path is not None:
        task = replace(task, templates=_check_templates(_read_lines(templates_path, "--templates"), where_t))
    if not task.classes:
        raise InputError("A custom task needs --classes (a file with one class label per line).")
    return task


@dataclass
class LabelReport:
    """What labels_for found: how many videos got a label, which did not and why, and which rows of a
    labels CSV name no stored video (counted and reported, never dropped silently)."""
    num_videos: int
    num_labeled: int
    unlabeled: list[str] = field(default_factory=list)     # video ids without a label
    unknown_labels: dict[str, int] = field(default_factory=dict)  # extracted label -> count, not a class
    without_video: list[str] = field(default_factory=list)  # labels CSV ids that match no stored video

    def summary(self) -> str:
        msg = f"labeled {self.num_labeled} of {self.num_videos} videos"
        if self.unlabeled:
            msg += f"; {len(self.unlabeled)} without a label (e.g. {examples(self.unlabeled)})"
        if self.unknown_labels:
            msg += f"; labels not in the class list: {examples(f'{k!r} x{v}' for k, v in self.unknown_labels.items())}"
        if self.without_video:
            msg += (f"; {len(self.without_video)} labeled videos are not in the store "
                    f"(e.g. {examples(self.without_video)})")
        return msg


def _parts(video_id: str) -> list[str]:
    return list(PurePosixPath(str(video_id).replace("\\", "/")).parts)


def _read_labels_csv(path) -> dict[str, str]:
    """video_id,label CSV, or an official Kinetics CSV (label,youtube_id,time_start,time_end,...), whose
    ids become '<youtube_id>_<start:06d>_<end:06d>' as in the usual downloads."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Labels CSV {p} does not exist.")
    reader = csv.DictReader(io.StringIO(p.read_text(encoding="utf-8-sig"), newline=""))
    rows = list(reader)
    header = set(reader.fieldnames or [])
    out: dict[str, str] = {}
    for i, r in enumerate(rows, 2):
        if {"video_id", "label"} <= header:
            vid = r["video_id"]
        elif {"label", "youtube_id", "time_start", "time_end"} <= header:
            try:
                vid = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
            except ValueError:
                raise InputError(f"{p} row {i}: time_start/time_end must be numbers.") from None
        else:
            raise InputError(f"{p}: expected a header 'video_id,label' (or an official Kinetics CSV with "
                             f"label,youtube_id,time_start,time_end); got {', '.join(sorted(header)) or 'no rows'}.")
        vid, label = (vid or "").strip(), (r["label"] or "").strip()
        if not vid or not label:
            raise InputError(f"{p} row {i}: empty video id or label.")
        if vid in out and out[vid] != label:
            raise InputError(f"{p}: video {vid!r} has two labels ({out[vid]!r}, {label!r}).")
        out[vid] = label
    if not out:
        raise InputError(f"{p}: no rows.")
    return out


def labels_for(task: Task, video_ids: Iterable[str], labels_csv=None) -> tuple[np.ndarray, LabelReport]:
    """Class index per stored video id (-1 when unlabeled), and a report of what did not match on either
    side (stored videos without a label, labels CSV rows without a stored video).

    By labels_csv when given (ids matched exactly or by file stem, see annotations.match_ids), else by the
    task's labels.from: 'filename' searches labels.pattern in the file name; 'parent_folder' takes the
    nearest enclosing folder whose name is a class.
    """
    if task.type != "classification":
        raise InputError(f"Task {task.name} is a {task.type} task; labels only apply to classification.")
    ids = [str(v) for v in video_ids]
    index = task.class_index()
    labels = np.full(len(ids), -1, dtype=np.int64)
    unknown: dict[str, int] = {}
    without_video: list[str] = []
    source = "csv" if labels_csv is not None else task.labels.get("from", "parent_folder")
    if source == "csv":
        if labels_csv is None:
            raise InputError(f"Task {task.name} takes labels from a CSV: pass --labels FILE (video_id,label).")
        table = _read_labels_csv(labels_csv)
        match = match_ids(table, ids)
        without_video = match.unmatched_annotations
        inverse = {s: a for a, s in match.mapping.items()}
        raw = [table.get(inverse.get(v, "\0")) for v in ids]
    elif source == "filename":
        rx = re.compile(task.labels["pattern"])
        found = [rx.search(_parts(v)[-1]) if _parts(v) else None for v in ids]
        raw = [m.group("label") if m else None for m in found]
    else:
        raw = []
        for v in ids:
            folders = _parts(v)[:-1]
            hit = next((f for f in reversed(folders) if match_key(f) in index), None)
            raw.append(hit if hit is not None else (folders[-1] if folders else None))
    for i, lab in enumerate(raw):
        if lab is None:
            continue
        k = match_key(lab)
        if k in index:
            labels[i] = index[k]
        else:
            unknown[lab] = unknown.get(lab, 0) + 1
    unlabeled = [v for v, y in zip(ids, labels) if y < 0]
    return labels, LabelReport(len(ids), int((labels >= 0).sum()), unlabeled, unknown, without_video)
