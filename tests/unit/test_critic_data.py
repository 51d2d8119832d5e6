"""Readers for rated data: LiFT's training format and the plain JSONL, good files and broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.critic.data import (RatedDataError, RatedExample, detect_format, load_rated_data, scan_rated_data,
                                  write_jsonl, write_lift)
from finetune.critic.synthetic import write_mp4
from service.rubric import DIMENSIONS, dimension


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rated_videos")
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.mp4"):
        write_mp4(folder / name, rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    return folder


def _examples(videos: Path) -> list[RatedExample]:
    return [
        RatedExample(videos / "a.mp4", "a red car on a road", "semantic_consistency", "Good", "Matches the text."),
        RatedExample(videos / "a.mp4", "a red car on a road", "motion_smoothness", "Normal", "Some stutter."),
        RatedExample(videos / "a.mp4", "a red car on a road", "video_fidelity", "Bad", "The wheels melt."),
        RatedExample(videos / "b.mp4", "two dogs, one says \"hi\"", "video_fidelity", "Good", ""),
    ]


def _key(ex: RatedExample) -> tuple:
    return (ex.video, ex.caption, ex.dimension, ex.label, ex.reason)


@pytest.mark.parametrize("fmt", ["lift", "jsonl"])
def test_round_trip_both_formats(tmp_path: Path, videos: Path, fmt: str) -> None:
    examples = _examples(videos)
    path = tmp_path / ("rated.json" if fmt == "lift" else "rated.jsonl")
    (write_lift if fmt == "lift" else write_jsonl)(path, examples, relative_to=videos)
    assert str(videos) not in path.read_text()  # relative video paths, as LiFT's files are

    read = load_rated_data(path, videos)
    assert [_key(e) for e in read] == [_key(e) for e in examples]
    report = scan_rated_data(path, videos)
    assert report.ok and report.format == fmt
    assert report.label_counts()["video_fidelity"] == {"Good": 1, "Normal": 0, "Bad": 1}


def test_lift_format_as_released(tmp_path: Path, videos: Path) -> None:
    """A hand-written file in LiFT's layout: the question names the dimension, the caption is what precedes it."""
    q = dimension("motion_smoothness").question
    entries = [
        {"video": "a.mp4", "id": 7, "conversations": [
            {"from": "human", "value": f"<video>\nA cat jumps over a fence.{q}"},
            {"from": "gpt", "value": "Bad. The cat teleports mid-jump."}]},
        {"video": str(videos / "b.mp4"), "conversations": [  # absolute paths work too
            {"from": "human", "value": "<video>\nsunset" + dimension("video_fidelity").question},
            {"from": "gpt", "value": "Good."}]},
    ]
    path = tmp_path / "lift.json"
    path.write_text(json.dumps(entries, indent=2))
    a, b = load_rated_data(path, videos)
    assert (a.video, a.caption, a.dimension, a.label, a.reason) == (
        videos / "a.mp4", "A cat jumps over a fence.", "motion_smoothness", "Bad", "The cat teleports mid-jump.")
    assert (b.caption, b.dimension, b.label, b.reason) == ("sunset", "video_fidelity", "Good", "")
    assert a.line == 2 and b.line > a.line  # the line each entry starts on
    assert a.answer == "Bad. The cat teleports mid-jump."


def test_lift_format_problems_all_reported_with_lines(tmp_path: Path, videos: Path) -> None:
    sc = DIMENSIONS[0].question
    good = {"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\nok" + sc},
                                                 {"from": "gpt", "value": "Good. fine"}]}
    entries = [
        good,
        {"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\na cat. Is this video nice?"},
                                              {"from": "gpt", "value": "Good. yes"}]},  # unknown question
        {"video": "missing.mp4", "conversations": good["conversations"]},  # missing video
        {"video": "a.mp4", "conversations": [good["conversations"][0],
                                              {"from": "gpt", "value": "Great. lovely"}]},  # not a label
        {"video": "a.mp4", "conversations": [good["conversations"][0],
                                              {"from": "gpt", "value": "good. lower case"}]},  # not guessed either
        {"video": "a.mp4"},  # no conversations
        "not an object",
    ]
    # one entry per line, so each problem's line is the entry's index + 2
    path = tmp_path / "broken.json"
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")

    report = scan_rated_data(path, videos)
    assert len(report.examples) == 1 and report.examples[0].line == 2
    by_line = {p.line: p.message for p in report.problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert "unknown question" in by_line[3]
    assert "video not found" in by_line[4] and "missing.mp4" in by_line[4]
    assert "malformed answer 'Great. lovely'" in by_line[5]
    assert "malformed answer 'good. lower case'" in by_line[6]
    assert "conversations" in by_line[7]
    assert "must be an object" in by_line[8]

    with pytest.raises(RatedDataError) as info:
        load_rated_data(path, videos)
    err = info.value
    assert err.code == "invalid_rated_data" and len(err.problems) == 6
    for line in (3, 4, 5, 6, 7, 8):
        assert f"line {line}:" in err.message


def test_lift_format_invalid_json_names_the_line(tmp_path: Path, videos: Path) -> None:
    path = tmp_path / "truncated.json"
    path.write_text('[\n {"video": "a.mp4",\n  "conversations": [\n')
    with pytest.raises(RatedDataError, match=r"line \d+: invalid JSON"):
        load_rated_data(path, videos)
    obj = tmp_path / "object.json"
    obj.write_text('{"video": "a.mp4"}')
    with pytest.raises(RatedDataError, match=r"line 1: invalid JSON .*expected a JSON list"):
        load_rated_data(obj, videos)


def test_jsonl_problems_all_reported_with_lines(tmp_path: Path, videos: Path) -> None:
    ok = {"video": "a.mp4", "prompt": "a red car", "dimension": "video_fidelity", "label": "Good", "reason": "sharp"}
    lines = [
        json.dumps(ok),
        "{not json",
        json.dumps({**ok, "dimension": "aesthetics"}),
        json.dumps({**ok, "label": "Excellent"}),
        json.dumps({**ok, "label": "good"}),
        json.dumps({**ok, "video": "gone.mp4"}),
        json.dumps({k: v for k, v in ok.items() if k != "prompt"}),
        "",  # blank lines are allowed
        json.dumps({**ok, "reason": None, "dimension": "motion_smoothness"}),  # reason is optional
        json.dumps([1, 2]),
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = scan_rated_data(path, videos)
    assert [e.line for e in report.examples] == [1, 9]
    by_line = {p.line: p.message for p in report.problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 10]
    assert "invalid JSON" in by_line[2]
    assert "unknown dimension 'aesthetics'" in by_line[3]
    assert "malformed label 'Excellent'" in by_line[4]
    assert "malformed label 'good'" in by_line[5]
    assert "video not found" in by_line[6]
    assert "missing field(s): prompt" in by_line[7]
    assert "must be a JSON object" in by_line[10]
    with pytest.raises(RatedDataError) as info:
        load_rated_data(path, videos)
    assert len(info.value.problems) == 7


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(RatedDataError, match="file not found"):
        load_rated_data(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(RatedDataError, match="no rated examples"):
        load_rated_data(empty)
    empty_list = tmp_path / "empty.json"
    empty_list.write_text("[]")
    with pytest.raises(RatedDataError, match="no rated examples"):
        load_rated_data(empty_list)


def test_format_detection(tmp_path: Path) -> None:
    a = tmp_path / "data.txt"
    a.write_text("  \n[ {} ]")
    b = tmp_path / "data2"
    b.write_text('{"video": "x"}\n')
    assert detect_format(a) == "lift" and detect_format(b) == "jsonl"
    assert detect_format(tmp_path / "x.json") == "lift" and detect_format(tmp_path / "x.jsonl") == "jsonl"


def test_check_videos_off_reads_paths_as_given(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"video": "elsewhere/v.mp4", "prompt": "p", "dimension": "video_fidelity",
                                "label": "Bad", "reason": "r"}) + "\n")
    (ex,) = load_rated_data(path, tmp_path / "vids", check_videos=False)
    assert ex.video == tmp_path / "vids" / "elsewhere" / "v.mp4"
