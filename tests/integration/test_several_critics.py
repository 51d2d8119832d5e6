"""Several critics in one deployment: `lift serve --critic lift=DIR --critic cosmos-reason1=DIR`.

Requests choose a critic by `model` (JSON or multipart), ask several at once (the video decoded once, each critic
its own frames), the adapters' reward combines critics (`critic.term` weights), and one critic's engine dying
takes that critic's requests to 503 and the process down, as with one critic.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.engines.lifeline import engine_processes, is_descendant

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REWARD = "cosmos-reason1.no_anomaly=1.0,lift.expected_reward=0.5"


@pytest.fixture(scope="module")
def cosmos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.tiny_critics.qwen2_5_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("cosmos"), seed=0, critic="cosmos-reason1")


@pytest.fixture(scope="module")
def two_critics(spawn_server: Any, tiny_critic_dir: Path, cosmos_dir: Path) -> Iterator[Any]:
    env = {"LIFT_ADAPTER_REWARD": REWARD, "LIFT_KV_CACHE_GB": "0.25"}
    with spawn_server(None, "vllm", env, args=("--critic", f"lift={tiny_critic_dir}", "--critic",
                                               f"cosmos-reason1={cosmos_dir}", "--adapter", "unirl"),
                      ready_timeout_s=400) as server:
        yield server


def score(url: str, video: Path, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/score", json={"prompt": "a red square moving right",
                                               "video": {"base64": base64.b64encode(video.read_bytes()).decode()},
                                               **body}, timeout=120)


def test_requests_choose_a_critic_or_ask_several(two_critics: Any, sample_videos: dict[str, Path]) -> None:
    url = two_critics.url
    cards = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [(c["id"], c["critic"]) for c in cards] == [("lift", "lift"), ("cosmos-reason1", "cosmos-reason1")]
    video = sample_videos["h264_mp4"]

    default = score(url, video)
    assert default.status_code == 200, default.text
    assert default.json()["critic"] == "lift" and default.json()["by_critic"] is None
    cosmos = score(url, video, model="cosmos-reason1")
    assert cosmos.status_code == 200, cosmos.text
    assert cosmos.json()["critic"] == "cosmos-reason1" and list(cosmos.json()["dimensions"]) == ["no_anomaly"]
    # multipart names the critic the same way
    r = httpx.post(f"{url}/v1/score", files={"video": ("v.mp4", video.read_bytes(), "video/mp4")},
                   data={"prompt": "a red square moving right", "model": "cosmos-reason1"}, timeout=120)
    assert r.status_code == 200 and r.json()["reward"] == pytest.approx(cosmos.json()["reward"], abs=1e-6)

    both = score(url, video, options={"critics": ["lift", "cosmos-reason1"]})
    assert both.status_code == 200, both.text
    answer = both.json()
    assert answer["critic"] == "lift" and set(answer["by_critic"]) == {"lift", "cosmos-reason1"}
    # each critic saw its own frames: the same numbers as when asked alone
    assert answer["by_critic"]["lift"]["reward"] == pytest.approx(default.json()["reward"], abs=1e-6)
    assert answer["by_critic"]["cosmos-reason1"]["reward"] == pytest.approx(cosmos.json()["reward"], abs=1e-6)
    assert answer["by_critic"]["cosmos-reason1"]["num_frames"] == cosmos.json()["num_frames"]

    bad = score(url, video, model="videoscore2")
    assert 400 <= bad.status_code < 500 and "videoscore2" in bad.text


def test_a_combined_adapter_reward_is_the_weighted_sum_of_its_critics(two_critics: Any,
                                                                    sample_videos: dict[str, Path]) -> None:
    url = two_critics.url
    video = sample_videos["vp9_webm"]
    prompt = "a blue ball bouncing"
    body = {"prompt": prompt, "video": {"base64": base64.b64encode(video.read_bytes()).decode()},
            "options": {"rationale": False}}
    lift = httpx.post(f"{url}/v1/score", json=body, timeout=120).json()
    cosmos = httpx.post(f"{url}/v1/score", json={**body, "model": "cosmos-reason1"}, timeout=120).json()
    want = 1.0 * cosmos["dimensions"]["no_anomaly"]["expected_score"] + 0.5 * lift["expected_reward"]
    r = httpx.post(f"{url}/score", timeout=120, json={"requests": [
        {"history": [{"text": prompt, "video_b64": body["video"]["base64"]}], "required_rewards": ["lift"],
         "metadata": None}]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["lift"]["lift"] == pytest.approx(want, abs=1e-6)


def test_critics_compare_asks_each_critic_of_one_server(two_critics: Any, sample_videos: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """`lift critics compare` against one server that serves two critics: each journal holds its own critic's
    answers (requests name it by `model`), and the report pairs them."""
    import subprocess
    import sys

    from tests.integration.conftest import REPO, SERVER_ENV

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": name, "video": str(path), "prompt": f"a clip {name}"}) + "\n"
                                for name, path in list(sample_videos.items())[:3]))
    out = tmp_path / "cmp"
    r = subprocess.run([sys.executable, "-m", "clients.cli", "critics", "compare", str(manifest), "--out", str(out),
                        "--server", two_critics.url, "--no-rationale", "--no-progress", "--no-plots"],
                       cwd=REPO, env={**os.environ, **SERVER_ENV}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "compare.json").read_text())
    critics = {c["id"]: c for c in report["critics"]}
    assert set(critics) == {"lift", "cosmos-reason1"} and all(c["model_field_sent"] for c in critics.values())
    (pair,) = report["pairs"]
    assert {pair["a"], pair["b"]} == {"lift", "cosmos-reason1"} and pair["n"] == 3
    for name in critics:
        records = [json.loads(line) for line in Path(critics[name]["journal"]).read_text().splitlines()]
        assert len(records) == 3 and {rec.get("critic") for rec in records} == {name}, records[0]


def test_one_critics_engine_dying_takes_the_process_down(two_critics: Any, sample_videos: dict[str, Path]) -> None:
    """Last in this module: it ends the server."""
    proc = two_critics.proc
    ours = [p for p in engine_processes() if is_descendant(p.pid, proc.pid)]
    cores = [p for p in ours if p.title.endswith("EngineCore")]
    assert len(cores) == 2, [p.title for p in ours]  # one engine per critic
    os.kill(cores[-1].pid, signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            statuses.append(score(two_critics.url, sample_videos["h264_mp4"], model="cosmos-reason1").status_code)
        except httpx.TransportError:
            statuses.append(0)
        time.sleep(0.5)
    assert proc.poll() is not None, "the server kept running with a dead engine"
    assert proc.returncode != 0
    # before the death is noticed an answer may still come; after it: 503, then the process is gone; never a 500
    assert set(statuses) <= {0, 200, 503} and statuses[-1] in (0, 503), statuses
    assert "died" in two_critics.log()  # the log says why
