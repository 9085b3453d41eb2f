"""Annotation readers on small files written in each official layout, and id matching."""

import json

import numpy as np
import pytest

from vfeat.errors import InputError
from vfeat.evaluate import annotations as A
from vfeat.evaluate.metrics import retrieval_metrics


def test_generic_csv_and_jsonl(tmp_path):
    (tmp_path / "c.csv").write_text('video_id,caption,extra\nv1,"a dog, running",x\nv1,  two   spaces ,y\nv2,cat,z\n')
    assert A.read_generic(tmp_path / "c.csv") == [("v1", "a dog, running"), ("v1", "two spaces"), ("v2", "cat")]
    (tmp_path / "c.jsonl").write_text('{"video_id": "v1", "caption": "a"}\n\n{"video_id": 7, "caption": "b"}\n')
    assert A.read_generic(tmp_path / "c.jsonl") == [("v1", "a"), ("7", "b")]
    (tmp_path / "bad.csv").write_text("id,text\nv1,a\n")
    with pytest.raises(InputError, match=r"bad\.csv: expected a header with columns video_id, caption.*missing video_id, caption"):
        A.read_generic(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("video_id,caption\nv1,\n")
    with pytest.raises(InputError, match=r"empty\.csv row 2: empty caption"):
        A.read_generic(tmp_path / "empty.csv")
    with pytest.raises(InputError, match="does not exist"):
        A.read_generic(tmp_path / "missing.csv")


def test_csv_captions_with_line_breaks_and_files_that_are_not_csv(tmp_path):
    """A quoted caption spanning lines was glued together ("a manis talking"): the file was split into lines
    before the CSV parser saw it. A header without rows said the header was missing; a JSON file was read as
    a CSV whose header was its first line."""
    (tmp_path / "nl.csv").write_text('video_id,caption\nv1,"a man\nis talking"\nv2,a cat\n')
    assert A.read_generic(tmp_path / "nl.csv") == [("v1", "a man is talking"), ("v2", "a cat")]
    (tmp_path / "header.csv").write_text("video_id,caption\n")
    with pytest.raises(InputError, match=r"missing rows \(header: video_id, caption\)"):
        A.read_generic(tmp_path / "header.csv")
    (tmp_path / "msrvtt.json").write_text(json.dumps({"videos": [{"video_id": "video0"}], "sentences": []}))
    with pytest.raises(InputError, match=r"msrvtt\.json: a JSON file\. --captions without a task reads a CSV"):
        A.read_generic(tmp_path / "msrvtt.json")


def test_msrvtt_jsfusion(tmp_path):
    p = tmp_path / "MSRVTT_JSFUSION_test.csv"
    p.write_text("key,vid_key,video_id,sentence\n"
                 "ret0,msr9770,video9770,a person is connecting something to system\n"
                 "ret1,msr7606,video7606,a little girl does gymnastics\n")
    assert A.read_captions(p, "msrvtt_jsfusion_csv") == [
        ("video9770", "a person is connecting something to system"), ("video7606", "a little girl does gymnastics")]


def test_didemo_paragraphs(tmp_path):
    p = tmp_path / "test_data.json"
    p.write_text(json.dumps([
        {"video": "111@N00_222_aaa.mov", "description": "a dog runs", "times": [[0, 0]], "annotation_id": 1},
        {"video": "333@N00_444_bbb.mp4", "description": "the car stops.", "times": [[1, 2]], "annotation_id": 2},
        {"video": "111@N00_222_aaa.mov", "description": " it jumps ", "times": [[2, 3]], "annotation_id": 3},
    ]))
    assert A.read_captions(p, "didemo_json") == [("111@N00_222_aaa.mov", "a dog runs it jumps"),
                                                 ("333@N00_444_bbb.mp4", "the car stops.")]
    (tmp_path / "bad.json").write_text(json.dumps({"video": "x"}))
    with pytest.raises(InputError, match="expected a JSON list"):
        A.read_didemo(tmp_path / "bad.json")


def test_activitynet_paragraphs(tmp_path):
    p = tmp_path / "val_1.json"
    p.write_text(json.dumps({
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 54.32]],
                          "sentences": ["A weight lifting tutorial is given.", "  The coach helps the guy."]},
        "v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[0, 10.2]], "sentences": ["Three men are standing."]},
    }))
    assert A.read_captions(p, "activitynet_captions_json") == [
        ("v_uqiMw7tQ1Cc", "A weight lifting tutorial is given. The coach helps the guy."),
        ("v_bXdq2zI1Ms0", "Three men are standing.")]


def test_youcook2_clip_and_paragraph(tmp_path):
    p = tmp_path / "youcookii_annotations_trainval.json"
    p.write_text(json.dumps({"database": {
        "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on bread"}]},
        "xHr8X2Wpmno": {"duration": 200.0, "subset": "validation", "recipe_type": "201",
                        "annotations": [{"segment": [10, 20], "id": 0, "sentence": "add flour"},
                                        {"segment": [25, 40], "id": 1, "sentence": "mix well"}]},
    }}))
    assert A.read_captions(p, "youcook2_json", subset="validation", level="clip") == [
        ("xHr8X2Wpmno_0", "add flour"), ("xHr8X2Wpmno_1", "mix well")]
    assert A.read_youcook2(p, level="paragraph") == [("xHr8X2Wpmno", "add flour mix well")]
    seg = A.read_youcook2_segments(p)[1]
    assert (seg.video_id, seg.clip_id, seg.start_s, seg.end_s) == ("xHr8X2Wpmno", "xHr8X2Wpmno_1", 25.0, 40.0)
    with pytest.raises(InputError, match=r"no video in subset 'testing'; subsets present: training, validation"):
        A.read_youcook2(p, subset="testing")
    with pytest.raises(InputError, match="Invalid YouCook2 level"):
        A.read_youcook2(p, level="video")


def test_lsmdc_tab_separated(tmp_path):
    p = tmp_path / "LSMDC16_challenge_1000_publictect.csv"
    p.write_text("1010_TITANIC_00.41.32.072-00.41.40.196\t00.41.32.072\t00.41.40.196\t00.41.32.500\t00.41.40.000"
                 "\tSOMEONE leads her away.\n"
                 "1010_TITANIC_00.42.01.000-00.42.05.000\ta\tb\tc\td\tShe turns, then\tlooks back.\n")
    assert A.read_captions(p, "lsmdc_csv") == [
        ("1010_TITANIC_00.41.32.072-00.41.40.196", "SOMEONE leads her away."),
        ("1010_TITANIC_00.42.01.000-00.42.05.000", "She turns, then looks back.")]
    (tmp_path / "short.csv").write_text("a\tb\tc\n")
    with pytest.raises(InputError, match=r"short\.csv line 1: expected 6 tab-separated fields.*got 3"):
        A.read_lsmdc(tmp_path / "short.csv")


def test_webvid(tmp_path):
    p = tmp_path / "results_2M_val.csv"
    p.write_text('videoid,contentUrl,duration,page_dir,name\n'
                 '31353427,https://example.invalid/a.mp4,PT00H00M15S,005_dir,"Aerial view, rice fields"\n')
    assert A.read_captions(p, "webvid_csv") == [("31353427", "Aerial view, rice fields")]


def test_read_captions_unknown_format(tmp_path):
    with pytest.raises(InputError, match=r"Unknown caption format 'srt'\. Choose one of: activitynet"):
        A.read_captions(tmp_path / "x", "srt")
    (tmp_path / "c.csv").write_text("video_id,caption\nv,a\n")
    with pytest.raises(InputError, match="does not take these options"):
        A.read_captions(tmp_path / "c.csv", "generic", subset="x")


def test_multiple_choice(tmp_path):
    p = tmp_path / "mc.csv"
    p.write_text("video_id,candidate_1,candidate_2,candidate_3,answer_index\n"
                 "v1,a dog,a cat,a bird,2\nv2,yes,no,,0\n")
    qs = A.read_multiple_choice(p)
    assert qs[0] == A.Question("v1", ("a dog", "a cat", "a bird"), 2)
    assert qs[1] == A.Question("v2", ("yes", "no"), 0)
    (tmp_path / "bad.csv").write_text("video_id,candidate_1,candidate_2,answer_index\nv1,a,b,2\n")
    with pytest.raises(InputError, match=r"row 2: answer_index 2 is outside 0\.\.1 \(it is 0-based"):
        A.read_multiple_choice(tmp_path / "bad.csv")
    (tmp_path / "gap.csv").write_text("video_id,candidate_1,candidate_2,answer_index\nv1,,b,0\n")
    with pytest.raises(InputError, match="only trailing cells may be blank"):
        A.read_multiple_choice(tmp_path / "gap.csv")


@pytest.mark.parametrize("vid,stem", [
    ("video7010", "video7010"), ("video7010.mp4", "video7010"), ("sub/dir/video7010.mp4", "video7010"),
    ("1010_TITANIC_00.41.32.072-00.41.40.196", "1010_TITANIC_00.41.32.072-00.41.40.196"),
    ("1010_TITANIC_00.41.32.072-00.41.40.196.avi", "1010_TITANIC_00.41.32.072-00.41.40.196"),
    ("111@N00_222_aaa.mov", "111@N00_222_aaa"), ("x.tar.gz", "x.tar"), (".hidden", ".hidden"),
])
def test_id_stem(vid, stem):
    assert A.id_stem(vid) == stem


def test_match_ids_exact_stem_prefix_and_report():
    m = A.match_ids(["video7010", "video7011.mp4", "v_abc", "v_def", "gone"],
                    ["sub/video7010.mp4", "video7011.mp4", "abc.mp4", "v_def.webm", "extra1.mp4", "extra2.mp4"],
                    strip_prefix="v_")
    assert m.mapping == {"video7010": "sub/video7010.mp4", "video7011.mp4": "video7011.mp4",
                         "v_abc": "abc.mp4", "v_def": "v_def.webm"}
    assert m.unmatched_annotations == ["gone"] and m.unmatched_store == ["extra1.mp4", "extra2.mp4"]
    assert m.summary() == ("matched 4 of 5 annotated videos to stored videos; 1 annotated videos are not in the "
                           "store (e.g. gone); 2 stored videos have no annotation (e.g. extra1.mp4, extra2.mp4)")
    assert A.match_ids(["v_abc"], ["abc.mp4"]).unmatched_annotations == ["v_abc"]  # no prefix, no guess


def test_match_ids_ambiguity_is_an_error():
    with pytest.raises(InputError, match=r"'video1' matches 2 stored videos by file stem \(a/video1\.mp4, b/video1\.mp4\)"):
        A.match_ids(["video1"], ["a/video1.mp4", "b/video1.mp4"])
    assert A.match_ids(["a/video1.mp4"], ["a/video1.mp4", "b/video1.mp4"]).mapping == {"a/video1.mp4": "a/video1.mp4"}
    with pytest.raises(InputError, match=r"Annotation ids 'x\.mov' and 'x\.mp4' both match stored video 'x\.webm'"):
        A.match_ids(["x.mov", "x.mp4"], ["x.webm"])


def test_build_retrieval_index_end_to_end():
    pairs = [("video2", "cap a"), ("video1", "cap b"), ("video2", "cap c"), ("video9", "cap lost")]
    store = ["clips/video1.mp4", "clips/video2.mp4", "clips/video3.mp4"]
    idx = A.build_retrieval_index(pairs, store)
    assert idx.video_ids == ["clips/video1.mp4", "clips/video2.mp4"]  # gallery: annotated videos, store order
    assert idx.captions == ["cap a", "cap b", "cap c"]
    np.testing.assert_array_equal(idx.caption_video, [1, 0, 1])
    assert idx.num_dropped_captions == 1 and idx.match.unmatched_store == ["clips/video3.mp4"]
    sim = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]])
    assert retrieval_metrics(sim, idx.caption_video)["t2v_r1"] == 100.0
    with pytest.raises(InputError, match=r"Some annotated videos are not in the store: matched 2 of 3"):
        A.build_retrieval_index(pairs, store, require_all=True)
    with pytest.raises(InputError, match="No annotated video is in the store"):
        A.build_retrieval_index([("zzz", "c")], store)
