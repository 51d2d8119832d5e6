"""`lift label` end to end against two real replicas of the service (tiny critic on vLLM):

- the labeler (a subprocess) is SIGKILLed at random points three times and resumed: the output has
  exactly one line per input id, no torn line, nothing lost;
- one replica is SIGKILLed mid-run: labeling completes through the other;
- missing files and broken videos in the manifest give error lines, not a crash.

Replica A is the in-process `live_server` on the session's shared engine; replica B is a `lift serve`
subprocess (its own vLLM engine: the transformers engine is far too slow on 2 cores for 50+ videos).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _integration_fixtures() -> Any:
    """The server fixtures live in tests/integration/conftest.py, which pytest does not share with e2e/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lift_integration_conftest", REPO / "tests" / "integration" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_servers = _integration_fixtures()
live_media_root = _servers.live_media_root
serve_app = _servers.serve_app
live_server = _servers.live_server
spawn_server = _servers.spawn_server_fixture
N_GOOD = 54
COLOURS = ("red", "green", "blue", "yellow", "white", "purple")


@pytest.fixture(scope="module")
def manifest(video_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """54 real videos + 2 missing files + 2 broken videos; returns (manifest, expected status per video)."""
    root = tmp_path_factory.mktemp("label_e2e")
    lines: list[dict[str, Any]] = []
    expect: dict[str, str] = {}
    for i in range(N_GOOD):
        colour = COLOURS[i % len(COLOURS)]
        path = video_factory(f"label_{i}", num_frames=10, height=48, width=64, colour=colour, seed=i,
                             jitter=0.15 * (i % 3), noise=0.05 * (i % 2))
        lines.append({"video": str(path), "prompt": f"a {colour} square moving to the right, take {i}"})
        expect[str(path)] = "ok"
    good = Path(lines[0]["video"]).read_bytes()
    (root / "random.mp4").write_bytes(os.urandom(4096))
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    for name in ("random.mp4", "truncated.mp4"):
        lines.append({"video": name, "prompt": "broken"})  # relative: resolved next to the manifest
        expect[name] = "error"
    for j in range(2):
        lines.append({"id": f"missing-{j}", "video": f"does/not/exist_{j}.mp4", "prompt": "gone"})
        expect[f"does/not/exist_{j}.mp4"] = "error"
    random.Random(7).shuffle(lines)
    m = root / "manifest.jsonl"
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return m, expect


@pytest.fixture(scope="module")
def replica_b(spawn_server: Callable[..., Any], tiny_critic_dir: Path) -> Iterator[Any]:
    env = {"LIFT_MAX_INFLIGHT": "16"}
    with spawn_server(tiny_critic_dir, engine="vllm", env=env, ready_timeout_s=420) as srv:
        yield srv


def _label_cmd(manifest: Path, out: Path, servers: list[str], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "clients.cli", "label", str(manifest), "--out", str(out), "--concurrency", "8",
           "--max-reason-tokens", "4", "--no-progress"]
    for s in servers:
        cmd += ["--server", s]
    return cmd + list(extra)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _check_output(out: Path, manifest: Path, expect: dict[str, str]) -> Counter:
    raw = out.read_bytes()
    assert raw.endswith(b"\n"), "torn last line left behind"
    records = [json.loads(line) for line in raw.splitlines()]
    ids = [r["id"] for r in records]
    manifest_ids = set()
    from clients.manifest import read_manifest

    for it in read_manifest(manifest).items:
        manifest_ids.add(it.id)
    assert len(ids) == len(set(ids)), f"duplicated ids: {[i for i, n in Counter(ids).items() if n > 1]}"
    assert set(ids) == manifest_ids, "ids missing from or foreign to the manifest"
    for r in records:
        assert r["status"] == expect[r["video"]], r
    return Counter(r.get("error", {}).get("code", "ok") for r in records)


def test_sigkill_three_times_and_resume(manifest: tuple[Path, dict[str, str]], live_server: str, replica_b: Any,
                                        tmp_path: Path) -> None:
    m, expect = manifest
    out = tmp_path / "labels.jsonl"
    servers = [live_server, replica_b.url]
    rng = random.Random(int(os.environ.get("LABEL_KILL_SEED", "1234")))
    total = len(expect)
    # Three kill points spread over the run, each a random line count plus a random extra delay.
    points = sorted(rng.sample(range(4, total - 12), 3))
    kills = 0
    for point in points:
        proc = subprocess.Popen(_label_cmd(m, out, servers), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while _lines(out) < point and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        assert proc.returncode in (-signal.SIGKILL, 1), proc.stderr.read().decode()[-2000:]
    assert kills == 3, "the labeler finished before it could be killed three times"
    assert _lines(out) < total

    final = subprocess.run(_label_cmd(m, out, servers, "--summary-json", str(tmp_path / "s.json")), cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 1, final.stderr[-3000:]  # finished; 4 items are error lines
    codes = _check_output(out, m, expect)
    assert codes["ok"] == N_GOOD
    assert codes["video_not_found"] == 2
    assert codes["invalid_video"] == 2
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["ok"], summary["errors"], summary["missing"]) == (N_GOOD, 4, 0)
    assert summary["skipped_done"] > 0

    # --retry-errors redoes the 4 error lines (they fail again) and still one line per id.
    again = subprocess.run(_label_cmd(m, out, servers, "--retry-errors"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stderr[-2000:]
    assert "this run: 4 new" in again.stdout
    _check_output(out, m, expect)


def _score_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("lift_requests_total{") and 'route="/v1/score"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_replica_killed_mid_run(manifest: tuple[Path, dict[str, str]], live_server: str, replica_b: Any,
                                    tmp_path: Path) -> None:
    m, expect = manifest
    out = tmp_path / "labels.jsonl"
    proc = subprocess.Popen(_label_cmd(m, out, [replica_b.url, live_server]), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _lines(out) < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "labeling finished before the replica could be killed"
    served_by_b = _score_requests(replica_b.url)
    os.killpg(replica_b.proc.pid, signal.SIGKILL)  # the server and its engine processes, no goodbye
    replica_b.proc.wait(timeout=30)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    assert served_by_b > 0, "replica B never served: the kill proved nothing"
    codes = _check_output(out, m, expect)
    assert codes["ok"] == N_GOOD
    assert f"labeled {N_GOOD} of {len(expect)} items: 4 errors, 0 not done" in stdout
