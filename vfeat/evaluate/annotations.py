"""Readers for caption / question annotation files, and matching of annotation ids to stored video ids.

Every caption reader returns a list of (video_id, caption) pairs in file order; a video may have several
captions. Paragraph-level datasets (DiDeMo, ActivityNet Captions) join a video's sentences into one
caption, as the video-retrieval papers (CLIP4Clip, CLIP-ViP) do. Each expected file is described in
docs/evaluate.md, "Annotation files". Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np

from vfeat.errors import InputError

Pair = tuple[str, str]


def _read_text(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Annotation file {p} does not exist (or is not a file).")
    return p.read_text(encoding="utf-8-sig")


def _load_json(path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}).") from None


def _csv_rows(path, required: Iterable[str], delimiter: str = ",") -> list[dict]:
    """The rows of a CSV file with a header; a quoted field may span lines (a caption with a line break)."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    rows = list(reader)
    header = list(reader.fieldnames or [])
    missing = [c for c in required if c not in header]
    if missing or not rows:
        raise InputError(f"{path}: expected a header with columns {', '.join(required)} and at least one row; "
                         f"missing {', '.join(missing) or 'rows'} (header: {', '.join(header) or 'none'}).")
    return rows


def _clean(text, where: str) -> str:
    if text is None or not str(text).strip():
        raise InputError(f"{where}: empty caption.")
    return " ".join(str(text).split())


def read_generic(path) -> list[Pair]:
    """CSV with header `video_id,caption` (other columns ignored), or JSONL of {"video_id", "caption"}."""
    if str(path).lower().endswith((".jsonl", ".ndjson")):
        pairs = []
        for i, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path} line {i}: not valid JSON ({e.msg}).") from None
            if not isinstance(rec, dict) or "video_id" not in rec or "caption" not in rec:
                raise InputError(f"{path} line {i}: expected an object with keys video_id and caption.")
            pairs.append((str(rec["video_id"]), _clean(rec["caption"], f"{path} line {i}")))
        if not pairs:
            raise InputError(f"{path}: no captions found.")
        return pairs
    if str(path).lower().endswith(".json"):
        raise InputError(f"{path}: a JSON file. --captions without a task reads a CSV (video_id,caption) or a JSONL "
                         "file; a dataset's own annotation file is read with its task (--task didemo, activitynet, "
                         "youcook2, ...: configs/tasks/).")
    rows = _csv_rows(path, ("video_id", "caption"))
    return [(r["video_id"].strip(), _clean(r["caption"], f"{path} row {i}")) for i, r in enumerate(rows, 2)]


def read_msrvtt_jsfusion(path) -> list[Pair]:
    """MSR-VTT 1k-A test CSV (MSRVTT_JSFUSION_test.csv): header key,vid_key,video_id,sentence."""
    rows = _csv_rows(path, ("video_id", "sentence"))
    return [(r["video_id"].strip(), _clean(r["sentence"], f"{path} row {i}")) for i, r in enumerate(rows, 2)]


def _paragraphs(items: Iterable[tuple[str, str]]) -> list[Pair]:
    """Join sentences per video with single spaces, videos in order of first appearance."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for vid, sentence in items:
        grouped[vid].append(sentence)
    return [(vid, " ".join(sents)) for vid, sents in grouped.items()]


def read_didemo(path) -> list[Pair]:
    """DiDeMo test_data.json: a list of {video, description, times, ...}; one paragraph per video.

    The paragraph is the video's descriptions in file order joined with spaces (paragraph-to-video
    retrieval as in CLIP4Clip). The id is the `video` field, which includes the original extension.
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {{video, description}} objects (DiDeMo test_data.json).")
    items = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "video" not in rec or "description" not in rec:
            raise InputError(f"{path}: entry {i} lacks the 'video' or 'description' key.")
        items.append((str(rec["video"]), _clean(rec["description"], f"{path} entry {i}")))
    return _paragraphs(items)


def read_activitynet(path) -> list[Pair]:
    """ActivityNet Captions val_1.json: {video_id: {duration, timestamps, sentences}}; one paragraph per video.

    Ids keep the file's `v_` prefix; match_ids(..., strip_prefix="v_") also finds videos stored without it.
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object {{video_id: {{sentences: [...]}}}} (ActivityNet val_1.json).")
    items = []
    for vid, rec in data.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("sentences"), list) or not rec["sentences"]:
            raise InputError(f"{path}: video {vid} has no 'sentences' list.")
        items.extend((vid, _clean(s, f"{path} video {vid}")) for s in rec["sentences"])
    return _paragraphs(items)


@dataclass(frozen=True)
class Segment:
    """One annotated YouCook2 segment: clip_id is '<youtube_id>_<segment index in the video>'."""
    video_id: str
    clip_id: str
    start_s: float
    end_s: float
    caption: str


def read_youcook2_segments(path, subset: str = "validation") -> list[Segment]:
    """YouCook2 youcookii_annotations_trainval.json: database -> {id: {subset, annotations: [{segment, sentence}]}}."""
    data = _load_json(path)
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise InputError(f"{path}: expected a JSON object with a 'database' mapping (youcookii_annotations_trainval.json).")
    subsets = sorted({str(v.get("subset")) for v in db.values() if isinstance(v, dict)})
    if subset not in subsets:
        raise InputError(f"{path}: no video in subset {subset!r}; subsets present: {', '.join(subsets) or 'none'}.")
    out = []
    for vid, rec in db.items():
        if rec.get("subset") != subset:
            continue
        for j, ann in enumerate(rec.get("annotations") or []):
            seg = ann.get("segment") or [None, None]
            out.append(Segment(vid, f"{vid}_{j}", float(seg[0]), float(seg[1]),
                               _clean(ann.get("sentence"), f"{path} video {vid} segment {j}")))
    return out


def read_youcook2(path, subset: str = "validation", level: str = "clip") -> list[Pair]:
    """YouCook2 captions. level='clip': one (clip_id, sentence) per segment (clips stored as
    '<youtube_id>_<index>'); level='paragraph': one (youtube_id, joined sentences) per video."""
    segs = read_youcook2_segments(path, subset)
    if level == "clip":
        return [(s.clip_id, s.caption) for s in segs]
    if level == "paragraph":
        return _paragraphs((s.video_id, s.caption) for s in segs)
    raise InputError(f"Invalid YouCook2 level ({level!r}). Choose 'clip' or 'paragraph'.")


def read_lsmdc(path) -> list[Pair]:
    """LSMDC16 tab-separated file without header: clip_id, start_aligned, end_aligned, start_extracted,
    end_extracted, sentence (LSMDC16_challenge_1000_publictect.csv)."""
    pairs = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 5)
        if len(parts) != 6:
            raise InputError(f"{path} line {i}: expected 6 tab-separated fields (clip_id, 4 times, sentence), "
                             f"got {len(parts)}.")
        pairs.append((parts[0].strip(), _clean(parts[5], f"{path} line {i}")))
    if not pairs:
        raise InputError(f"{path}: no captions found.")
    return pairs


def read_webvid(path) -> list[Pair]:
    """WebVid results_2M_val.csv: header videoid,contentUrl,duration,page_dir,name; caption = name."""
    rows = _csv_rows(path, ("videoid", "name"))
    return [(r["videoid"].strip(), _clean(r["name"], f"{path} row {i}")) for i, r in enumerate(rows, 2)]


READERS: dict[str, Callable[..., list[Pair]]] = {
    "generic": read_generic,
    "msrvtt_jsfusion_csv": read_msrvtt_jsfusion,
    "didemo_json": read_didemo,
    "activitynet_captions_json": read_activitynet,
    "youcook2_json": read_youcook2,
    "lsmdc_csv": read_lsmdc,
    "webvid_csv": read_webvid,
}


def read_captions(path, format: str = "generic", **options) -> list[Pair]:
    """Read a caption file with the reader named by `format` (a key of READERS); options go to the reader."""
    if format not in READERS:
        raise InputError(f"Unknown caption format {format!r}. Choose one of: {', '.join(sorted(READERS))}.")
    try:
        return READERS[format](path, **options)
    except TypeError as e:
        raise InputError(f"Caption format {format!r} does not take these options ({', '.join(options)}): {e}.") from None


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: candidates in file order, answer is a 0-based index into them."""
    video_id: str
    candidates: tuple[str, ...]
    answer: int


def read_multiple_choice(path) -> list[Question]:
    """CSV with header video_id,candidate_1,...,candidate_N,answer_index (answer_index is 0-based:
    0 means candidate_1). Trailing empty candidate cells are allowed for questions with fewer candidates."""
    rows = _csv_rows(path, ("video_id", "answer_index"))
    cand_cols = sorted((c for c in rows[0] if re.fullmatch(r"candidate_\d+", c or "")), key=lambda c: int(c[10:]))
    if not cand_cols:
        raise InputError(f"{path}: no candidate_1..candidate_N columns in the header.")
    out = []
    for i, r in enumerate(rows, 2):
        cands = [(r[c] or "").strip() for c in cand_cols]
        while cands and not cands[-1]:
            cands.pop()
        if not cands or any(not c for c in cands):
            raise InputError(f"{path} row {i}: candidates must be non-empty (only trailing cells may be blank).")
        try:
            ans = int(r["answer_index"])
        except (TypeError, ValueError):
            raise InputError(f"{path} row {i}: answer_index {r['answer_index']!r} is not an integer.") from None
        if not 0 <= ans < len(cands):
            raise InputError(f"{path} row {i}: answer_index {ans} is outside 0..{len(cands) - 1} "
                             f"(it is 0-based over {len(cands)} candidates).")
        out.append(Question(r["video_id"].strip(), tuple(cands), ans))
    return out


_EXT = re.compile(r"\.[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*$")


def id_stem(video_id: str) -> str:
    """File name without directories and without a file extension ('sub/video7010.mp4' -> 'video7010').

    Only a final '.ext' of letters/digits containing a letter counts as an extension, so dotted ids such as
    LSMDC's '0001_X_00.41.32.072-00.41.40.196' keep their digits."""
    name = PurePosixPath(str(video_id).replace("\\", "/")).name
    return _EXT.sub("", name) if _EXT.search(name) and _EXT.sub("", name) else name


#: HMDB51's split files, one per class and split: ``<class>_test_split<k>.txt``
HMDB_SPLIT_FILE = re.compile(r"_test_split\d+\.txt$")


def split_files(patterns: Iterable[str]) -> list[Path]:
    """The files ``--split`` names: paths, or quoted globs (HMDB51's split is 51 files)."""
    import glob

    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise InputError(f"--split {pattern}: no file matches")
        files += [Path(m) for m in matched]
    return files


def read_split(path) -> list[str]:
    """The videos a split file lists: UCF101's testlistNN.txt (``Class/v_X_g01_c01.avi``) and trainlistNN.txt
    (the same, then a class number), HMDB51's ``<class>_test_split<k>.txt`` (``name.avi 2``: 1 train, 2 test,
    0 unused; the test videos are kept), or any list of one video id per line."""
    hmdb = bool(HMDB_SPLIT_FILE.search(str(path)))
    ids = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        numbered = len(parts) == 2 and parts[1].isdigit()
        if hmdb:
            if not numbered or parts[1] not in ("0", "1", "2"):
                raise InputError(f"{path} line {i}: expected 'NAME.avi 0|1|2' (an HMDB51 split file: 1 train, 2 test)")
            if parts[1] == "2":
                ids.append(parts[0])
        else:
            ids.append(parts[0] if numbered else line.strip())
    if not ids:
        raise InputError(f"{path}: lists no {'test ' if hmdb else ''}videos")
    return ids


def examples(items, n: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


@dataclass
class IdMatch:
    """Result of match_ids: mapping annotation id -> store id, and what matched nothing on either side."""
    mapping: dict[str, str]
    unmatched_annotations: list[str] = field(default_factory=list)
    unmatched_store: list[str] = field(default_factory=list)
    num_annotation_ids: int = 0
    num_store_ids: int = 0

    def summary(self) -> str:
        msg = f"matched {len(self.mapping)} of {self.num_annotation_ids} annotated videos to stored videos"
        if self.unmatched_annotations:
            msg += (f"; {len(self.unmatched_annotations)} annotated videos are not in the store "
                    f"(e.g. {examples(self.unmatched_annotations)})")
        if self.unmatched_store:
            msg += (f"; {len(self.unmatched_store)} stored videos have no annotation "
                    f"(e.g. {examples(self.unmatched_store)})")
        return msg


def match_ids(annotation_ids: Iterable[str], store_ids: Iterable[str], strip_prefix: str = "") -> IdMatch:
    """Map annotation video ids to store video ids: by exact id, else by file stem (see id_stem), else
    (when strip_prefix is given, e.g. 'v_' for ActivityNet) by the stem without that prefix.

    A stem shared by several stored videos that an annotation needs, or two annotation ids landing on one
    stored video, is an InputError. Unmatched ids on both sides are reported, never dropped silently.
    """
    ann = list(dict.fromkeys(str(a) for a in annotation_ids))
    store = list(dict.fromkeys(str(s) for s in store_ids))
    store_set = set(store)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for s in store:
        by_stem[id_stem(s)].append(s)
    mapping: dict[str, str] = {}
    owner: dict[str, str] = {}
    unmatched = []
    for a in ann:
        if a in store_set:
            cands = [a]
        else:
            stem = id_stem(a)
            cands = by_stem.get(stem, [])
            if not cands and strip_prefix and stem.startswith(strip_prefix):
                cands = by_stem.get(stem[len(strip_prefix):], [])
        if not cands:
            unmatched.append(a)
            continue
        if len(cands) > 1:
            raise InputError(f"Annotation id {a!r} matches {len(cands)} stored videos by file stem "
                             f"({examples(cands)}); store ids must be unique per stem, or use exact ids.")
        if cands[0] in owner:
            raise InputError(f"Annotation ids {owner[cands[0]]!r} and {a!r} both match stored video {cands[0]!r}.")
        owner[cands[0]] = a
        mapping[a] = cands[0]
    return IdMatch(mapping, unmatched, [s for s in store if s not in owner], len(ann), len(store))


@dataclass
class RetrievalIndex:
    """Captions and their targets for retrieval_metrics: caption_video[i] indexes video_ids."""
    captions: list[str]
    caption_video: np.ndarray
    video_ids: list[str]
    match: IdMatch
    num_dropped_captions: int


def build_retrieval_index(pairs: list[Pair], store_ids: Iterable[str], strip_prefix: str = "",
                          require_all: bool = False) -> RetrievalIndex:
    """Turn (video_id, caption) pairs into retrieval targets over the stored videos.

    The gallery is the matched stored videos, in store order; stored videos without annotations are left
    out of the gallery and captions of videos missing from the store are dropped, both counted in the
    result (match.summary()). require_all=True makes a missing annotated video an InputError instead.
    """
    store = list(dict.fromkeys(str(s) for s in store_ids))
    match = match_ids((v for v, _ in pairs), store, strip_prefix)
    if require_all and match.unmatched_annotations:
        raise InputError("Some annotated videos are not in the store: " + match.summary())
    matched_store = set(match.mapping.values())
    video_ids = [s for s in store if s in matched_store]
    pos = {s: i for i, s in enumerate(video_ids)}
    captions, targets = [], []
    for vid, cap in pairs:
        if vid in match.mapping:
            captions.append(cap)
            targets.append(pos[match.mapping[vid]])
    if not captions:
        raise InputError("No annotated video is in the store: " + match.summary())
    return RetrievalIndex(captions, np.asarray(targets, dtype=np.int64), video_ids, match,
                          len(pairs) - len(captions))
