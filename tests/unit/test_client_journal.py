"""The labels journal and the manifest reader on real files: torn tails, duplicates, error redo, ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.journal import Journal, iter_records
from clients.label_outputs import error_record, export_lift, summarize
from clients.manifest import item_id, read_manifest
from service.errors import InvalidRequest, MediaNotFound


def _ok(i: str, reward: float = 0.5) -> dict:
    dim = {"label": "Good", "score": 0.9, "expected_score": 0.8, "probabilities": {"Good": 0.9, "Normal": 0.05, "Bad": 0.05}, "rationale": "r"}
    return {"id": i, "video": f"{i}.mp4", "prompt": f"p {i}", "status": "ok", "reward": reward, "expected_reward": reward,
            "dimensions": {d: dim for d in ("semantic_consistency", "motion_smoothness", "video_fidelity")}}


def test_torn_tail_is_cut_even_past_a_read_block(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    j = Journal(path)
    j.load()
    j.open()
    for k in range(3000):  # > 64 KiB so the backwards scan crosses blocks
        j.append(_ok(f"id{k}"))
    j.close()
    whole = path.read_bytes()
    assert len(whole) > 1 << 17
    path.write_bytes(whole + b'{"id": "id3000", "vid')
    j2 = Journal(path)
    done = j2.load()
    assert j2.repaired_bytes == len(b'{"id": "id3000", "vid')
    assert len(done) == 3000 and "id3000" not in done
    assert path.read_bytes() == whole


def test_a_file_without_any_newline_is_all_torn(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b'{"id": "a", "stat')
    j = Journal(path)
    assert j.load() == {}
    assert path.read_bytes() == b""


def test_a_garbage_complete_line_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(_ok("a")) + "\nthis is not json\n" + json.dumps(_ok("b")) + "\n")
    with pytest.raises(InvalidRequest, match=r"l\.jsonl:2 is not a labels record"):
        Journal(path).load()


def test_duplicates_are_compacted_ok_wins(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    recs = [error_record("a", "a.mp4", "p", "invalid_video", "x"), _ok("b"), _ok("a", 0.7), _ok("b", 0.1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    j = Journal(path)
    assert j.load() == {"a": "ok", "b": "ok"}
    out = list(iter_records(path))
    assert [(r["id"], r["reward"]) for r in out] == [("a", 0.7), ("b", 0.5)]


def test_drop_errors_then_append_keeps_one_line_per_id(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    j = Journal(path)
    j.load()
    j.open()
    j.append(_ok("a"))
    j.append(error_record("b", "b.mp4", "p", "invalid_video", "broken"))
    j.append(_ok("a", 0.9))  # a finished id is never written twice
    j.close()
    j = Journal(path)
    assert j.load() == {"a": "ok", "b": "error"}
    assert j.drop_errors() == 1
    assert j.status == {"a": "ok"}
    j.open()
    j.append(_ok("b"))
    j.close()
    recs = list(iter_records(path))
    assert [r["id"] for r in recs] == ["a", "b"] and recs[0]["reward"] == 0.5
    assert not (tmp_path / "l.jsonl.tmp").exists()


def test_summary_and_export_follow_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    recs = [_ok("a", 0.9), _ok("b", 0.3), error_record("c", "c.mp4", "p", "video_not_found", "x"), _ok("stale", 0.1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(path, ["b", "a", "c", "d"])
    assert (s.total, s.ok, s.errors, s.missing) == (4, 2, 1, 1)
    assert s.mean_reward == pytest.approx(0.6)
    assert s.labels["video_fidelity"]["Good"] == 2
    assert s.error_codes == {"video_not_found": 1}
    text = s.format()
    assert "labeled 2 of 4" in text and "video_not_found 1" in text and "semantic_consistency" in text
    n = export_lift(path, ["b", "a", "c"], tmp_path / "lift.json")
    assert n == 2
    assert json.loads((tmp_path / "lift.json").read_text()) == [
        {"video": "b.mp4", "caption": "p b", "score": 0.3}, {"video": "a.mp4", "caption": "p a", "score": 0.9}]


def test_manifest_ids_duplicates_problems_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "near.mp4").write_bytes(b"x")
    (tmp_path / "cwd.mp4").write_bytes(b"x")
    m = tmp_path / "data" / "m.jsonl"
    lines = [
        {"video": "near.mp4", "prompt": "a"},
        {"id": 7, "video": "cwd.mp4", "prompt": "b"},
        {"video": "near.mp4", "prompt": "a"},  # same video+prompt: same item
        {"id": "7", "video": "other.mp4", "prompt": "c"},  # same explicit id: skipped
        {"video": "https://host/v.mp4", "caption": "LiFT's key works too"},
        {"video": "", "prompt": "x"},
        ["not", "an", "object"],
    ]
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n{broken\n")
    monkeypatch.chdir(tmp_path)
    man = read_manifest(m)
    ids = [it.id for it in man.items]
    assert ids[0] == item_id("near.mp4", "a") and ids[0].startswith("h") and len(ids[0]) == 17
    assert ids[1] == "7" and man.duplicates == 2
    assert [it.problem is None for it in man.items] == [True, True, True, False, False, False]
    assert [it.id for it in man.items[3:]] == ["line-6", "line-7", "line-9"]
    assert man.resolve("near.mp4") == tmp_path / "data" / "near.mp4"
    assert man.resolve("cwd.mp4") == (tmp_path / "cwd.mp4").resolve()
    assert man.resolve("https://host/v.mp4") == "https://host/v.mp4"
    # Stable across runs and line order: a pure function of (video, prompt).
    assert item_id("near.mp4", "a") == item_id("near.mp4", "a") != item_id("near.mp4", "b")
    with pytest.raises(MediaNotFound):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidRequest, match="no items"):
        read_manifest(tmp_path / "empty.jsonl")
