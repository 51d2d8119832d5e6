"""`lift critics compare` against two live servers, each serving one critic (the session's tiny critic on its
vLLM engine, listed under two names: an identical copy, so the two must agree perfectly).

One run is SIGKILLed once the journals have their first lines and is run again: it resumes, asks nothing that
is done (journal lines counted), and writes compare.json / compare.md / plots with the expected shapes; a human
labels file gives each critic's agreement with people. With one server (one critic): exit 2 and one line
without --labels; with --labels, the human agreement alone. Bad input: one line, exit 2, no traceback.
Every process started here is stopped, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.integration.conftest import LIVE_DEFAULTS, serve_in_runtime

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
N_VIDEOS = 8
COLOURS = ("red", "green", "blue", "yellow", "white", "purple")
LIFT_DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


class Renamed:
    """The session's critic under another /v1/models id (a second deployment of the same checkpoint)."""

    def __init__(self, critic: Any, name: str) -> None:
        self._critic = critic
        self.model_name = name

    def __getattr__(self, key: str) -> Any:
        return getattr(self._critic, key)

    def model_card(self) -> Any:
        return self._critic.model_card().model_copy(update={"id": self.model_name})


@pytest.fixture(scope="module")
def two_critics(critic_runtime: Any, live_media_root: Path) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serve_in_runtime(
            SimpleNamespace(critic=Renamed(critic_runtime.critic, name), loop=critic_runtime.loop),
            media_root=live_media_root, **LIVE_DEFAULTS)) for name in ("critic-a", "critic-b")]
        yield urls[0], urls[1]


@pytest.fixture(scope="module")
def manifest(video_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    lines = []
    for i in range(N_VIDEOS):
        colour = COLOURS[i % len(COLOURS)]
        path = video_factory(f"compare_{i}", num_frames=10, height=48, width=64, colour=colour, seed=300 + i,
                             jitter=0.2 * (i % 4))
        lines.append({"id": f"v{i}", "video": str(path), "prompt": f"a {colour} square drifting, take {i}"})
    m = root / "manifest.jsonl"
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return m


@pytest.fixture(scope="module")
def human(manifest: Path) -> Path:
    labels = ("Good", "Normal", "Bad")
    rows = [{"id": f"v{i}", "semantic_consistency": labels[i % 3], "reward": i / N_VIDEOS} for i in range(N_VIDEOS)]
    rows.append({"id": "not-in-the-manifest", "reward": 0.5})
    h = manifest.with_name("human.jsonl")
    h.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return h


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _cmd(manifest: Path, out: Path, servers: tuple[str, ...], *extra: str) -> list[str]:
    server_args = [a for s in servers for a in ("--server", s)]
    return [sys.executable, "-m", "clients.cli", "critics", "compare", str(manifest), "--out", str(out),
            *server_args, "--no-rationale", "--no-progress", *extra]


def _lift(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.vllm
def test_two_critics_killed_resumed_and_compared(two_critics: tuple[str, str], manifest: Path, human: Path,
                                                 tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    out = tmp_path / "cmp"
    journals = [out / "journals" / "critic-a.jsonl", out / "journals" / "critic-b.jsonl"]
    cmd = _cmd(manifest, out, two_critics, "--labels", str(human), "--concurrency", "1")

    # Killed once the first results are in the journals ...
    victim = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(victim)
    deadline = time.monotonic() + 90
    while sum(map(_lines, journals)) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    before = {j.stem: _lines(j) for j in journals}  # complete lines only: a torn one is cut and redone
    assert sum(before.values()) >= 2 and all(n < N_VIDEOS for n in before.values()), before

    # ... and resumed: nothing done is asked again, every item is scored once per critic.
    done = _lift(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is the JSON summary only
    runs = {c["id"]: c for c in summary["critics"]}
    assert set(runs) == {"critic-a", "critic-b"}
    for name, n in before.items():
        assert runs[name]["skipped_done"] == n and runs[name]["new_this_run"] == N_VIDEOS - n, runs[name]
        assert (runs[name]["ok"], runs[name]["errors"], runs[name]["missing"]) == (N_VIDEOS, 0, 0)
    for j in journals:
        ids = [json.loads(line)["id"] for line in j.read_text().splitlines()]
        assert sorted(ids) == sorted(f"v{i}" for i in range(N_VIDEOS)), f"{j}: an item scored twice or not at all"

    report = json.loads((out / "compare.json").read_text())
    assert {"manifest", "items", "critics", "pairs", "human", "disagreements", "plots", "notes"} <= set(report)
    assert report["items"] == N_VIDEOS
    critic = {c["id"]: c for c in report["critics"]}
    assert critic["critic-a"]["critic"] == "lift" and critic["critic-a"]["dimensions"] == list(LIFT_DIMS)
    assert not critic["critic-a"]["model_field_sent"]  # one critic per server: requests name none

    # An identical copy ranks every item the same way.
    (pair,) = report["pairs"]
    assert (pair["a"], pair["b"], pair["n"]) == ("critic-a", "critic-b", N_VIDEOS)
    assert pair["expected_reward"]["spearman"] == pytest.approx(1.0)
    assert pair["expected_reward"]["kendall"] == pytest.approx(1.0)
    assert pair["reward"]["spearman"] in (None, pytest.approx(1.0))  # None: the labels gave every item one reward
    for key in ("n", "spearman", "spearman_p", "kendall", "kendall_p"):
        assert key in pair["reward"]
    assert len(pair["dimensions"]) == len(LIFT_DIMS) ** 2
    for d in pair["dimensions"]:
        assert d["field"] == "expected_score" and d["n"] == N_VIDEOS
        if d["a"] == d["b"]:
            assert d["spearman"] in (None, pytest.approx(1.0)), d
    assert report["disagreements"] == []  # nothing ranks differently

    # Agreement with the people.
    h = report["human"]
    assert h["columns"] == {"semantic_consistency": {"kind": "labels", "n": N_VIDEOS},
                            "reward": {"kind": "numbers", "n": N_VIDEOS}}
    assert h["unknown_ids"] == 1 and any("not in the manifest" in n for n in report["notes"])
    for name in ("critic-a", "critic-b"):
        sc = h["critics"][name]["semantic_consistency"]
        assert sc["n"] == N_VIDEOS and set(sc["vs"]) == {"reward", "expected_reward", *LIFT_DIMS}
        assert 0.0 <= sc["accuracy"] <= 1.0  # LiFT labels vs a LiFT critic
        assert sum(sum(row.values()) for row in sc["confusion"].values()) == N_VIDEOS
        assert "accuracy" not in h["critics"][name]["reward"]  # numbers: ranks only
    assert h["critics"]["critic-a"] == h["critics"]["critic-b"]
    assert summary["human"]["critic-a"]["semantic_consistency"]["vs"] == "semantic_consistency"

    assert report["plots"] == ["plots/reward_critic-a_vs_critic-b.png"]
    assert (out / report["plots"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert "critic-a vs critic-b" in md and "Agreement with the human labels" in md

    # One critic: without labels there is nothing to compare (exit 2, one line) ...
    alone = _lift(_cmd(manifest, tmp_path / "alone", two_critics[:1]))
    assert alone.returncode == 2 and alone.stdout == ""
    assert alone.stderr.count("\n") == 1 and "one critic" in alone.stderr and "--labels" in alone.stderr
    # ... with labels, its human agreement (resumed from the journal: nothing scored again).
    one = tmp_path / "one"
    shutil.copytree(out / "journals", one / "journals")
    single = _lift(_cmd(manifest, one, two_critics[:1], "--labels", str(human)))
    assert single.returncode == 0, single.stderr[-3000:]
    s = json.loads(single.stdout)
    assert [(c["id"], c["new_this_run"], c["skipped_done"]) for c in s["critics"]] == [("critic-a", 0, N_VIDEOS)]
    assert s["pairs"] == [] and set(s["human"]) == {"critic-a"}
    assert json.loads((one / "compare.json").read_text())["human"]["critics"]["critic-a"] == h["critics"]["critic-a"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--server", "ftp://somewhere"], "http:// or https://"),
    (["--server", "http://127.0.0.1:9"], "GET http://127.0.0.1:9/v1/models"),
    ([], "--server URL is required"),
])
def test_bad_server_is_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"video": "a.mp4", "prompt": "x"}) + "\n")
    env = {k: v for k, v in ENV.items() if k != "LIFT_SERVER"}
    r = subprocess.run([sys.executable, "-m", "clients.cli", "critics", "compare", str(m), "--out",
                        str(tmp_path / "o"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("lift critics compare: error: ") and needle in r.stderr


def test_missing_manifest_is_one_line(tmp_path: Path) -> None:
    r = _lift([sys.executable, "-m", "clients.cli", "critics", "compare", str(tmp_path / "none.jsonl"),
               "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "o")], timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "manifest not found" in r.stderr, r.stderr
