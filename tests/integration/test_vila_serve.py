"""`lift serve` on a converted tiny 40B-shaped LiFT-Critic (InternViT + Yi-like Llama, hermes-2): the whole path a
user takes (`lift make-tiny-critic --family vila --vision internvit --with-lora`, `lift convert-vila`,
`lift serve --model DIR`) answers the HTTP contract of DESIGN.md over a real socket, on the vLLM engine."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.protocol import ModelList, ScoreResponse
from service.rubric import DIMENSION_NAMES, LABEL_SCORES, LABELS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def lift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def critic_40b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vila-40b-serve")
    made = lift("make-tiny-critic", str(root / "VILA1.5-40b-tiny"), "--family", "vila", "--vision", "internvit",
                "--with-lora", "--seed", "2")
    assert made.returncode == 0, made.stderr[-2000:]
    src = Path(made.stdout.strip())
    converted = lift("convert-vila", "--base", str(src), "--lora", str(src / "lora"), "--out", str(root / "critic"))
    assert converted.returncode == 0, converted.stderr[-2000:]
    return Path(converted.stdout.strip())


def test_lift_serve_answers_the_http_contract(critic_40b: Path, spawn_server: Callable[..., Any],
                                              sample_videos: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((critic_40b / "config.json").read_text())
    assert config["vila_chat_template"] == "hermes-2" and config["vision_config"]["model_type"] == "internvl_vision"
    with spawn_server(critic_40b, engine="vllm", ready_timeout_s=420, log_dir=tmp_path) as srv:
        url = srv.url
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
        models = ModelList.model_validate(httpx.get(f"{url}/v1/models", timeout=30).json())
        assert [m.family for m in models.data] == ["vila"] and models.data[0].engine == "vllm"

        # multipart upload of real camera footage
        data = sample_videos["real_bikes"].read_bytes()
        r = httpx.post(f"{url}/v1/score", files={"video": ("bikes.mp4", data, "video/mp4")},
                       data={"prompt": "people ride bikes on a road"}, timeout=300)
        assert r.status_code == 200, r.text
        score = ScoreResponse.model_validate(r.json())
        assert set(score.dimensions) == set(DIMENSION_NAMES) and score.num_frames == 8
        for d in score.dimensions.values():
            assert d.score == LABEL_SCORES[d.label] and d.rationale is not None
            probs = d.probabilities.model_dump()
            assert set(probs) == set(LABELS) and abs(sum(probs.values()) - 1) < 1e-6
        assert abs(score.reward - sum(d.score for d in score.dimensions.values()) / 3) < 1e-9

        # JSON with base64 and options; the batch keeps order and one bad item fails alone
        b64 = base64.b64encode(sample_videos["h264_mp4"].read_bytes()).decode()
        one = httpx.post(f"{url}/v1/score", timeout=300, json={"prompt": "a red square moves", "video": {"base64": b64},
                                                                "options": {"num_frames": 4}})
        assert one.status_code == 200 and ScoreResponse.model_validate(one.json()).num_frames == 4
        batch = httpx.post(f"{url}/v1/score/batch", timeout=300, json={"items": [
            {"prompt": "a red square", "video": {"base64": b64}},
            {"prompt": "garbage", "video": {"base64": base64.b64encode(b"not a video").decode()}},
            {"prompt": "a caption with <image> inside", "video": {"base64": b64}},
        ]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert ScoreResponse.model_validate(results[0]).num_frames == 8
        assert results[1]["error"]["code"] == "invalid_video" and results[2]["error"]["code"] == "invalid_request"

        # bad input is a 4xx with the one error shape, never a 500
        bad = httpx.post(f"{url}/v1/score", timeout=60, json={"prompt": "x", "video": {"base64": "!!notbase64"}})
        assert 400 <= bad.status_code < 500 and set(bad.json()["error"]) >= {"code", "message"}
        assert httpx.post(f"{url}/v1/score", timeout=60, json={"video": {"base64": b64}}).status_code == 422
    assert srv.proc.returncode == 0  # SIGTERM drained and exited cleanly
