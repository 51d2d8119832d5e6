"""Sharded labeling against the live service (tiny critic on the session's vLLM engine):

three `lift label --shard K/3` processes run at the same time, shard 1 is SIGKILLed mid-run and resumed,
`lift label merge` joins the three files, and the result holds exactly the ids of one unsharded run of the
same manifest, each once, with the same labels. Every process started here is stopped, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
N_VIDEOS = 24
COLOURS = ("red", "green", "blue", "yellow", "white", "purple")


@pytest.fixture()
def manifest(video_factory: Callable[..., Path], tmp_path: Path) -> Path:
    lines = []
    for i in range(N_VIDEOS):
        colour = COLOURS[i % len(COLOURS)]
        path = video_factory(f"shard_{i}", num_frames=10, height=48, width=64, colour=colour, seed=100 + i,
                             jitter=0.15 * (i % 3))
        lines.append({"video": str(path), "prompt": f"a {colour} square moving to the right, shard take {i}"})
    lines.append({"id": "missing-0", "video": "does/not/exist.mp4", "prompt": "gone"})  # an error line, too
    m = tmp_path / "manifest.jsonl"
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return m


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes this test starts; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _label(manifest: Path, out: Path, server: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clients.cli", "label", str(manifest), "--out", str(out), "--server", server,
            "--concurrency", "4", "--max-reason-tokens", "4", "--no-progress", *extra]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _records(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path}: torn last line"
    return [json.loads(line) for line in raw.splitlines()]


def test_three_shards_killed_resumed_and_merged_equal_one_run(manifest: Path, live_server: str, tmp_path: Path,
                                                              procs: list[subprocess.Popen[bytes]]) -> None:
    whole = tmp_path / "unsharded.jsonl"
    one = subprocess.run(_label(manifest, whole, live_server), cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 1, one.stderr[-3000:]  # finished; the missing video is an error line

    parts = [tmp_path / f"part-{k}-of-3.jsonl" for k in range(3)]
    for k, part in enumerate(parts):
        procs.append(subprocess.Popen(_label(manifest, part, live_server, "--shard", f"{k}/3",
                                             "--concurrency", "2"),
                                      cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    victim = procs[1]
    deadline = time.monotonic() + 120
    while _lines(parts[1]) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.poll() is None, "shard 1 finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    done_before_kill = _lines(parts[1])
    for p in (procs[0], procs[2]):
        p.wait(timeout=300)
        assert p.returncode in (0, 1), p.stderr.read().decode()[-3000:] if p.stderr else ""

    # The killed shard resumes from its own file: nothing it finished is asked again.
    resumed = subprocess.run(_label(manifest, parts[1], live_server, "--shard", "1/3", "--summary-json",
                                    str(tmp_path / "s1.json")),
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert s1["shard"] == "1/3" and s1["missing"] == 0 and s1["skipped_done"] == done_before_kill

    merged = tmp_path / "merged.jsonl"
    m = subprocess.run([sys.executable, "-m", "clients.cli", "label", "merge", *map(str, parts), "--out", str(merged),
                        "--manifest", str(manifest)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    report = json.loads(m.stdout)  # stdout is the JSON report only
    assert m.returncode == 1, m.stderr  # 1: the missing video's error line, nothing else
    assert (report["written"], report["conflicts"], report["missing"], report["torn_lines"]) == (True, 0, 0, 0)
    assert report["errors"] == 1 and report["error_codes"] == {"video_not_found": 1}

    merged_ids = [r["id"] for r in _records(merged)]
    whole_records = _records(whole)
    assert len(merged_ids) == len(set(merged_ids)), "an id twice in the merged file"
    assert sorted(merged_ids) == sorted(r["id"] for r in whole_records) and len(merged_ids) == N_VIDEOS + 1
    for k, part in enumerate(parts):  # each part holds its own shard only
        from clients.shards import shard_of

        assert {shard_of(r["id"], 3) for r in _records(part)} == {k}

    # Same labels as the unsharded run (greedy decoding; batch composition differs between the runs).
    by_id = {r["id"]: r for r in whole_records}
    for r in _records(merged):
        w = by_id[r["id"]]
        assert r["status"] == w["status"]
        if r["status"] == "ok":
            assert {d: v["label"] for d, v in r["dimensions"].items()} == {d: v["label"] for d, v in w["dimensions"].items()}
            assert abs(r["reward"] - w["reward"]) < 1e-3
