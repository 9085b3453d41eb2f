"""`vfeat evaluate`, `predict` and `search` through the real CLI, on stores with planted structure.

Stores are written directly with ShardWriter + VideoRecord and the attributes of a real extraction
(`vfeat.extractor.store_attrs`) for a tiny model saved to a file, so evaluation rebuilds the text tower from
the store (checked by sha256). Frame features are that model's text embeddings of the class prompts
(or captions) plus noise, some frames deliberately pointing at wrong classes, and raw (scaled by random norms,
the wrong frames louder, so skipping the per-frame normalisation changes the answer).

Every number in `--json` is compared with an independent computation here: the text tower run through
open_clip itself, and metrics written as plain loops from the definitions in docs/evaluate.md (frames
normalised, mean, renormalised; prompt ensembling; pessimistic 1-based ranks; recalls in percent; v2t = best
rank among a video's captions; DSL = S * softmax(100 S) over texts; multiple choice = strict argmax).

The model is the conftest tiny architecture (tests/data/vfeat-tiny-vit.json) with its text context cut to 16
tokens, so the official prompt sets (UCF101 101 x 48, Kinetics-400 400 x 28) embed in seconds on two CPU cores,
and seeded weights (see seeded_state). The module shares one text cache directory, so each prompt set is
embedded once by vfeat and once by the reference.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import vfeat
from conftest import TINY_CONFIG
from vfeat.cli import app
from vfeat.extractor import store_attrs
from vfeat.sampling import SamplingPlan
from vfeat.store.format import VideoRecord
from vfeat.store.writer import ShardWriter

runner = CliRunner()
TASKS = Path(__file__).resolve().parents[1] / "configs" / "tasks"
ARCH = "vfeat-tiny-vit-ctx16"
CLASSIFICATION_KEYS = {"top1", "top5", "mean_class_accuracy"}
RETRIEVAL_KEYS = {f"{d}_{k}" for d in ("t2v", "v2t") for k in ("r1", "r5", "r10", "r50", "median_rank", "mean_rank")}
INFO = {"fps": 25.0, "duration_s": 4.0, "width": 96, "height": 64, "num_frames": 100, "start_time_s": 0.0, "rotation": 0}
STEP_MS = 500.0  # frames planted at 2 fps


# -- the independent side ------------------------------------------------------------------------------

class Reference:
    """The text tower without vfeat: open_clip's model and tokenizer, outputs L2-normalised in float64."""

    def __init__(self, config: Path, weights: Path) -> None:
        import open_clip

        open_clip.add_model_config(config)
        self.model = open_clip.create_model(ARCH, pretrained=None).eval()
        self.model.load_state_dict(torch.load(weights))
        self.tokenizer = open_clip.get_tokenizer(ARCH)
        self._memo: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        with torch.inference_mode():
            for start in range(0, len(todo), 512):
                chunk = todo[start:start + 512]
                emb = self.model.encode_text(self.tokenizer(chunk)).double()
                self._memo.update(zip(chunk, (emb / emb.norm(dim=-1, keepdim=True)).numpy()))
        return np.stack([self._memo[t] for t in texts])

    def classes(self, texts: list[str], templates: list[str]) -> np.ndarray:
        """Prompt ensembling: per class the mean of its normalised template embeddings, renormalised."""
        flat = [template.replace("{}", text) for text in texts for template in templates]
        mean = self.embed(flat).reshape(len(texts), len(templates), -1).mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def readable(label: str, overrides: dict) -> str:
    """docs/evaluate.md: CamelCase, '_' and '+' split, lowercased, unless the task overrides the text."""
    if label in overrides:
        return overrides[label]
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", label.replace("_", " ").replace("+", " "))
    return " ".join(spaced.lower().split())


def official(name: str) -> dict:
    """classes / texts / templates of configs/tasks/<name>.yaml, read with yaml only."""
    data = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
    overrides = data.get("class_text") or {}
    return {"classes": data["classes"], "texts": [readable(c, overrides) for c in data["classes"]],
            "templates": data["templates"], "raw": data}


def pooled(frames: np.ndarray) -> np.ndarray:
    """Video embedding: mean of L2-normalised frames, renormalised."""
    rows = frames.astype(np.float64)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    mean = rows.mean(axis=0)
    return mean / np.linalg.norm(mean)


def rank(scores: np.ndarray, right: set[int]) -> int:
    """1 + number of wrong candidates scoring >= the best right one (ties count against the answer)."""
    best = max(scores[j] for j in right)
    return 1 + sum(1 for j, s in enumerate(scores) if j not in right and s >= best)


def summary(ranks: list[int], prefix: str) -> dict:
    out = {f"{prefix}_r{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)}
    out[f"{prefix}_median_rank"] = float(statistics.median(ranks))
    out[f"{prefix}_mean_rank"] = float(statistics.fmean(ranks))
    return out


def classification_reference(videos: np.ndarray, classes: np.ndarray, labels: list[int], names: list[str]):
    scores = videos @ classes.T
    ranks = [rank(scores[i], {y}) for i, y in enumerate(labels)]
    per_class = {}
    for c, name in enumerate(names):
        mine = [r for r, y in zip(ranks, labels) if y == c]
        per_class[name] = 100.0 * sum(r == 1 for r in mine) / len(mine) if mine else None
    present = [v for v in per_class.values() if v is not None]
    metrics = {"top1": 100.0 * sum(r == 1 for r in ranks) / len(ranks),
               "top5": 100.0 * sum(r <= 5 for r in ranks) / len(ranks),
               "mean_class_accuracy": sum(present) / len(present)}
    return metrics, per_class


def retrieval_reference(texts: np.ndarray, videos: np.ndarray, caption_video: list[int], dsl: bool = False) -> dict:
    sim = texts @ videos.T  # [texts, videos]
    if dsl:
        weights = np.exp(100.0 * (sim - sim.max(axis=0, keepdims=True)))
        sim = sim * weights / weights.sum(axis=0, keepdims=True)  # each video's column, softmax over texts
    t2v = [rank(sim[q], {v}) for q, v in enumerate(caption_video)]
    v2t = [rank(sim[:, v], {q for q, w in enumerate(caption_video) if w == v}) for v in sorted(set(caption_video))]
    return {**summary(t2v, "t2v"), **summary(v2t, "v2t")}


# -- stores and the CLI ------------------------------------------------------------------------------

@dataclass
class Model:
    weights: Path
    other: Path  # another checkpoint of the same architecture
    attrs: dict
    ref: Reference

    @property
    def dim(self) -> int:
        return int(self.attrs["embed_dim"])


def seeded_state(config: Path) -> dict:
    """Weights of the tiny architecture drawn from fixed seeds, every parameter perturbed off its init (as the
    conftest fixture does), so the planted stores and their margins are the same in every session (the conftest
    model's open_clip init draws from torch's global generator, so it changes with the tests run before)."""
    import open_clip

    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = open_clip.create_model(ARCH, pretrained=None)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in net.parameters():
            scale = 0.05 * (param.float().std() if param.numel() > 1 else 1.0) + 0.02
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return net.state_dict()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    folder = tmp_path_factory.mktemp("ctx16")
    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"]["context_length"] = 16
    config_path = folder / f"{ARCH}.json"
    config_path.write_text(json.dumps(config))
    state = seeded_state(config_path)
    weights = folder / "tiny_ctx16.pt"
    torch.save(state, weights)
    other = folder / "other.pt"
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, other)
    encoder = vfeat.load_model(ARCH, str(weights), config=str(config_path))
    attrs = store_attrs(encoder, SamplingPlan(fps=2.0), "float32")
    assert attrs["model"]["checkpoint_sha256"]  # the text tower is found again by the file's hash
    return Model(weights, other, attrs, Reference(config_path, weights))


@pytest.fixture(scope="module", autouse=True)
def text_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VFEAT_CACHE_DIR", str(tmp_path_factory.mktemp("text-cache")))
        yield


def write_store(path: Path, attrs: dict, videos: dict[str, np.ndarray]) -> Path:
    with ShardWriter(str(path), attrs, flush_videos=10_000) as writer:
        for video_id, rows in videos.items():
            writer.add(VideoRecord(video_id, f"/data/{video_id}", dict(INFO), rows.astype(np.float32),
                                   STEP_MS * np.arange(len(rows))))
    return path


def plant(rng, right: np.ndarray, wrong: np.ndarray | None = None, n_wrong: int = 0, frames: int = 6,
          noise: float = 0.02) -> np.ndarray:
    """``frames`` raw rows near ``right``, ``n_wrong`` of them near ``wrong`` (and 4-6x louder)."""
    rows = np.stack([wrong if i < n_wrong else right for i in range(frames)])
    rows = rows + noise * rng.standard_normal(rows.shape)
    loud = np.where(np.arange(frames) < n_wrong, rng.uniform(4, 6, frames), rng.uniform(0.5, 1.5, frames))
    rows = rows * loud[:, None]
    return rows[rng.permutation(frames)]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def evaluate_json(tmp_path: Path, *args) -> list[dict]:
    out = tmp_path / f"result-{len(list(tmp_path.glob('result-*.json')))}.json"
    result = cli("evaluate", *args, "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def assert_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # a drawing, not a blank canvas


# -- classification ------------------------------------------------------------------------------------

UCF_SUBSET = ["ApplyEyeMakeup", "Archery", "Biking", "HandstandPushups", "JumpingJack", "PlayingDaf", "TaiChi", "YoYo"]
UCF_FILE_SPELLING = {"HandstandPushups": "HandStandPushups"}  # the files' spelling of the official class


@pytest.fixture(scope="module")
def ucf(model):
    """24 planted videos (8 UCF101 classes x 3; per class 0, 2 and 4 of 6 frames at another class)."""
    task = official("ucf101")
    class_emb = model.ref.classes(task["texts"], task["templates"])
    rng = np.random.default_rng(101)
    videos, labels = [], []
    for j, name in enumerate(UCF_SUBSET):
        c = task["classes"].index(name)
        wrong = task["classes"].index(UCF_SUBSET[(j + 3) % len(UCF_SUBSET)])
        for g, n_wrong in enumerate((0, 2, 4), 1):
            videos.append((name, g, plant(rng, class_emb[c], class_emb[wrong], n_wrong)))
            labels.append(c)
    extra = plant(rng, class_emb[0])
    metrics, per_class = classification_reference(np.stack([pooled(v) for *_, v in videos]), class_emb, labels,
                                                  task["classes"])
    assert 0 < metrics["top1"] < 100  # the planted errors show
    return {"videos": videos, "labels": labels, "extra": extra, "metrics": metrics, "per_class": per_class}


def test_ucf_names_folders_and_labels_csv_agree(tmp_path, model, ucf):
    """--task ucf101 from v_<Class>_gXX_cYY names, the same videos in class folders (a task YAML with labels
    from parent folders), and opaque ids with --labels CSV: the same numbers, equal to the reference."""
    by_name, by_folder, by_csv, rows = {}, {}, {}, [("video_id", "label")]
    for n, (name, g, frames) in enumerate(ucf["videos"]):
        by_name[f"{name}/v_{UCF_FILE_SPELLING.get(name, name)}_g{g:02d}_c01.avi"] = frames  # as UCF-101.rar unpacks
        by_folder[f"UCF-101/{name if n % 2 else name.lower()}/clip{n:03d}.mp4"] = frames
        by_csv[f"batch{n % 2}/vid{n:03d}.mp4"] = frames
        rows.append((f"vid{n:03d}", name))
    by_name["misc/readme_clip.avi"] = by_folder["UCF-101/misc/clip.mp4"] = by_csv["vid999.mp4"] = ucf["extra"]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    folder_task = dict(official("ucf101")["raw"], name="ucf101_folders", labels={"from": "parent_folder"})
    (tmp_path / "ucf101_folders.yaml").write_text(yaml.safe_dump(folder_task))

    runs = {
        "names": evaluate_json(tmp_path, "--features", write_store(tmp_path / "names.zarr", model.attrs, by_name),
                               "--task", "ucf101", "--plot", tmp_path / "ucf.png"),
        "folders": evaluate_json(tmp_path, "--features", write_store(tmp_path / "folders.h5", model.attrs, by_folder),
                                 "--task", tmp_path / "ucf101_folders.yaml"),
        "csv": evaluate_json(tmp_path, "--features", write_store(tmp_path / "csv.zarr", model.attrs, by_csv),
                             "--task", "ucf101", "--labels", labels),
    }
    for how, results in runs.items():
        (result,) = results
        assert result["type"] == "classification" and result["model"] == model.attrs["model"], how
        assert set(result["metrics"]) == CLASSIFICATION_KEYS
        assert_metrics(result["metrics"], ucf["metrics"])
        assert result["per_class_accuracy"] == pytest.approx(ucf["per_class"], abs=1e-9)
        assert result["counts"]["videos_in_store"] == 25 and result["counts"]["videos_evaluated"] == 24
        assert result["counts"]["videos_without_label"] == 1 and result["counts"]["classes"] == 101
    assert runs["names"][0]["task"] == "ucf101" and runs["folders"][0]["task"] == "ucf101_folders"
    assert_png(tmp_path / "ucf.png")


def test_official_split_files_restrict_the_videos(tmp_path, model, ucf):
    """--split: UCF101's testlist (Class/v_Class_gXX_cYY.avi), HMDB51-style split files (name 0|1|2, the 2s
    kept; a quoted glob for the set); the numbers are the reference's on the listed videos only."""
    task = official("ucf101")
    class_emb = model.ref.classes(task["texts"], task["templates"])
    store, names = {}, []
    for name, g, frames in ucf["videos"]:
        video_id = f"{name}/v_{UCF_FILE_SPELLING.get(name, name)}_g{g:02d}_c01.avi"
        store[video_id] = frames
        names.append(video_id)
    path = write_store(tmp_path / "ucf.zarr", model.attrs, store)
    chosen = [n for n, (_, g, _) in enumerate(ucf["videos"]) if g != 2]  # groups 1 and 3 "test"
    want, _ = classification_reference(np.stack([pooled(ucf["videos"][n][2]) for n in chosen]), class_emb,
                                       [ucf["labels"][n] for n in chosen], task["classes"])
    testlist = tmp_path / "testlist01.txt"
    testlist.write_text("".join(f"{names[n]}\r\n" for n in chosen) + "YoYo/v_YoYo_g25_c05.avi\r\n")
    (result,) = evaluate_json(tmp_path, "--features", path, "--task", "ucf101", "--split", testlist)
    assert_metrics(result["metrics"], want)
    assert result["counts"]["videos_evaluated"] == len(chosen)
    assert (result["counts"]["split_listed"], result["counts"]["split_stored"]) == (len(chosen) + 1, len(chosen))
    assert result["notes"][0] == f"split: {len(chosen)} of {len(chosen) + 1} listed videos are in the store; missing: YoYo/v_YoYo_g25_c05.avi"
    assert result["inputs"]["split"] == [str(testlist)]
    splits = tmp_path / "hmdb_splits"
    splits.mkdir()
    for name in UCF_SUBSET:  # one file per class, as HMDB51's: 1 train, 2 test, 0 unused
        lines = [f"{Path(names[n]).name} {2 if n in chosen else 1}" for n, (c, _, _) in enumerate(ucf["videos"]) if c == name]
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines + ["other_clip.avi 0"]) + "\n")
    (result,) = evaluate_json(tmp_path, "--features", path, "--task", "ucf101", "--split", str(splits / "*_test_split1.txt"))
    assert_metrics(result["metrics"], want)
    assert len(result["inputs"]["split"]) == len(UCF_SUBSET)
    assert_refused(cli("evaluate", "--features", path, "--task", "ucf101", "--split", str(splits / "*_split9.txt")),
                   "--split", "no file matches")
    (splits / "bad_test_split1.txt").write_text("clip.avi test\n")
    assert_refused(cli("evaluate", "--features", path, "--task", "ucf101", "--split", splits / "bad_test_split1.txt"),
                   "bad_test_split1.txt line 1", "HMDB51 split file")


KINETICS = ["abseiling", "archery", "juggling fire", "petting animal (not cat)", "riding a bike", "zumba"]


def test_kinetics_folders_and_official_csv(tmp_path, model):
    """--task kinetics400: labels from the nearest class folder (downloader spellings of the folder names), and
    the same videos under other ids with an official Kinetics CSV as --labels; plus an unknown folder."""
    task = official("kinetics400")
    class_emb = model.ref.classes(task["texts"], task["templates"])
    folder_names = {"juggling fire": "juggling_fire", "petting animal (not cat)": "petting_animal_-not_cat-",
                    "riding a bike": "Riding A Bike"}
    rng = np.random.default_rng(400)
    by_folder, by_csv, rows, labels, pooled_videos = {}, {}, [], [], []
    for j, name in enumerate(KINETICS):
        c = task["classes"].index(name)
        for k, n_wrong in enumerate((0, 3, 5)):
            frames = plant(rng, class_emb[c], class_emb[task["classes"].index(KINETICS[j - 1])], n_wrong, frames=7)
            youtube = f"yt{j}{k}xYz-_"
            by_folder[f"k400/val/{folder_names.get(name, name)}/{youtube}_{10 * k:06d}_{10 * k + 10:06d}.mp4"] = frames
            by_csv[f"flat/{youtube}_{10 * k:06d}_{10 * k + 10:06d}.mp4"] = frames
            rows.append((name, youtube, 10 * k, 10 * k + 10, "validate"))
            labels.append(c)
            pooled_videos.append(pooled(frames))
    by_folder["k400/val/not a class/zz_000000_000010.mp4"] = plant(rng, class_emb[0])
    want, per_class = classification_reference(np.stack(pooled_videos), class_emb, labels, task["classes"])
    assert 0 < want["top1"] < 100
    official_csv = tmp_path / "validate.csv"
    with official_csv.open("w", newline="") as f:
        csv.writer(f).writerows([("label", "youtube_id", "time_start", "time_end", "split"), *rows])

    (folders,) = evaluate_json(tmp_path, "--features", write_store(tmp_path / "k400.zarr", model.attrs, by_folder),
                               "--task", "kinetics400")
    (from_csv,) = evaluate_json(tmp_path, "--features", write_store(tmp_path / "flat.zarr", model.attrs, by_csv),
                                "--task", "kinetics400", "--labels", official_csv)
    for result in (folders, from_csv):
        assert_metrics(result["metrics"], want)
        assert result["per_class_accuracy"] == pytest.approx(per_class, abs=1e-9)
        assert result["counts"]["videos_evaluated"] == 18 and result["counts"]["classes"] == 400
    assert folders["counts"]["videos_without_label"] == 1
    assert folders["counts"]["unknown_labels"] == {"not a class": 1}


HMDB = ["brush_hair", "cartwheel", "kick_ball", "ride_bike", "sword_exercise"]


def test_two_tasks_in_one_run(tmp_path, model, ucf):
    """--task ucf101,hmdb51 on a store holding UCF-named and HMDB-foldered videos: each task scores its own
    videos, counts the others; the same store with opaque ids and one labels CSV gives the same numbers."""
    hmdb = official("hmdb51")
    hmdb_emb = model.ref.classes(hmdb["texts"], hmdb["templates"])
    rng = np.random.default_rng(51)
    store, opaque, rows = {}, {}, [("video_id", "label")]
    for n, (name, g, frames) in enumerate(ucf["videos"]):
        store[f"v_{UCF_FILE_SPELLING.get(name, name)}_g{g:02d}_c02.avi"] = frames
        opaque[f"u{n:03d}.mp4"] = frames
        rows.append((f"u{n:03d}.mp4", name))
    hmdb_labels, hmdb_videos = [], []
    for j, name in enumerate(HMDB):
        c = hmdb["classes"].index(name)
        for k, n_wrong in enumerate((1, 4)):
            frames = plant(rng, hmdb_emb[c], hmdb_emb[hmdb["classes"].index(HMDB[j - 2])], n_wrong)
            store[f"{name}/Some_movie_{name}_f_cm_np1_fr_med_{k}.avi"] = frames
            opaque[f"h{j}{k}.mp4"] = frames
            rows.append((f"h{j}{k}.mp4", name))
            hmdb_labels.append(c)
            hmdb_videos.append(pooled(frames))
    want_hmdb, _ = classification_reference(np.stack(hmdb_videos), hmdb_emb, hmdb_labels, hmdb["classes"])
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)

    plot = tmp_path / "both.png"
    by_layout = evaluate_json(tmp_path, "--features", write_store(tmp_path / "mixed.zarr", model.attrs, store),
                              "--task", "ucf101,hmdb51", "--plot", plot)
    by_csv = evaluate_json(tmp_path, "--features", write_store(tmp_path / "opaque.zarr", model.attrs, opaque),
                           "--task", "ucf101,hmdb51", "--labels", labels)
    for results in (by_layout, by_csv):
        assert [r["task"] for r in results] == ["ucf101", "hmdb51"]
        assert_metrics(results[0]["metrics"], ucf["metrics"])
        assert_metrics(results[1]["metrics"], want_hmdb)
        assert results[0]["counts"]["videos_evaluated"] == 24 and results[0]["counts"]["videos_without_label"] == 10
        assert results[1]["counts"]["videos_evaluated"] == 10 and results[1]["counts"]["videos_without_label"] == 24
    assert_png(tmp_path / "both_ucf101.png")
    assert_png(tmp_path / "both_hmdb51.png")


CUSTOM = ["walking a dog", "juggling_fire", "PlayingChess", "surfing+waves"]
CUSTOM_TEMPLATES = ["a video of {}.", "a person {} outdoors.", "footage: {}"]


def custom_files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "classes.txt").write_text("\n".join(CUSTOM) + "\n")
    (tmp_path / "templates.txt").write_text("\n".join(CUSTOM_TEMPLATES) + "\n")
    return tmp_path / "classes.txt", tmp_path / "templates.txt"


def custom_store(tmp_path: Path, model: Model, seed: int = 7):
    """12 videos of the custom classes (folders named after them, as Kinetics lays them out), plus the
    reference answer and a video_id,label CSV for the same videos."""
    class_emb = model.ref.classes([readable(c, {}) for c in CUSTOM], CUSTOM_TEMPLATES)
    rng = np.random.default_rng(seed)
    videos, labels, rows = {}, [], [("video_id", "label")]
    for c, name in enumerate(CUSTOM):
        for k, n_wrong in enumerate((0, 2, 4)):
            videos[f"{name}/c{c}{k}.mp4"] = plant(rng, class_emb[c], class_emb[(c + 1) % len(CUSTOM)], n_wrong)
            labels.append(c)
            rows.append((f"c{c}{k}", name))
    want = classification_reference(np.stack([pooled(v) for v in videos.values()]), class_emb, labels, CUSTOM)
    return write_store(tmp_path / "custom.zarr", model.attrs, videos), want, rows


def test_custom_classes_and_templates(tmp_path, model):
    """--classes/--templates files (labels from folders, or a --labels CSV matched by file stem)."""
    classes, templates = custom_files(tmp_path)
    store, (want, per_class), rows = custom_store(tmp_path, model)
    assert 0 < want["top1"] < 100
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    plot = tmp_path / "confusion.png"
    for extra in ([], ["--labels", labels]):
        (result,) = evaluate_json(tmp_path, "--features", store, "--classes", classes, "--templates", templates,
                                  *extra, "--plot", plot)
        assert result["templates"] == CUSTOM_TEMPLATES
        assert_metrics(result["metrics"], want)
        assert result["per_class_accuracy"] == pytest.approx(per_class, abs=1e-9)
        assert result["counts"]["videos_evaluated"] == 12 and result["counts"]["videos_without_label"] == 0
        assert_png(plot)
    # the same classes as UCF101's classInd.txt numbers them ("1 ApplyEyeMakeup"), in another line order
    names = [line for line in classes.read_text().splitlines() if line.strip()]
    numbered = tmp_path / "classInd.txt"
    numbered.write_text("".join(f"{n} {name}\r\n" for n, name in reversed(list(enumerate(names, 1)))))
    (result,) = evaluate_json(tmp_path, "--features", store, "--classes", numbered, "--templates", templates)
    assert_metrics(result["metrics"], want)
    assert list(result["per_class_accuracy"]) == list(per_class)


def test_labels_without_a_video_are_counted(tmp_path, model):
    classes, templates = custom_files(tmp_path)
    store, _, rows = custom_store(tmp_path, model)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows([*rows, ("ghost_clip", CUSTOM[0])])
    (result,) = evaluate_json(tmp_path, "--features", store, "--classes", classes, "--templates", templates,
                              "--labels", labels)
    counted = {k: v for k, v in result["counts"].items() if "without_video" in k}
    assert list(counted.values()) == [1]
    assert any("ghost_clip" in note for note in result["notes"])


# -- retrieval and multiple choice ------------------------------------------------------------------------

NOUNS = ["dog", "chef", "cyclist", "violinist", "child", "surfer", "robot"]
ACTS = ["runs along a beach", "chops onions in a kitchen", "climbs a steep hill", "plays on a stage",
        "builds a sand castle", "rides a big wave", "dances under neon lights"]


@pytest.fixture(scope="module")
def retrieval(model, tmp_path_factory):
    """7 captioned videos (2-3 captions each, some frames at another video's caption, two videos mostly wrong),
    two videos with identical frames (exact ties), one stored video without captions, one caption for a video
    that is not stored; ids matched exactly or by file stem."""
    folder = tmp_path_factory.mktemp("retrieval")
    rng = np.random.default_rng(2024)
    pairs, store, gallery = [], {}, []
    for v, (noun, act) in enumerate(zip(NOUNS, ACTS)):
        captions = [f"a {noun} {act}", f"the {noun} {act} at dusk", f"video of a {noun} that {act}"][: 2 + v % 2]
        store_id = f"msrvtt/video{v}.mp4"
        pairs += [(store_id if v % 2 else f"video{v}", c) for c in captions]
        emb = model.ref.embed(captions)
        other = model.ref.embed([f"a {NOUNS[v - 1]} {ACTS[v - 1]}"])[0]
        store[store_id] = plant(rng, emb[v % len(captions)], other, n_wrong=4 if v in (2, 5) else 1, noise=0.03)
        gallery.append(store_id)
    store["msrvtt/video6.mp4"] = store["msrvtt/video5.mp4"].copy()  # exact ties: pessimistic ranks
    store["msrvtt/uncaptioned.mp4"] = plant(rng, model.ref.embed(["an empty room"])[0])
    pairs.insert(3, ("ghost.mp4", "a ghost floats through a wall"))
    path = write_store(folder / "msr.zarr", model.attrs, store)
    kept = [(vid, c) for vid, c in pairs if vid != "ghost.mp4"]
    index = {vid: n for n, vid in enumerate(gallery)}
    caption_video = [index[vid if vid in index else f"msrvtt/{vid}.mp4"] for vid, _ in kept]
    texts = model.ref.embed([c for _, c in kept])
    videos = np.stack([pooled(store[g]) for g in gallery])
    want = {dsl: retrieval_reference(texts, videos, caption_video, dsl) for dsl in (False, True)}
    assert want[False] != want[True] and 0 < want[False]["t2v_r1"] < 100
    return {"path": path, "pairs": pairs, "want": want, "store": store, "n_captions": len(kept)}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("dsl", [False, True], ids=["plain", "dsl"])
def test_retrieval_captions(tmp_path, retrieval, fmt, dsl):
    captions = tmp_path / f"captions.{fmt}"
    if fmt == "csv":
        with captions.open("w", newline="") as f:
            csv.writer(f).writerows([("video_id", "caption"), *retrieval["pairs"]])
    else:
        captions.write_text("".join(json.dumps({"video_id": v, "caption": c}) + "\n" for v, c in retrieval["pairs"]))
    plot = tmp_path / "recall.png"
    (result,) = evaluate_json(tmp_path, "--features", retrieval["path"], "--captions", captions, "--plot", plot,
                              *(["--dsl"] if dsl else []))
    assert result["type"] == "retrieval"
    assert set(result["metrics"]) == RETRIEVAL_KEYS
    assert_metrics(result["metrics"], retrieval["want"][dsl])
    assert result["counts"] == {"captions": retrieval["n_captions"], "videos": 7, "captions_without_video": 1,
                                "videos_without_caption": 1, "dsl": dsl}
    notes = " ".join(result["notes"])
    assert "ghost.mp4" in notes and "msrvtt/uncaptioned.mp4" in notes
    assert_png(plot)
    shown = cli("evaluate", "--features", retrieval["path"], "--captions", captions, *(["--dsl"] if dsl else []))
    assert ("retrieval (DSL)" in shown.output) == dsl, shown.output  # the table says how the ranks were scored


def test_outputs_go_into_folders_made_for_them_and_say_what_they_measured(tmp_path, retrieval):
    """An output file in a folder that did not exist ended the run, after its work, in a traceback (exit 3);
    a --plot without a suffix was written as NAME.png without a word; the JSON did not say which
    annotation file it measured."""
    captions = write_captions(tmp_path / "captions.csv", retrieval["pairs"])
    out, plot = tmp_path / "new" / "deeper" / "r.json", tmp_path / "figures" / "recall"
    result = cli("evaluate", "--features", retrieval["path"], "--captions", captions, "--json", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert f"wrote 1 plot(s): {plot}.png" in " ".join(result.output.split())
    assert_png(Path(f"{plot}.png"))
    (written,) = json.loads(out.read_text())
    assert written["inputs"] == {"store": str(retrieval["path"]), "captions": str(captions)}
    (tmp_path / "a-file").write_text("")
    assert_refused(cli("search", "--features", retrieval["path"], "a dog", "--json", tmp_path / "a-file" / "h.json"),
                   "--json", "cannot create its folder")
    hits = cli("search", "--features", retrieval["path"], "a dog", "--json", tmp_path / "hits" / "h.json")
    assert hits.exit_code == 0 and (tmp_path / "hits" / "h.json").is_file(), hits.output
    predicted = cli("predict", "--features", retrieval["path"], "--texts", "a dog", "--out", tmp_path / "preds" / "p.csv")
    assert predicted.exit_code == 0 and (tmp_path / "preds" / "p.csv").is_file(), predicted.output


def write_captions(path: Path, pairs) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("video_id", "caption"), *pairs])
    return path


@pytest.fixture(scope="module")
def multiple_choice(model, retrieval, tmp_path_factory):
    """A question per captioned video of the retrieval store (its last caption among three or two other videos'
    first captions), one for a video that is not stored; and the reference accuracy (strict argmax)."""
    rows, questions = [("video_id", "candidate_1", "candidate_2", "candidate_3", "candidate_4", "answer_index")], []
    captions = {}
    for vid, caption in retrieval["pairs"]:
        captions.setdefault(vid, []).append(caption)
    ids = [v for v in captions if v != "ghost.mp4"]
    for n, vid in enumerate(ids):
        distractors = [captions[ids[(n + s) % len(ids)]][0] for s in (1, 2, 3)]
        answer = n % 4 if n != 4 else 1
        cands = distractors[:answer] + [captions[vid][-1]] + distractors[answer:]
        if n == 4:
            cands = cands[:3] + [""]  # a question with three candidates
        rows.append((vid, *cands, answer))
        questions.append((vid, [c for c in cands if c], answer))
    rows.append(("ghost.mp4", "a", "b", "c", "d", 0))
    path = tmp_path_factory.mktemp("mc") / "mc.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    right = 0
    for vid, cands, answer in questions:
        key = vid if vid in retrieval["store"] else f"msrvtt/{vid}.mp4"
        scores = model.ref.embed(cands) @ pooled(retrieval["store"][key])
        right += all(scores[answer] > s for j, s in enumerate(scores) if j != answer)
    return {"path": path, "accuracy": 100.0 * right / len(questions)}


def test_multiple_choice(tmp_path, retrieval, multiple_choice):
    (result,) = evaluate_json(tmp_path, "--features", retrieval["path"], "--multiple-choice", multiple_choice["path"])
    assert result["metrics"] == pytest.approx({"accuracy": multiple_choice["accuracy"]}, abs=1e-9)
    assert 0 < result["metrics"]["accuracy"] < 100
    assert result["counts"] == {"questions": 8, "questions_evaluated": 7, "questions_without_video": 1,
                                "videos_without_question": 1}
    notes = " ".join(result["notes"])
    assert "ghost.mp4" in notes and "msrvtt/uncaptioned.mp4" in notes


def test_multiple_choice_embeds_all_candidates_in_one_call(tmp_path, monkeypatch, retrieval, multiple_choice):
    """Each distinct candidate text goes through the text tower once, in one call (not one call per question)."""
    import vfeat.evaluate.run as run

    calls = []

    def spy(encoder, texts, *args, **kwargs):
        calls.append(list(texts))
        return embed(encoder, texts, *args, **kwargs)

    embed = run.embed_texts
    monkeypatch.setattr(run, "embed_texts", spy)
    (result,) = evaluate_json(tmp_path, "--features", retrieval["path"], "--multiple-choice", multiple_choice["path"])
    assert result["metrics"] == pytest.approx({"accuracy": multiple_choice["accuracy"]}, abs=1e-9)
    with multiple_choice["path"].open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["video_id"] != "ghost.mp4"]
    candidates = {v for r in rows for k, v in r.items() if k.startswith("candidate_") and v}
    assert len(calls) == 1 and sorted(calls[0]) == sorted(candidates)


def test_captions_and_multiple_choice_in_one_run(tmp_path, retrieval, multiple_choice):
    """Without --task, every annotation file given is evaluated (the second one used to be ignored)."""
    captions = write_captions(tmp_path / "captions.csv", retrieval["pairs"])
    results = evaluate_json(tmp_path, "--features", retrieval["path"], "--captions", captions, "--multiple-choice",
                            multiple_choice["path"], "--dsl")
    assert [(r["task"], r["type"]) for r in results] == [("retrieval", "retrieval"),
                                                         ("multiple_choice", "multiple_choice")]
    assert_metrics(results[0]["metrics"], retrieval["want"][True])
    assert results[1]["metrics"] == pytest.approx({"accuracy": multiple_choice["accuracy"]}, abs=1e-9)


def test_templates_apply_to_the_classification_tasks_of_a_mixed_run(tmp_path, model):
    """--task <classification>,msrvtt --templates: the templates replace the classification task's, the
    retrieval task runs on --captions (it used to refuse: 'msrvtt is retrieval')."""
    classes, templates = custom_files(tmp_path)
    store, (want, _), _ = custom_store(tmp_path, model)
    task = {"name": "mine", "type": "classification", "labels": {"from": "parent_folder"}, "classes": CUSTOM,
            "templates": ["{}"]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(task))
    captions = tmp_path / "msrvtt.csv"
    with captions.open("w", newline="") as f:
        csv.writer(f).writerows([("key", "vid_key", "video_id", "sentence"),
                                 *[(f"ret{c}", f"msr{c}", f"c{c}0", f"a video of {readable(name, {})}")
                                   for c, name in enumerate(CUSTOM)]])
    mine, msrvtt = evaluate_json(tmp_path, "--features", store, "--task", f"{tmp_path / 'mine.yaml'},msrvtt",
                                 "--templates", templates, "--captions", captions)
    assert mine["templates"] == CUSTOM_TEMPLATES and msrvtt["templates"] == []
    assert_metrics(mine["metrics"], want)
    assert msrvtt["counts"]["captions"] == 4 and msrvtt["counts"]["videos_without_caption"] == 8


# -- bad input -------------------------------------------------------------------------------------------

def assert_refused(result, *needles: str) -> None:
    """Exit 2, one 'vfeat: error:' line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vfeat: error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_bad_input(tmp_path, model, retrieval):
    store = retrieval["path"]
    assert_refused(cli("evaluate", "--features", store, "--task", "ucf102"), "Unknown task 'ucf102'", "ucf101")
    (tmp_path / "dup.txt").write_text("walking a dog\nsurfing\nWalking_A_Dog\n")
    assert_refused(cli("evaluate", "--features", store, "--classes", tmp_path / "dup.txt"), "duplicate classes",
                   "Walking_A_Dog")
    (tmp_path / "unknown.csv").write_text("video_id,caption\nnope1.mp4,a cat\nnope2.mp4,a hat\n")
    assert_refused(cli("evaluate", "--features", store, "--captions", tmp_path / "unknown.csv"), "nope1.mp4")
    empty = tmp_path / "empty.zarr"
    ShardWriter(str(empty), model.attrs).close()
    assert_refused(cli("evaluate", "--features", empty, "--captions", tmp_path / "unknown.csv"), "no videos")
    for command in (["evaluate", "--captions", tmp_path / "unknown.csv"], ["predict", "--texts", "a"], ["search", "a"]):
        assert_refused(cli(*command, "--features", store, "--pretrained", model.other), "other.pt", "sha256")


@pytest.mark.parametrize("command", [["predict", "--texts", "a dog"], ["search", "a dog"]], ids=["predict", "search"])
def test_empty_store_refused_by_predict_and_search(tmp_path, model, command):
    empty = tmp_path / "empty.zarr"
    ShardWriter(str(empty), model.attrs).close()
    assert_refused(cli(*command, "--features", empty), "no videos")


@pytest.mark.parametrize("args, needles", [
    (["--task", "ucf101", "--captions", "{captions}"], ["--captions only applies to retrieval", "ucf101: classification"]),
    (["--task", "ucf101", "--multiple-choice", "{mc}"], ["--multiple-choice only applies to multiple choice"]),
    (["--task", "ucf101", "--dsl"], ["--dsl only applies to retrieval"]),
    (["--multiple-choice", "{mc}", "--dsl"], ["--dsl only applies to retrieval", "multiple_choice: multiple choice"]),
    (["--captions", "{captions}", "--labels", "{captions}"], ["--labels only applies to classification"]),
    (["--task", "msrvtt", "--captions", "{captions}", "--labels", "{captions}"], ["--labels", "msrvtt: retrieval"]),
    (["--task", "msrvtt", "--captions", "{captions}", "--templates", "{captions}"], ["--templates only applies"]),
    (["--task", "msrvtt", "--captions", "{captions}", "--classes", "{captions}"], ["--classes only applies"]),
    (["--task", "msrvtt,didemo", "--captions", "{captions}"], ["--captions names one file", "msrvtt, didemo"]),
    (["--task", "ucf101,hmdb51,ucf101"], ["--task names ucf101 twice"]),
    (["--task", "msrvtt"], ["Task msrvtt is retrieval: pass --captions FILE (MSRVTT_JSFUSION_test.csv)"]),
    (["--task", "ucf101", "--plot", "{tmp}/confusion.docx"], ["Invalid --plot", ".docx", ".png"]),
], ids=["captions", "multiple-choice", "dsl-classification", "dsl-multiple-choice", "labels", "labels-task",
        "templates", "classes", "one-captions-two-tasks", "task-twice", "missing-captions", "plot-type"])
def test_flags_no_task_would_use_are_refused(tmp_path, retrieval, multiple_choice, args, needles):
    """A flag that would be silently ignored is one error naming it, before the store is read (so also on a
    store that does not exist: the flag is the first thing wrong)."""
    captions = write_captions(tmp_path / "captions.csv", retrieval["pairs"])
    args = [a.format(captions=captions, mc=multiple_choice["path"], tmp=tmp_path) for a in args]
    assert_refused(cli("evaluate", "--features", retrieval["path"], *args), *needles)
    assert_refused(cli("evaluate", "--features", tmp_path / "missing.zarr", *args), *needles)


@pytest.mark.parametrize("args, needles", [
    (["--out", "{tmp}/preds.txt"], ["Invalid --out", "preds.txt", ".parquet, .csv, .jsonl"]),
    (["--out", "{tmp}/preds"], ["Invalid --out"]),
    (["--limit", "-1"], ["Invalid --limit (-1)"]),
    (["--plot", "{tmp}/timeline.docx"], ["Invalid --plot"]),
], ids=["out-type", "out-no-suffix", "limit", "plot-type"])
def test_predict_flags_refused_before_work(tmp_path, moments, args, needles):
    store, _ = moments
    args = [a.format(tmp=tmp_path) for a in args]
    assert_refused(cli("predict", "--features", store, "--texts", TEXT_A, TEXT_B, *args), *needles)
    assert not list(tmp_path.iterdir())


def test_predict_out_suffix_is_case_insensitive(tmp_path, moments):
    import pandas as pd

    store, videos = moments
    result = cli("predict", "--features", store, "--texts", TEXT_A, TEXT_B, "--out", tmp_path / "preds.CSV")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "preds.CSV")) == sum(len(v) for v in videos.values())


# -- predict and search ------------------------------------------------------------------------------------

TEXT_A, TEXT_B, NEEDLE = "a dog smiles", "a woman is lifting", "a red kite over the sea"
PLANTED = {"walk/one.mp4": "AABBA", "walk/two.mp4": "BBBANB"}  # N: the needle of search


@pytest.fixture(scope="module")
def moments(model, tmp_path_factory):
    """Two videos whose frames are the texts A / B (plus a little noise); one frame of two.mp4 is the needle."""
    emb = dict(zip("ABN", model.ref.embed([TEXT_A, TEXT_B, NEEDLE])))
    rng = np.random.default_rng(5)
    videos = {vid: np.stack([emb[ch] * rng.uniform(0.5, 3) + 0.001 * rng.standard_normal(model.dim) for ch in plan])
              for vid, plan in PLANTED.items()}
    return write_store(tmp_path_factory.mktemp("moments") / "moments.zarr", model.attrs, videos), videos


def test_predict_texts(tmp_path, model, moments):
    import pandas as pd

    store, videos = moments
    out, plot = tmp_path / "preds.parquet", tmp_path / "p.png"
    result = cli("predict", "--features", store, "--texts", TEXT_A, TEXT_B, "--top", "2", "--out", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["video_id", "timestamp_ms", "rank", "label", "logit", "probability"]
    assert len(frame) == 2 * sum(len(v) for v in videos.values())
    text = model.ref.embed([TEXT_A, TEXT_B])
    scale = model.attrs["logit_scale"]
    for (vid, stamp), group in frame.groupby(["video_id", "timestamp_ms"]):
        row = videos[vid][int(stamp / STEP_MS)].astype(np.float64)
        logits = scale * text @ (row / np.linalg.norm(row))
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        group = group.sort_values("rank")
        assert list(group["rank"]) == [1, 2]
        assert group["probability"].sum() == pytest.approx(1.0, abs=1e-6)
        order = np.argsort(-logits)
        assert list(group["label"]) == [[TEXT_A, TEXT_B][i] for i in order]
        assert group["logit"].to_numpy() == pytest.approx(logits[order], abs=1e-4)
        assert group["probability"].to_numpy() == pytest.approx(probs[order], abs=1e-5)
        planted = PLANTED[vid][int(stamp / STEP_MS)]
        if planted != "N":
            assert group["label"].iloc[0] == {"A": TEXT_A, "B": TEXT_B}[planted]
    for name in ("p_walk_one.mp4.png", "p_walk_two.mp4.png"):  # one figure per video, named after its id
        assert_png(tmp_path / name)
    assert "wrote 2 timeline plot(s)" in result.output


def test_predict_task(tmp_path, model):
    hmdb = official("hmdb51")
    class_emb = model.ref.classes(hmdb["texts"], hmdb["templates"])
    rng = np.random.default_rng(3)
    planted = [hmdb["classes"].index(name) for name in HMDB]
    rows = np.stack([class_emb[c] * rng.uniform(0.5, 2) + 0.001 * rng.standard_normal(model.dim) for c in planted])
    store = write_store(tmp_path / "hmdb.zarr", model.attrs, {"clip.mp4": rows})
    out = tmp_path / "preds.csv"
    result = cli("predict", "--features", store, "--task", "hmdb51", "--top", "3", "--out", out)
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_csv(out)
    assert len(frame) == 3 * len(planted)
    scores = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ class_emb.T
    for r, c in enumerate(planted):
        got = frame[frame["timestamp_ms"] == r * STEP_MS].sort_values("rank")
        assert list(got["label"]) == [hmdb["classes"][i] for i in np.argsort(-scores[r])[:3]]
        assert got["label"].iloc[0] == hmdb["classes"][c]
        assert got["logit"].to_numpy() == pytest.approx(model.attrs["logit_scale"] * np.sort(scores[r])[::-1][:3], abs=1e-4)


def test_search_finds_the_planted_moment(tmp_path, model, moments):
    store, videos = moments
    out = tmp_path / "hits.json"
    result = cli("search", "--features", store, NEEDLE, "--top", "3", "--json", out)
    assert result.exit_code == 0, result.output
    hits = json.loads(out.read_text())["hits"]
    q = model.ref.embed([NEEDLE])[0]
    every = [(float(row @ q / np.linalg.norm(row)), vid, STEP_MS * i) for vid, rows in videos.items()
             for i, row in enumerate(rows.astype(np.float64))]
    every.sort(key=lambda hit: -hit[0])
    assert (hits[0]["video_id"], hits[0]["timestamp_ms"]) == ("walk/two.mp4", 4 * STEP_MS)
    assert [(h["rank"], h["video_id"], h["timestamp_ms"]) for h in hits] == [(n + 1, v, t) for n, (_, v, t) in enumerate(every[:3])]
    assert [h["score"] for h in hits] == pytest.approx([s for s, _, _ in every[:3]], abs=1e-5)


def test_search_lists_a_frame_stored_twice_once(tmp_path, model):
    """Rows repeat where sampling targets fall on one frame (--fps above the video's rate): one moment each."""
    emb = dict(zip("ABN", model.ref.embed([TEXT_A, TEXT_B, NEEDLE])))
    with ShardWriter(str(tmp_path / "twice.zarr"), model.attrs) as writer:
        for video_id, plan, stamps in [("a.mp4", "NNAB", [0.0, 0.0, 40.0, 80.0]), ("b.mp4", "ANN", [0.0, 40.0, 40.0])]:
            rows = np.stack([emb[ch] * (1.0 + 0.1 * i) for i, ch in enumerate(plan)]).astype(np.float32)
            writer.add(VideoRecord(video_id, f"/data/{video_id}", dict(INFO), rows, np.array(stamps)))
    out = tmp_path / "hits.json"
    result = cli("search", "--features", tmp_path / "twice.zarr", NEEDLE, "--top", "3", "--json", out)
    assert result.exit_code == 0, result.output
    hits = [(h["video_id"], h["timestamp_ms"]) for h in json.loads(out.read_text())["hits"]]
    assert len(set(hits)) == 3
    assert set(hits[:2]) == {("a.mp4", 0.0), ("b.mp4", 40.0)}


# -- the text cache ------------------------------------------------------------------------------------------

def test_text_embeddings_are_cached(tmp_path, model, monkeypatch):
    """A second run reads the cache (the text tower is not called) and leaves the files untouched; the cached
    prompt embeddings are the reference's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VFEAT_CACHE_DIR", str(cache))
    classes, templates = custom_files(tmp_path)
    store, (want, _), _ = custom_store(tmp_path, model, seed=11)
    (first,) = evaluate_json(tmp_path, "--features", store, "--classes", classes, "--templates", templates)
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert files
    flat = [t.replace("{}", readable(c, {})) for c in CUSTOM for t in CUSTOM_TEMPLATES]
    cached = [np.load(p) for p in files]
    assert any(a.shape == (len(flat), model.dim) and np.allclose(a, model.ref.embed(flat), atol=1e-5) for a in cached)

    from vfeat.models.clip import ClipEncoder

    def refuse(self, tokens):
        raise AssertionError("the text tower ran although the embeddings are cached")

    monkeypatch.setattr(ClipEncoder, "encode_text_tokens", refuse)
    (second,) = evaluate_json(tmp_path, "--features", store, "--classes", classes, "--templates", templates)
    assert second["metrics"] == first["metrics"]
    assert_metrics(second["metrics"], want)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files


EVALUATE_IN_A_FRESH_PROCESS = """
import sys
from typer.testing import CliRunner
from vfeat.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(result.output)
print("exit", result.exit_code, "torch imported:", "torch" in sys.modules)
"""


def evaluate_in_a_fresh_process(cache: Path, *args) -> tuple[int, bool, str]:
    """``vfeat evaluate ARGS`` in a new interpreter: its exit code, whether it imported torch, its output."""
    env = {**os.environ, "VFEAT_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", EVALUATE_IN_A_FRESH_PROCESS, "evaluate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1].split()
    return int(last[1]), last[-1] == "True", done.stdout


def test_cached_texts_need_neither_the_model_nor_its_weights(tmp_path, model):
    """Texts this model already embedded are read from the cache: a second evaluation loads no model (not even
    torch) and works after the weight file is gone; texts not in the cache still need the weights, with the
    same error as before, and a --pretrained file is checked against the store even when nothing is loaded."""
    cache = tmp_path / "cache"
    classes, templates = custom_files(tmp_path)
    weights = tmp_path / "moving.pt"
    shutil.copy(model.weights, weights)
    attrs = copy.deepcopy(model.attrs)
    attrs["model"]["pretrained"] = str(weights)
    moved = Model(weights, model.other, attrs, model.ref)
    store, (want, _), _ = custom_store(tmp_path, moved, seed=12)
    out = [tmp_path / f"result-{n}.json" for n in range(3)]

    code, torch_imported, output = evaluate_in_a_fresh_process(
        cache, "--features", store, "--classes", classes, "--templates", templates, "--json", out[0])
    assert code == 0 and torch_imported, output  # the first run embeds the prompts, and says so
    assert f"vfeat: embedding {len(CUSTOM) * len(CUSTOM_TEMPLATES)} text(s) with the text tower of {ARCH}" in output
    weights.unlink()
    code, torch_imported, output = evaluate_in_a_fresh_process(
        cache, "--features", store, "--classes", classes, "--templates", templates, "--json", out[1])
    assert code == 0 and not torch_imported and "embedding" not in output, output
    first, second = (json.loads(p.read_text())[0]["metrics"] for p in out[:2])
    assert second == first
    assert_metrics(second, want)

    (tmp_path / "one_template.txt").write_text("a video of {}.\n")
    assert_refused(cli("evaluate", "--features", store, "--classes", classes, "--templates", tmp_path / "one_template.txt"),
                   "moving.pt", "not on this machine", "--pretrained")
    assert_refused(cli("evaluate", "--features", store, "--classes", classes, "--templates", templates,
                       "--pretrained", model.other), "other.pt", "sha256")
    code, _, output = evaluate_in_a_fresh_process(
        cache, "--features", store, "--classes", classes, "--templates", tmp_path / "one_template.txt",
        "--pretrained", model.weights, "--json", out[2])
    assert code == 0, output
    assert json.loads(out[2].read_text())[0]["counts"]["videos_evaluated"] == 12
