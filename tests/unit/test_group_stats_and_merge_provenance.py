"""Group statistics (maths, failed items, metrics), provenance digests, and provenance in labels files:
`lift label merge` refuses parts of two critics (or rubrics) with a message naming both, unless told to;
the summary and Parquet carry provenance. Hand-written records, no engine."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from clients.cli import main as lift_main
from clients.journal import iter_records
from clients.label_outputs import PROVENANCE_COLUMNS, ok_record, summarize, to_parquet
from service.app.metrics import ServiceMetrics
from service.groups import ZERO_SPREAD_TOL, batch_groups, stat_keys
from service.protocol import BatchScoreItem, DimensionScore, LabelProbabilities, ScoreResponse
from service.provenance import (
    MAX_SAMPLE_BLOCKS,
    MIN_SAMPLE_BLOCKS,
    SAMPLE_BLOCK_BYTES,
    WHOLE_FILE_BYTES,
    CriticIdentity,
    checkpoint_digest,
    rubric_digest,
    sample_offsets,
)
from service.rubric import LABEL_SCORES

DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


def _resp(labels: tuple[str, str, str], p_good: float = 0.5) -> ScoreResponse:
    dims = {}
    for d, label in zip(DIMS, labels):
        probs = {"Good": p_good, "Normal": (1 - p_good) / 2, "Bad": (1 - p_good) / 2}
        dims[d] = DimensionScore(label=label, score=LABEL_SCORES[label], rationale=None,
                                 expected_score=sum(probs[k] * LABEL_SCORES[k] for k in probs),
                                 probabilities=LabelProbabilities(**probs))
    r = sum(x.score for x in dims.values()) / 3
    er = sum(x.expected_score for x in dims.values()) / 3
    return ScoreResponse(id="x", model="m", reward=r, expected_reward=er, num_frames=8, dimensions=dims)


# ---- groups ------------------------------------------------------------------------------------------
def test_group_statistics_population_std_zero_spread_and_failures() -> None:
    same = _resp(("Good", "Good", "Bad"), 0.7)
    a, b, c = _resp(("Good", "Bad", "Bad"), 0.2), _resp(("Bad", "Bad", "Bad"), 0.3), _resp(("Good", "Good", "Good"), 0.9)
    groups = batch_groups([("eq", same), (None, a), ("mixed", a), ("eq", same), ("mixed", None), ("mixed", b),
                           ("eq", None), ("mixed", c), ("gone", None)])
    assert set(groups) == {"eq", "mixed", "gone"}  # ungrouped items belong to none

    eq = groups["eq"]
    assert (eq.n, eq.scored, eq.failed) == (3, 2, 1)
    assert eq.reward.mean == pytest.approx(same.reward) and eq.reward.std == 0 and eq.reward.zero_spread
    assert eq.expected_reward.zero_spread and eq.dimensions["video_fidelity"].score.zero_spread

    mixed = groups["mixed"]
    assert (mixed.n, mixed.scored, mixed.failed) == (4, 3, 1)  # the failed item is left out, not a 0
    rewards = [a.reward, b.reward, c.reward]
    assert mixed.reward.mean == pytest.approx(statistics.fmean(rewards))
    assert mixed.reward.std == pytest.approx(statistics.pstdev(rewards))  # population std (ddof 0)
    assert mixed.reward.zero_spread is False
    sem = [x.dimensions["semantic_consistency"].expected_score for x in (a, b, c)]
    assert mixed.dimensions["semantic_consistency"].expected_score.std == pytest.approx(statistics.pstdev(sem))
    # motion: Bad, Bad, Good -> spread; fidelity: Bad, Bad, Good too; semantic labels Good, Bad, Good
    assert mixed.dimensions["motion_smoothness"].score.mean == pytest.approx((0.05 + 0.05 + 0.9) / 3)

    gone = groups["gone"]
    assert (gone.n, gone.scored, gone.failed) == (1, 0, 1)
    assert gone.reward.mean is None and gone.reward.std is None and gone.reward.zero_spread is None


def test_zero_spread_tolerance_and_single_item() -> None:
    x = _resp(("Good", "Good", "Good"), 0.6)
    y = _resp(("Good", "Good", "Good"), 0.6 + ZERO_SPREAD_TOL / 10)
    z = _resp(("Good", "Good", "Good"), 0.6 + 100 * ZERO_SPREAD_TOL)
    g = batch_groups([("a", x), ("a", y), ("b", x), ("b", z), ("one", x)])
    assert g["a"].expected_reward.zero_spread and not g["b"].expected_reward.zero_spread
    assert g["b"].reward.zero_spread  # same labels: the discrete reward has no spread, expected_reward has
    assert g["one"].reward.zero_spread and g["one"].reward.std == 0


def _metric(text: str, name: str, key: str) -> float:
    m = re.search(rf'^{name}\{{key="{re.escape(key)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_groups_of_two_or_more_scored_items() -> None:
    metrics = ServiceMetrics()
    same = _resp(("Good", "Normal", "Bad"))
    groups = batch_groups([("eq", same), ("eq", same), ("mixed", _resp(("Good",) * 3)), ("mixed", _resp(("Bad",) * 3)),
                           ("single", same), ("half", same), ("half", None)])
    metrics.observe_groups(groups)
    text = metrics.render().decode()
    assert set(stat_keys()) >= {"reward", "expected_reward", "motion_smoothness.score",
                                "motion_smoothness.expected_score"}
    for key in stat_keys():
        assert _metric(text, "lift_groups_total", key) == 2  # "eq" and "mixed"; singles say nothing
    assert _metric(text, "lift_zero_spread_groups_total", "reward") == 1
    assert _metric(text, "lift_zero_spread_groups_total", "expected_reward") == 2  # same p_good in "mixed"


def test_group_ids_in_the_request() -> None:
    item = {"prompt": "p", "video": {"path": "a.mp4"}}
    assert BatchScoreItem.model_validate({**item, "group": 7}).group == 7
    assert BatchScoreItem.model_validate(item).group is None
    for bad in ("", True, "x" * 257, 1.5):
        with pytest.raises(ValueError):
            BatchScoreItem.model_validate({**item, "group": bad})


# ---- provenance digests ------------------------------------------------------------------------------
def _checkpoint(root: Path, weights: bytes, config: str = '{"a": 1}') -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(config)
    (root / "model.safetensors").write_bytes(weights)
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text(str(root))  # not the checkpoint
    return root


def test_checkpoint_digest_is_cheap_and_tells_same_shaped_weights_apart(tmp_path: Path) -> None:
    size = 4 * WHOLE_FILE_BYTES
    base = bytes(size)
    a = _checkpoint(tmp_path / "a", base)
    assert checkpoint_digest(a) == checkpoint_digest(_checkpoint(tmp_path / "a2", base))  # same files, same digest
    offsets = sample_offsets(size)
    assert len(offsets) == MIN_SAMPLE_BLOCKS and offsets[0] == 0 and offsets[-1] == size - SAMPLE_BLOCK_BYTES
    run = offsets[1] - offsets[0] + SAMPLE_BLOCK_BYTES  # a changed run this long, anywhere, is seen
    for start in (0, size // 3, size // 2 + 123, size - run):
        changed = bytearray(base)
        changed[start:start + run] = b"\x01" * run  # a fine-tune's edit
        assert checkpoint_digest(_checkpoint(tmp_path / f"b{start}", bytes(changed))) != checkpoint_digest(a)
    # the limit, said plainly: bytes between two blocks are not read
    unseen = bytearray(base)
    unseen[offsets[1] - 10] = 1
    assert checkpoint_digest(_checkpoint(tmp_path / "between", bytes(unseen))) == checkpoint_digest(a)
    # 4 MiB apart, 16 to 4096 blocks a file: a 26 GB critic in 5 GB shards reads ~26 MB
    assert len(sample_offsets(5 << 30)) == 1280 and len(sample_offsets(64 << 30)) == MAX_SAMPLE_BLOCKS
    assert checkpoint_digest(_checkpoint(tmp_path / "c", base, '{"a": 2}')) != checkpoint_digest(a)
    assert checkpoint_digest(_checkpoint(tmp_path / "d", base[:-1])) != checkpoint_digest(a)  # size
    assert checkpoint_digest(tmp_path / "no-such-folder") is None
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", checkpoint_digest(a) or "")
    assert rubric_digest() == rubric_digest() and rubric_digest().startswith("sha256:")


def test_provenance_shares_the_identity_and_adds_the_request(tmp_path: Path) -> None:
    ident = CriticIdentity.build(name="c", family="qwen2_vl", model_dir=_checkpoint(tmp_path / "a", b"w"),
                                 engine="vllm", dtype="float32", short_clip="repeat")
    p = ident.provenance(num_frames=8, temperature=0.0, seed=None, max_tokens=64, scoring="label", rationale=True)
    q = ident.provenance(num_frames=4, temperature=0.7, seed=3, max_tokens=8, scoring="label", rationale=False)
    assert p.critic is q.critic and p.critic.digest == checkpoint_digest(tmp_path / "a")
    assert (p.frames.count, p.frames.rule, p.frames.short_clip) == (8, "linspace", "repeat")
    assert (q.sampling.temperature, q.sampling.seed, q.sampling.max_tokens, q.sampling.rationale) == (0.7, 3, 8, False)
    assert p.server.name == "lift-reward" and p.server.version


# ---- labels files ------------------------------------------------------------------------------------
def _prov(critic: str, digest: str, rubric: str = "sha256:r1") -> dict[str, Any]:
    return {"critic": {"name": critic, "family": "qwen2_vl", "digest": digest}, "rubric": {"digest": rubric},
            "frames": {"count": 8, "rule": "linspace", "short_clip": "repeat"},
            "engine": {"name": "vllm", "dtype": "float32"},
            "sampling": {"temperature": 0.0, "seed": None, "max_tokens": 64, "scoring": "label", "rationale": True},
            "server": {"name": "lift-reward", "version": "0.1.0"}}


def _line(ident: str, prov: dict[str, Any] | None) -> dict[str, Any]:
    rec = ok_record(ident, f"{ident}.mp4", "p", _resp(("Good", "Normal", "Bad")))
    rec["provenance"] = prov
    return rec


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_merge_refuses_two_critics_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two = _prov("critic-a", "sha256:aaa"), _prov("critic-b", "sha256:bbb")
    a = _write(tmp_path / "a.jsonl", [_line("x1", one), _line("x2", one)])
    b = _write(tmp_path / "b.jsonl", [_line("x3", two)])
    out = tmp_path / "merged.jsonl"
    assert lift_main(["label", "merge", str(a), str(b), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and not out.exists()
    assert "different critics" in cap.err and "--allow-mixed-provenance" in cap.err
    assert f"critic 'critic-a' (checkpoint sha256:aaa) with rubric sha256:r1, first at {a}:1" in cap.err
    assert f"critic 'critic-b' (checkpoint sha256:bbb) with rubric sha256:r1, first at {b}:1" in cap.err

    assert lift_main(["label", "merge", str(a), str(b), "--out", str(out), "--allow-mixed-provenance"]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["written"] and rep["ok"] == 3 and [o["lines"] for o in rep["provenance"]] == [2, 1]
    assert "mixed provenance" in cap.err and len(list(iter_records(out))) == 3


def test_merge_refuses_two_rubrics_and_accepts_one_critic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.jsonl", [_line("x1", _prov("c", "sha256:aaa"))])
    b = _write(tmp_path / "b.jsonl", [_line("x2", _prov("c", "sha256:aaa", rubric="sha256:r2"))])
    assert lift_main(["label", "merge", str(a), str(b), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "different rubrics" in capsys.readouterr().err

    # same critic and rubric, other sampling and server version; the same id twice with the same result: a
    # duplicate, not a conflict (provenance is not part of the result); lines without provenance are counted
    later = _prov("c", "sha256:aaa")
    later["sampling"]["seed"], later["server"]["version"] = 5, "0.2.0"
    c = _write(tmp_path / "c.jsonl", [_line("x1", later), _line("x3", None)])
    code = lift_main(["label", "merge", str(a), str(c), "--out", str(tmp_path / "m.jsonl")])
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert code == 0 and rep["duplicates"] == 1 and rep["conflicts"] == 0 and rep["without_provenance"] == 1
    assert "1 ok lines carry no provenance" in cap.err


def test_summary_and_parquet_carry_provenance(tmp_path: Path) -> None:
    one, two = _prov("critic-a", "sha256:aaa"), _prov("critic-b", "sha256:bbb")
    journal = _write(tmp_path / "labels.jsonl", [_line("x1", one), _line("x2", one), _line("x3", two),
                                                 {"id": "x4", "video": "v", "prompt": "p", "status": "error",
                                                  "error": {"code": "timeout", "message": "m", "param": None}}])
    s = summarize(journal, ["x1", "x2", "x3", "x4"])
    assert s.as_dict()["provenance"] == [{"records": 2, "provenance": one}, {"records": 1, "provenance": two}]
    text = s.format()
    assert "provenance: 2 records: critic critic-a (qwen2_vl, sha256:aaa)" in text and "critic critic-b" in text

    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "labels.parquet"
    assert to_parquet(journal, out) == 4
    rows = pq.read_table(out).to_pylist()
    assert {name for name, _ in PROVENANCE_COLUMNS} <= set(rows[0])
    assert [r["provenance.critic.digest"] for r in rows] == ["sha256:aaa", "sha256:aaa", "sha256:bbb", None]
    assert rows[0]["provenance.sampling.rationale"] is True and rows[0]["provenance.frames.count"] == 8
    assert rows[0]["provenance.sampling.seed"] is None and not math.isnan(rows[0]["provenance.sampling.temperature"])
