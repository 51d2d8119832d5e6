"""The LiFT-HRA prompt style beside LiFT's own: twins read alike, mixed files, unplaceable rows, brackets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.critic.data import (RatedDataError, RatedExample, hra_user_text, load_rated_data, scan_rated_data,
                                  to_hra_entry, to_lift_entry, write_lift)
from tests.unit.test_critic_data import _examples, _key, videos  # noqa: F401  (videos: a fixture)
from service.rubric import DIMENSION_NAMES


# The same rated videos and examples as LiFT-style reading uses (its twins in the other style are built below).


def _dump(path: Path, entries: list) -> Path:
    """One entry per line, so entry i starts on line i + 2."""
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n", encoding="utf-8")
    return path


def test_hra_rows_read_as_their_lift_twins(tmp_path: Path, videos: Path) -> None:
    examples = _examples(videos)
    assert {ex.dimension for ex in examples} == set(DIMENSION_NAMES)  # all three dimensions
    lift = write_lift(tmp_path / "lift.json", examples, relative_to=videos)
    hra = write_lift(tmp_path / "hra.json", examples, relative_to=videos, style="hra")
    assert lift.read_text() != hra.read_text()
    rows = json.loads(hra.read_text())
    assert [r["video_id"] for r in rows] == ["a", "a", "a", "b"] and rows[0]["video"] == "a.mp4"
    human = rows[1]["conversations"][0]["value"]
    assert human.startswith("<video>\nSuppose you are an expert in judging and evaluating the quality of AI-generated")
    assert "Then identify the motion issues in this video, focusing on the continuity" in human
    assert "Provide a rating evaluation: Good, Normal, or Bad" in human
    assert human.endswith("Your task is provided as follows: Text Prompt: [a red car on a road]")

    from_lift, from_hra = load_rated_data(lift, videos), load_rated_data(hra, videos)
    assert [_key(e) for e in from_hra] == [_key(e) for e in from_lift] == [_key(e) for e in examples]
    assert [e.answer for e in from_hra] == [e.answer for e in examples]
    assert scan_rated_data(hra, videos).label_counts()["video_fidelity"] == {"Good": 1, "Normal": 0, "Bad": 1}


def test_a_mixed_file_reads_every_entry_in_order(tmp_path: Path, videos: Path) -> None:
    examples = _examples(videos)
    entries = [(to_lift_entry if i % 2 else to_hra_entry)(ex, ex.video.name) for i, ex in enumerate(examples)]
    path = _dump(tmp_path / "mixed.json", entries)
    report = scan_rated_data(path, videos)
    assert report.ok, report.problems
    assert [_key(e) for e in report.examples] == [_key(e) for e in examples]
    assert [e.line for e in report.examples] == [2, 3, 4, 5]


def test_wording_is_not_required_only_the_issue_and_the_text_prompt(tmp_path: Path, videos: Path) -> None:
    """The exact HRA text is not pinned: another preamble, a lower-case 'text prompt:', no space before '['."""
    human = ("<video>\nYou judge AI videos. Then identify the Fidelity issues in this video, assessing realism.\n"
             "Answer Good, Normal, or Bad.\ntext prompt:[a fox in snow]  ")
    entry = {"video_id": "b", "conversations": [{"from": "human", "value": human},
                                                 {"from": "gpt", "value": "Normal. Fur smears."}]}
    (ex,) = load_rated_data(_dump(tmp_path / "loose.json", [entry]), videos)
    # no "video": LiFT's loader falls back to "<video_id>.mp4"
    assert _key(ex) == (videos / "b.mp4", "a fox in snow", "video_fidelity", "Normal", "Fur smears.")


def test_captions_with_brackets_and_quotes(tmp_path: Path, videos: Path) -> None:
    captions = ["a sign reading [OPEN] above a door", "[cinematic] a cat", "a list: [1, 2, [3]]",
                "the words Text Prompt: [x] painted on a wall", 'a "quoted" word and a ] alone']
    examples = [RatedExample(videos / "a.mp4", c, DIMENSION_NAMES[i % 3], "Good", "ok")
                for i, c in enumerate(captions)]
    path = write_lift(tmp_path / "brackets.json", examples, relative_to=videos, style="hra")
    assert [e.caption for e in load_rated_data(path, videos)] == captions
    lift_twin = write_lift(tmp_path / "brackets_lift.json", examples, relative_to=videos)
    assert [e.caption for e in load_rated_data(lift_twin, videos)] == captions


def test_rows_that_cannot_be_placed_are_reported_with_their_line(tmp_path: Path, videos: Path) -> None:
    ok = to_hra_entry(_examples(videos)[0], "a.mp4")

    def with_human(text: str) -> dict:
        return {**ok, "conversations": [{"from": "human", "value": "<video>\n" + text}, ok["conversations"][1]]}

    entries = [
        ok,
        with_human("Suppose you are an expert. Then identify the beauty issues in this video.\n"
                   "Your task is provided as follows: Text Prompt: [a red car]"),  # no rubric dimension
        with_human("Please rate this video.\nText Prompt: [a red car]"),  # no issue asked at all
        with_human("Then identify the motion issues and identify the fidelity issues in this video.\n"
                   "Text Prompt: [a red car]"),  # two dimensions
        with_human(hra_user_text("a red car", "motion_smoothness").replace("Text Prompt: [a red car]", "")),
        with_human(hra_user_text("   ", "video_fidelity")),  # empty caption
        {**ok, "conversations": [ok["conversations"][0], {"from": "gpt", "value": "Fine. meh"}]},  # strict labels
        {**ok, "video": "missing.mp4"},
    ]
    path = _dump(tmp_path / "broken.json", entries)
    report = scan_rated_data(path, videos)
    assert [e.line for e in report.examples] == [2]
    by_line = {p.line: p.message for p in report.problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert "unknown question" in by_line[3] and "none of the rubric's issues" in by_line[3]
    assert "unknown question" in by_line[4]
    assert "several dimensions (motion_smoothness, video_fidelity)" in by_line[5]
    assert "unknown question" in by_line[6]  # the caption slot is gone: not placeable either way
    assert "empty caption" in by_line[7]
    assert "malformed answer 'Fine. meh'" in by_line[8]
    assert "video not found" in by_line[9] and "missing.mp4" in by_line[9]
    with pytest.raises(RatedDataError) as info:
        load_rated_data(path, videos)
    assert len(info.value.problems) == 7 and "line 3:" in info.value.message


def test_write_lift_refuses_an_unknown_style(tmp_path: Path, videos: Path) -> None:
    with pytest.raises(ValueError, match="unknown prompt style"):
        write_lift(tmp_path / "x.json", _examples(videos), style="sharegpt")  # type: ignore[arg-type]
