"""Input expansion: ids are paths relative to the argument they were found under (POSIX separators),
directories are searched recursively by video extension, collisions are refused before any work."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vfeat.errors import InputError
from vfeat.sources import expand_inputs, read_file_list, unique_sources


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def ids(sources) -> list[str]:
    return [s.video_id for s in sources]


def test_directory_is_searched_recursively_by_extension(tmp_path):
    root = tmp_path / "videos"
    for rel in ("b.mp4", "a/x.MKV", "a/deep/y.webm", "a/notes.txt", "c/.hidden.mp4", "c/z.ts", "d/cover.jpg"):
        touch(root / rel)
    found = expand_inputs([str(root)])
    assert ids(found) == ["a/deep/y.webm", "a/x.MKV", "b.mp4", "c/z.ts"]
    assert [Path(s.path) for s in found] == [root / i for i in ids(found)]


def test_files_a_directory_search_leaves_out_are_named_once(tmp_path, caplog):
    """Not silently: a DVD's .vob is a video, a raw .h264 stream or notes are named in one warning; hidden
    files and a store written beside the videos are not mentioned."""
    root = tmp_path / "videos"
    for rel in ("a.mp4", "VTS_01_1.VOB", "raw.h264", "notes.txt", ".DS_Store", "feats.h5", "s.zarr/zarr.json"):
        touch(root / rel)
    caplog.set_level("WARNING", logger="vfeat.sources")
    assert ids(expand_inputs([str(root)])) == ["VTS_01_1.VOB", "a.mp4"]
    (record,) = caplog.records
    assert record.getMessage() == (f"{root}: left out 2 file(s) whose extension is not a video's (notes.txt, raw.h264); "
                                   "name them to include them")


def test_a_link_back_up_is_searched_once(tmp_path, caplog):
    """``a/up -> ..`` stored the same video 41 times (a/x.mp4, a/up/a/x.mp4, ...) until paths grew too long."""
    root = tmp_path / "loop"
    touch(root / "a" / "x.mp4")
    (root / "a" / "up").symlink_to("..")
    (root / "b").symlink_to("a")  # a second name for a folder: searched once too
    caplog.set_level("WARNING", logger="vfeat.sources")
    assert ids(expand_inputs([str(root)])) == ["a/x.mp4"]
    assert sorted(r.getMessage() for r in caplog.records) == [
        "a/up: not searched again: a link to a folder already searched",
        "b: not searched again: a link to a folder already searched"]


def test_one_path_alone_is_one_input(tmp_path):
    """``vfeat.extract("videos", ...)``: the folder, not the inputs 'v', 'i', 'd', ... (or, for "videos/",
    a search of '/' from the trailing slash)."""
    root = tmp_path / "videos"
    touch(root / "a.mp4")
    assert ids(expand_inputs(str(root))) == ids(expand_inputs(root)) == ids(expand_inputs([root])) == ["a.mp4"]


def test_a_missing_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}/nope/: no such directory")):
        expand_inputs([f"{tmp_path}/nope/"])


def test_file_named_directly_gets_its_file_name(tmp_path):
    video = touch(tmp_path / "sub" / "clip one.mp4")
    (source,) = expand_inputs([str(video)])
    assert source.video_id == "clip one.mp4"
    assert source.path == str(video)


def test_missing_file_is_kept_to_fail_as_a_record(tmp_path):
    missing = tmp_path / "missing.mp4"
    (source,) = expand_inputs([str(missing)])
    assert (source.video_id, source.path) == ("missing.mp4", str(missing))


def test_glob_ids_are_relative_to_the_fixed_part(tmp_path):
    for rel in ("a/one.mp4", "a/sub/two.mp4", "a/three.mkv"):
        touch(tmp_path / rel)
    found = expand_inputs([str(tmp_path / "a" / "**" / "*.mp4")])
    assert sorted(ids(found)) == ["one.mp4", "sub/two.mp4"]


def test_inputs_keep_their_order(tmp_path):
    second = touch(tmp_path / "z.mp4")
    first_dir = tmp_path / "dir"
    touch(first_dir / "b.mp4")
    touch(first_dir / "a.mp4")
    assert ids(expand_inputs([str(second), str(first_dir)])) == ["z.mp4", "a.mp4", "b.mp4"]


def test_file_list_relative_to_its_folder(tmp_path):
    lists = tmp_path / "lists"
    touch(tmp_path / "videos" / "a.mp4")
    absolute = touch(tmp_path / "elsewhere" / "b.mp4")
    lists.mkdir()
    listing = lists / "paths.txt"
    listing.write_text(f"# a comment\n\n../videos/a.mp4\n   {absolute}  \n")
    found = read_file_list(str(listing))
    assert ids(found) == ["../videos/a.mp4", absolute.as_posix()]
    assert os.path.samefile(found[0].path, tmp_path / "videos" / "a.mp4")
    assert found[1].path == str(absolute)
    assert ids(expand_inputs([], file_list=str(listing))) == ids(found)


def test_file_list_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(InputError, match=f"^--file-list {re.escape(str(missing))}: file not found$"):
        read_file_list(str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(InputError, match=f"^--file-list {re.escape(str(empty))}: no paths in the file$"):
        read_file_list(str(empty))


def test_directory_without_videos_is_an_input_error(tmp_path):
    folder = tmp_path / "docs"
    touch(folder / "readme.txt")
    with pytest.raises(InputError, match=f"^{re.escape(str(folder))}: directory holds no video files \\(.*\\.mp4.*\\)$"):
        expand_inputs([str(folder)])


def test_glob_matching_nothing_is_an_input_error(tmp_path):
    pattern = str(tmp_path / "*.mp4")
    with pytest.raises(InputError, match=f"^{re.escape(pattern)}: pattern matches no file$"):
        expand_inputs([pattern])


def test_colliding_ids_are_refused_naming_both_files(tmp_path):
    a = touch(tmp_path / "day1" / "a.mp4")
    b = touch(tmp_path / "day2" / "a.mp4")
    message = (f"1 video id(s) collide: 'a.mp4' ({a} and {b}). Ids are paths relative to the argument they were "
               "found under; pass the common parent directory instead, or use --file-list.")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        expand_inputs([str(a), str(b)])
    # Their common parent gives distinct ids.
    assert ids(expand_inputs([str(tmp_path)])) == ["day1/a.mp4", "day2/a.mp4"]


def test_directories_with_same_relative_paths_collide(tmp_path):
    touch(tmp_path / "x" / "clip.mp4")
    touch(tmp_path / "y" / "clip.mp4")
    with pytest.raises(InputError, match=r"^1 video id\(s\) collide: 'clip.mp4'"):
        expand_inputs([str(tmp_path / "x"), str(tmp_path / "y")])


def test_same_file_twice_is_processed_once(tmp_path):
    video = touch(tmp_path / "a.mp4")
    found = expand_inputs([str(video), str(video)])
    assert ids(unique_sources(found)) == ["a.mp4"]
