"""Task files: official class counts, schema validation, readable text, label extraction."""

import numpy as np
import pytest
import yaml

from vfeat.errors import InputError
from vfeat.evaluate import tasks as T

CLASS_COUNTS = {"ucf101": 101, "hmdb51": 51, "kinetics400": 400, "kinetics600": 600, "kinetics700": 700,
                "mit": 339}  # MiT: v1, as counted in moments_categories.txt (see configs/tasks/mit.yaml)
RETRIEVAL = {"msrvtt", "didemo", "activitynet", "youcook2", "lsmdc", "webvid"}


def test_every_expected_task_is_registered():
    assert set(T.list_tasks()) == set(CLASS_COUNTS) | RETRIEVAL


@pytest.mark.parametrize("name,count", sorted(CLASS_COUNTS.items()))
def test_official_class_counts_no_duplicates(name, count):
    raw = yaml.safe_load((T.TASKS_DIR / f"{name}.yaml").read_text())  # independent of the loader
    assert len(raw["classes"]) == count
    assert len(set(raw["classes"])) == count
    assert len({T.match_key(c) for c in raw["classes"]}) == count  # folder matching is unambiguous
    task = T.load_task(name)
    assert task.type == "classification" and len(task.classes) == count and task.source
    assert all(t.count("{}") == 1 for t in task.templates)
    assert len(task.prompts()) == count and len(task.prompts()[0]) == len(task.templates)


def test_known_official_entries_and_order():
    ucf = T.load_task("ucf101").classes
    assert ucf[0] == "ApplyEyeMakeup" and ucf[36] == "HandstandPushups" and ucf[-1] == "YoYo"
    assert len(T.load_task("ucf101").templates) == 48
    k400 = T.load_task("kinetics400").classes
    assert k400[:2] == ("abseiling", "air drumming") and k400[-1] == "zumba"
    assert "petting animal (not cat)" in k400 and "massaging person's head" in k400
    k600 = T.load_task("kinetics600").classes
    # indices of an independent indexed K600 listing
    assert k600.index("passing american football (not in game)") == 309
    assert k600.index("swinging baseball bat") == 509 and k600.index("cutting apple") == 124
    k700 = T.load_task("kinetics700").classes
    assert "bouncing ball (not juggling)" in k700 and k700[-1] == "zumba"
    assert len(T.load_task("kinetics700").templates) == 28
    assert T.load_task("mit").classes[:3] == ("clapping", "praying", "dropping")
    assert "adult+female+singing" in T.load_task("mit").classes
    assert T.load_task("hmdb51").classes[:3] == ("brush_hair", "cartwheel", "catch")


@pytest.mark.parametrize("name", sorted(RETRIEVAL))
def test_retrieval_tasks_name_a_reader(name):
    task = T.load_task(name)
    assert task.type == "retrieval" and task.captions["format"] in T.CAPTION_FORMATS and not task.classes


@pytest.mark.parametrize("label,text", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("YoYo", "yo yo"), ("air_drumming", "air drumming"),
    ("adult+female+singing", "adult female singing"), ("petting animal (not cat)", "petting animal (not cat)"),
    ("passing American football (in game)", "passing american football (in game)"), ("TVShow", "tv show"),
])
def test_class_text(label, text):
    assert T.class_text(label) == text


def test_class_text_override():
    assert T.load_task("ucf101").texts()[36] == "hand stand pushups"


def test_unknown_task_suggests_and_lists():
    with pytest.raises(InputError, match=r"Unknown task 'kinetics40'\. Did you mean kinetics400.*Known tasks: .*ucf101"):
        T.load_task("kinetics40")


def _write(tmp_path, data, name="t.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "t", "type": "classification", "labels": {"from": "parent_folder"},
        "classes": ["a", "b"], "templates": ["a video of {}."]}


def test_load_from_path(tmp_path):
    task = T.load_task(_write(tmp_path, BASE))
    assert task.classes == ("a", "b") and task.path.name == "t.yaml"


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, r"t\.yaml: unknown key 'colour'"),
    ({"labels": {"from": "parent_folder", "patern": "x"}}, r"unknown key 'patern' in labels"),
    ({"classes": ["a", "b", "a"]}, r"t\.yaml: duplicate classes: a"),
    ({"classes": ["Air Drumming", "air_drumming"]}, r"duplicate classes: 'Air Drumming' ~ 'air_drumming'"),
    ({"classes": ["YoYo", "yo yo"]}, r"duplicate classes: 'YoYo' ~ 'yo yo'"),  # one prompt for both: a forced tie
    ({"templates": ["a video"]}, r"template 'a video' must contain exactly one \{\}"),
    ({"type": "ranking"}, r"unknown type 'ranking'"),
    ({"labels": {"from": "filename", "pattern": "v_(.*)"}}, r"named group \(\?P<label>"),
    ({"class_text": {"c": "see"}}, r"class_text names labels that are not classes: c"),
])
def test_schema_errors_name_key_and_file(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        T.load_task(_write(tmp_path, {**BASE, **change}))


def test_retrieval_schema_errors(tmp_path):
    bad = {"name": "r", "type": "retrieval", "captions": {"format": "srt"}}
    with pytest.raises(InputError, match=r"captions\.format must be one of"):
        T.load_task(_write(tmp_path, bad))
    with pytest.raises(InputError, match="'classes' only applies to classification"):
        T.load_task(_write(tmp_path, {**bad, "captions": {"format": "generic"}, "classes": ["x"]}))


def test_missing_task_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        T.load_task(tmp_path / "nope.yaml")


def test_custom_classes_and_templates(tmp_path):
    (tmp_path / "classes.txt").write_text("riding bike\n\nPlayingPiano\n")
    (tmp_path / "templates.txt").write_text("a clip of {}.\nsomeone {}\n")
    task = T.task_from_files(tmp_path / "classes.txt", tmp_path / "templates.txt")
    assert task.classes == ("riding bike", "PlayingPiano")
    assert task.prompts() == [["a clip of riding bike.", "someone riding bike"],
                              ["a clip of playing piano.", "someone playing piano"]]
    only_templates = T.task_from_files(templates_path=tmp_path / "templates.txt", base=T.load_task("ucf101"))
    assert len(only_templates.classes) == 101 and only_templates.templates == ("a clip of {}.", "someone {}")
    (tmp_path / "bad.txt").write_text("a clip of\n")
    with pytest.raises(InputError, match=r"--templates file .*bad\.txt: template 'a clip of' must contain exactly one"):
        T.task_from_files(tmp_path / "classes.txt", tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("x\ny\nx\n")
    with pytest.raises(InputError, match=r"--classes file .*dup\.txt: duplicate classes: x"):
        T.task_from_files(tmp_path / "dup.txt")
    with pytest.raises(InputError, match="needs --classes"):
        T.task_from_files(templates_path=tmp_path / "templates.txt")


UCF_IDS = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "YoYo/v_YoYo_g25_c05.avi",
           "HandstandPushups/v_HandStandPushups_g01_c01.avi", "v_Basketball_g02_c03.avi", "notes/readme.avi"]


def test_ucf_labels_from_filename():
    labels, report = T.labels_for(T.load_task("ucf101"), UCF_IDS)
    ucf = T.load_task("ucf101").classes
    np.testing.assert_array_equal(labels, [ucf.index("ApplyEyeMakeup"), ucf.index("YoYo"),
                                           ucf.index("HandstandPushups"), ucf.index("Basketball"), -1])
    assert report.num_labeled == 4 and report.unlabeled == ["notes/readme.avi"]
    assert "labeled 4 of 5 videos" in report.summary()


KIN_IDS = ["abseiling/xyz_000010_000020.mp4", "val/air_drumming/abc_000001_000011.mp4",
           "petting_animal_-not_cat-/p_000000_000010.mp4", "Petting Animal (Not Cat)/q_000005_000015.mp4",
           "massaging_persons_head/m_000000_000010.mp4", "dancing/unknown_000000_000010.mp4", "loose.mp4"]


def test_kinetics_parent_folder_variants():
    task = T.load_task("kinetics400")
    labels, report = T.labels_for(task, KIN_IDS)
    c = task.classes
    want = [c.index("abseiling"), c.index("air drumming"), c.index("petting animal (not cat)"),
            c.index("petting animal (not cat)"), c.index("massaging person's head"), -1, -1]
    np.testing.assert_array_equal(labels, want)
    assert report.unknown_labels == {"dancing": 1}
    assert report.unlabeled == ["dancing/unknown_000000_000010.mp4", "loose.mp4"]


def test_labels_csv_gives_same_labels_as_folders(tmp_path):
    task = T.load_task("kinetics400")
    folder_labels, _ = T.labels_for(task, KIN_IDS[:5])
    flat_ids = [i.split("/")[-1] for i in KIN_IDS[:5]]  # the same videos stored without class folders
    (tmp_path / "labels.csv").write_text(
        "video_id,label\n"
        "xyz_000010_000020,abseiling\n"                 # by stem
        "abc_000001_000011.mp4,air drumming\n"          # by exact id
        "p_000000_000010,petting animal (not cat)\n"
        "q_000005_000015,petting_animal_(not_cat)\n"
        "m_000000_000010,massaging person's head\n")
    csv_labels, report = T.labels_for(task, flat_ids, labels_csv=tmp_path / "labels.csv")
    np.testing.assert_array_equal(csv_labels, folder_labels)
    assert report.num_labeled == 5


def test_labels_match_classes_ignoring_spaces(tmp_path):
    """UCF101's class names are CamelCase ('RockClimbingIndoor'); a labels CSV written with spaces matches."""
    task = T.load_task("ucf101")
    ids = ["a.avi", "b.avi", "c.avi"]
    (tmp_path / "labels.csv").write_text("video_id,label\na.avi,Rock Climbing Indoor\nb.avi,yo-yo\nc.avi,apply eye makeup\n")
    labels, report = T.labels_for(task, ids, labels_csv=tmp_path / "labels.csv")
    assert [task.classes[i] for i in labels] == ["RockClimbingIndoor", "YoYo", "ApplyEyeMakeup"]
    assert report.num_labeled == 3


def test_labels_csv_rows_without_a_stored_video_are_reported(tmp_path):
    (tmp_path / "labels.csv").write_text("video_id,label\nxyz_000010_000020,abseiling\nghost,abseiling\n"
                                         "gone.mp4,air drumming\n")
    labels, report = T.labels_for(T.load_task("kinetics400"), ["xyz_000010_000020.mp4", "loose.mp4"],
                                  labels_csv=tmp_path / "labels.csv")
    np.testing.assert_array_equal(labels, [0, -1])
    assert report.without_video == ["ghost", "gone.mp4"] and report.unlabeled == ["loose.mp4"]
    assert "2 labeled videos are not in the store (e.g. ghost, gone.mp4)" in report.summary()
    _, by_folder = T.labels_for(T.load_task("kinetics400"), KIN_IDS)
    assert by_folder.without_video == []  # labels taken from the ids themselves cannot lack a video


def test_official_kinetics_csv_and_ucf_csv(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "abseiling,xyz,10,20,val\nair drumming,abc,1,11,val\n")
    labels, _ = T.labels_for(T.load_task("kinetics400"), ["xyz_000010_000020.mp4", "abc_000001_000011.mp4"],
                             labels_csv=tmp_path / "k.csv")
    np.testing.assert_array_equal(labels, [0, 1])
    ucf = T.load_task("ucf101")
    (tmp_path / "u.csv").write_text("video_id,label\n" + "".join(
        f"{i.split('/')[-1]},{lab}\n" for i, lab in zip(UCF_IDS[:4], ["ApplyEyeMakeup", "YoYo", "HandstandPushups",
                                                                     "Basketball"])))
    by_csv, _ = T.labels_for(ucf, [i.split("/")[-1] for i in UCF_IDS[:4]], labels_csv=tmp_path / "u.csv")
    by_name, _ = T.labels_for(ucf, UCF_IDS[:4])
    np.testing.assert_array_equal(by_csv, by_name)


def test_labels_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("id,class\na,b\n")
    with pytest.raises(InputError, match=r"expected a header 'video_id,label'"):
        T.labels_for(T.load_task("ucf101"), ["a"], labels_csv=tmp_path / "bad.csv")
    (tmp_path / "two.csv").write_text("video_id,label\na,YoYo\na,Punch\n")
    with pytest.raises(InputError, match=r"video 'a' has two labels"):
        T.labels_for(T.load_task("ucf101"), ["a"], labels_csv=tmp_path / "two.csv")
    with pytest.raises(InputError, match="only apply to classification"):
        T.labels_for(T.load_task("msrvtt"), ["a"])
