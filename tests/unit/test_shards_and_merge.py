"""Sharded labeling and `lift label merge` on real files (and a scripted replica on a real socket).

- shard assignment: a fixed function of the id (golden values), a partition (each id in exactly one shard),
  even enough, the same under any PYTHONHASHSEED; bad K/N refused with a clear message;
- `label(shard=...)`: each shard labels only its ids into its own journal, resumes, and refuses a journal
  holding other shards' ids or one another run is writing;
- merge: each id once; duplicates kept once; ok beats error; conflicts reported, nothing written, exit 3
  (or first/last kept); missing manifest ids, torn lines and bad input reported; stdout is one JSON report.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clients.cli import main as lift_main
from clients.journal import Journal, iter_records
from clients.labeler import LabelConfig, label
from clients.manifest import read_manifest
from clients.merge import differences, merge
from clients.shards import Shard, shard_of
from service.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[2]
DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


# ---- assignment ------------------------------------------------------------------------------------
def test_shard_is_a_fixed_function_of_the_id() -> None:
    # Golden values: changing the function would silently move ids between shards of running jobs.
    golden = {"a": (1, 4, 62250), "h0123456789abcdef": (2, 2, 72895), "line-7": (2, 1, 2119), "42": (0, 2, 82637),
              "vidéo": (1, 4, 21751)}
    for ident, (of3, of7, of100k) in golden.items():
        assert (shard_of(ident, 3), shard_of(ident, 7), shard_of(ident, 100_000)) == (of3, of7, of100k)
        assert shard_of(ident, 3) == int(hashlib.sha256(ident.encode()).hexdigest()[:16], 16) % 3


def test_shards_partition_the_ids_evenly() -> None:
    ids = [f"h{i:016x}" for i in range(3000)] + [f"clip-{i}" for i in range(300)]
    for n in (1, 2, 3, 7):
        owners = [[k for k in range(n) if Shard(k, n).owns(i)] for i in ids]
        assert all(len(o) == 1 for o in owners), "every id belongs to exactly one shard"
        sizes = Counter(o[0] for o in owners)
        assert len(sizes) == n and max(sizes.values()) < 1.15 * len(ids) / n


def test_assignment_does_not_depend_on_python_hash_seed() -> None:
    code = "from clients.shards import shard_of; print([shard_of(f'id{i}', 5) for i in range(50)])"
    seen = set()
    for seed in ("0", "1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        seen.add(out)
    assert seen == {str([shard_of(f"id{i}", 5) for i in range(50)]) + "\n"}


@pytest.mark.parametrize(("spec", "message"), [
    ("3/3", "shard index must be 0..2 for 3 shards"),
    ("-1/3", "shard index must be 0..2"),
    ("0/0", "shard count must be 1.."),
    ("1", "--shard wants K/N"),
    ("a/b", "--shard wants K/N"),
    ("1/2/3", "--shard wants K/N"),
    ("", "--shard wants K/N"),
])
def test_bad_shard_specs_are_refused_clearly(spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidRequest, match=message.replace(".", r"\.")):
        Shard.parse(spec)
    with pytest.raises(SystemExit) as exc:
        lift_main(["label", "m.jsonl", "--out", "o.jsonl", "--server", "http://x", f"--shard={spec}"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert Shard.parse(" 2 / 3 ") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"


# ---- sharded labeling against a scripted replica ---------------------------------------------------
def _score_body(prompt: str, hits: int) -> dict[str, Any]:
    r = round(0.05 + (len(prompt) % 10) / 12, 4)
    dim = {"label": "Normal", "score": 0.2, "expected_score": r,
           "probabilities": {"Good": 0.2, "Normal": 0.6, "Bad": 0.2}, "rationale": "ok"}
    return {"id": f"req-{hits}", "model": "scripted", "reward": r, "expected_reward": r, "num_frames": 8,
            "dimensions": {d: dict(dim) for d in DIMS}, "timings_ms": {}}


@pytest.fixture()
def replica() -> Iterator[dict[str, Any]]:
    """A scripted /v1/score on a real socket: a video starting with BROKEN is a 400, others are scored."""
    state: dict[str, Any] = {"hits": 0, "prompts": []}
    app = FastAPI()

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        form = await request.form()
        data = await form["video"].read()
        state["hits"] += 1
        state["prompts"].append(form["prompt"])
        if data.startswith(b"BROKEN"):
            return JSONResponse({"error": {"code": "invalid_video", "message": "not a video", "param": "video"}}, 400)
        return JSONResponse(_score_body(str(form["prompt"]), state["hits"]))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    state["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _manifest(tmp_path: Path, n: int, broken: int = 0) -> Path:
    vids = tmp_path / "videos"
    vids.mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        (vids / f"v{i}.mp4").write_bytes((b"BROKEN" if i < broken else b"MP4") + bytes([i % 256]) * 32)
        lines.append({"video": f"videos/v{i}.mp4", "prompt": f"prompt number {i}"})
    m = tmp_path / "manifest.jsonl"
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return m


async def test_each_shard_labels_only_its_ids_into_its_own_file(replica: dict[str, Any], tmp_path: Path) -> None:
    m = _manifest(tmp_path, 40, broken=3)
    ids = [it.id for it in read_manifest(m).items]
    parts = []
    for k in range(3):
        out = tmp_path / f"part-{k}.jsonl"
        res = await label(LabelConfig(manifest=m, out=out, servers=[replica["url"]], concurrency=4, progress=False,
                                      shard=Shard(k, 3)))
        got = [r["id"] for r in iter_records(out)]
        assert sorted(got) == sorted(i for i in ids if shard_of(i, 3) == k)
        assert res.summary.total == len(got) and res.summary.shard == f"{k}/3" and res.summary.manifest_total == 40
        assert f"of shard {k}/3 (40 in the manifest)" in res.summary.format()
        parts.append(out)
    assert replica["hits"] == 40  # each item asked once over the three shards

    # A shard re-run resumes: nothing asked again.
    again = await label(LabelConfig(manifest=m, out=parts[1], servers=[replica["url"]], progress=False, shard=Shard(1, 3)))
    assert replica["hits"] == 40 and again.summary.skipped_done == again.summary.total

    # Another shard's file (or an unsharded run's) is refused, not mixed.
    with pytest.raises(InvalidRequest, match="ids that shard 2/3 does not own"):
        await label(LabelConfig(manifest=m, out=parts[0], servers=[replica["url"]], progress=False, shard=Shard(2, 3)))
    assert replica["hits"] == 40

    merged = tmp_path / "merged.jsonl"
    report = merge(parts, merged, manifest=m)
    recs = list(iter_records(merged))
    assert sorted(r["id"] for r in recs) == sorted(ids)
    assert (report.ok, report.errors, report.missing, report.exit_code) == (37, 3, [], 1)  # 3 broken videos
    assert report.error_codes == {"invalid_video": 3}

    # --allow-item-errors: a finished run with error lines exits 0 (a batch scheduler must not retry it).
    res = await label(LabelConfig(manifest=m, out=tmp_path / "all.jsonl", servers=[replica["url"]], progress=False,
                                  allow_item_errors=True))
    assert res.summary.errors == 3 and res.exit_code == 0


async def test_a_journal_another_run_is_writing_is_refused(replica: dict[str, Any], tmp_path: Path) -> None:
    m = _manifest(tmp_path, 4)
    out = tmp_path / "part-0.jsonl"
    other = Journal(out)
    other.lock()  # another lift label holds it
    try:
        with pytest.raises(InvalidRequest, match="another lift label is writing"):
            await label(LabelConfig(manifest=m, out=out, servers=[replica["url"]], progress=False, shard=Shard(0, 2)))
    finally:
        other.unlock()
    res = await label(LabelConfig(manifest=m, out=out, servers=[replica["url"]], progress=False, shard=Shard(0, 2)))
    assert res.exit_code == 0


# ---- merge -----------------------------------------------------------------------------------------
def _ok(ident: str, reward: float = 0.5, label_: str = "Normal", rid: str = "r") -> dict[str, Any]:
    dim = {"label": label_, "score": 0.2, "expected_score": reward,
           "probabilities": {"Good": 0.2, "Normal": 0.6, "Bad": 0.2}, "rationale": "ok"}
    return {"id": ident, "video": f"{ident}.mp4", "prompt": "p", "status": "ok", "reward": reward,
            "expected_reward": reward, "dimensions": {d: dict(dim) for d in DIMS}, "model": "m", "num_frames": 8,
            "request_id": rid}


def _err(ident: str, code: str = "timeout") -> dict[str, Any]:
    return {"id": ident, "video": f"{ident}.mp4", "prompt": "p", "status": "error",
            "error": {"code": code, "message": "m", "param": None}}


def _write(path: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return path


def _run_merge(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = lift_main(["label", "merge", *argv])
    cap = capsys.readouterr()
    return code, json.loads(cap.out), cap.err  # stdout is one JSON document, nothing else


def test_merge_keeps_each_id_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.jsonl", [_ok("x1"), _ok("x2"), _err("x3")])
    b = _write(tmp_path / "b.jsonl", [_ok("x4"), _ok("x2", rid="other-request"), _ok("x3")])  # x2 same result again
    c = _write(tmp_path / "c.jsonl", [_err("x4"), _ok("x1", reward=0.5 + 1e-9), _err("x5"), _err("x5", "invalid_video")])
    out = tmp_path / "merged.jsonl"
    code, rep, err = _run_merge([str(a), str(b), str(c), "--out", str(out)], capsys)
    recs = list(iter_records(out))
    assert [r["id"] for r in recs] == ["x1", "x2", "x4", "x3", "x5"]  # part order, one line each
    by = {r["id"]: r for r in recs}
    assert by["x3"]["status"] == "ok" and by["x4"]["status"] == "ok"  # ok beats error, either order
    assert by["x5"]["error"]["code"] == "timeout"  # two errors: the first stays
    assert by["x2"]["request_id"] == "r"
    assert rep["written"] is True and (rep["ids"], rep["ok"], rep["errors"]) == (5, 4, 1)
    assert (rep["duplicates"], rep["superseded_errors"], rep["conflicts"]) == (3, 2, 0)  # x2, x1 (within tolerance), x5
    assert rep["error_codes"] == {"timeout": 1} and rep["missing"] is None
    assert code == 1 and "1 ids are error lines (timeout 1)" in err  # an error line left: exit 1


def test_conflicts_are_reported_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.jsonl", [_ok("x1", 0.9, "Good"), _ok("x2")])
    b = _write(tmp_path / "b.jsonl", [_ok("x1", 0.1, "Bad"), _ok("x3")])
    out = tmp_path / "merged.jsonl"
    code, rep, err = _run_merge([str(a), str(b), "--out", str(out)], capsys)
    assert code == 3 and not out.exists() and rep["written"] is False and rep["conflicts"] == 1
    (conflict,) = rep["conflict_examples"]
    assert conflict["id"] == "x1" and conflict["parts"] == [str(a), str(b)]
    assert {"reward", "expected_reward", "dimensions.video_fidelity.label"} <= set(conflict["fields"])
    assert "request_id" not in conflict["fields"]
    assert "conflict: id 'x1' has different results in" in err and "nothing written" in err

    for policy, reward in (("first", 0.9), ("last", 0.1)):
        code, rep, err = _run_merge([str(a), str(b), "--out", str(out), "--on-conflict", policy], capsys)
        by = {r["id"]: r for r in iter_records(out)}
        assert code == 0 and rep["written"] and rep["conflicts"] == 1 and f"kept the {policy} part's line" in err
        assert sorted(by) == ["x1", "x2", "x3"] and by["x1"]["reward"] == reward


def test_missing_torn_and_foreign_ids_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"x{i}", "video": f"x{i}.mp4", "prompt": "p"}) + "\n" for i in range(5)))
    a = _write(tmp_path / "a.jsonl", [_ok("x0"), _ok("x1")])
    b = _write(tmp_path / "b.jsonl", [_ok("x2"), _ok("old-item")], tail=json.dumps(_ok("x3")).encode()[:30])  # killed
    out = tmp_path / "merged.jsonl"
    code, rep, err = _run_merge([str(a), str(b), "--out", str(out), "--manifest", str(manifest)], capsys)
    assert code == 1 and rep["written"]
    assert rep["missing"] == 2 and rep["missing_examples"] == ["x3", "x4"] and rep["manifest_total"] == 5
    assert rep["not_in_manifest"] == 1 and rep["torn_lines"] == 1 and rep["parts"][1]["torn_bytes"] == 30
    assert "torn last line (30 bytes) skipped" in err and "2 manifest ids are in no part" in err
    assert out.read_bytes().endswith(b"\n") and len(list(iter_records(out))) == 4

    whole = _write(tmp_path / "c.jsonl", [_ok("x3"), _ok("x4")])
    code, rep, err = _run_merge([str(a), str(tmp_path / "c.jsonl"), str(_write(tmp_path / "b2.jsonl", [_ok("x2")])),
                                 "--out", str(out), "--manifest", str(manifest)], capsys)
    assert code == 0 and rep["missing"] == 0 and rep["ok"] == 5 and whole.exists()


def test_bad_merge_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.jsonl", [_ok("x0")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_ok("x1")) + "\n" + '{"not": "a record"}\n')
    cases = [([str(a), str(bad)], "bad.jsonl:2 is not a labels record"),
             ([str(a), str(tmp_path / "nope.jsonl")], "part file not found"),
             ([str(a), str(a)], "the same part file is given twice")]
    for parts, message in cases:
        assert lift_main(["label", "merge", *parts, "--out", str(tmp_path / "m.jsonl")]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and "lift label merge: error: " in cap.err and message in cap.err
    assert lift_main(["label", "merge", str(a), "--out", str(a)]) == 2
    assert "is one of the parts" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()


def test_differences_names_fields_and_honours_tolerance() -> None:
    a, b = _ok("x", 0.5), _ok("x", 0.5 + 1e-7, rid="other")
    assert differences(a, b, 1e-6) == []
    assert differences(a, b, 1e-9) == [f"dimensions.{d}.expected_score" for d in sorted(DIMS)] + ["expected_reward", "reward"]
    b["dimensions"]["motion_smoothness"]["rationale"] = "different"
    del b["num_frames"]
    assert differences(a, b, 1e-6) == ["dimensions.motion_smoothness.rationale", "num_frames"]
