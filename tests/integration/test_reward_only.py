"""Reward-only scoring (`"rationale": false`): the label round alone, the same labels, probabilities, scores and
rewards as a full score, on both engines and for every way a video reaches the service; trainer adapters ask
for it by default."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.critic import Critic
from tests.integration.test_adapters import npy_bytes, png_b64
from service.protocol import ScoreOptions, ScoreResponse

pytestmark = pytest.mark.vllm
PROMPT = "people riding bikes"


def label_part(r: ScoreResponse | dict) -> dict:
    r = r if isinstance(r, ScoreResponse) else ScoreResponse.model_validate(r)
    return {"reward": r.reward, "expected_reward": round(r.expected_reward, 6), "num_frames": r.num_frames,
            "dims": {d: (x.label, x.score, round(x.expected_score, 6),
                         {k: round(v, 6) for k, v in x.probabilities.model_dump().items()})
                     for d, x in r.dimensions.items()}}


@pytest.fixture(scope="module")
def transformers_critic(tiny_critic_dir, critic_runtime):
    critic = Critic.from_pretrained(tiny_critic_dir, engine="transformers", dtype="float32")
    critic_runtime.run(critic.start())
    return critic


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_reward_only_equals_the_label_part_of_a_full_score(engine, critic_runtime, transformers_critic, sample_videos):
    critic = critic_runtime.critic if engine == "vllm" else transformers_critic
    for video in (sample_videos["h264_mp4"], sample_videos["real_carphone"]):
        full = critic_runtime.run(critic.score(video, PROMPT, ScoreOptions(max_reason_tokens=8)))
        only = critic_runtime.run(critic.score(video, PROMPT, ScoreOptions(rationale=False)))
        assert label_part(only) == label_part(full)
        assert full.rationale is True and all(d.rationale for d in full.dimensions.values())
        assert only.rationale is False and all(d.rationale is None for d in only.dimensions.values())
    with pytest.raises(Exception, match="rationale"):
        ScoreOptions(rationale=False, scoring="lift")  # LiFT's rule reads the generated answer


def test_every_input_kind_over_http(live_server: str, sample_videos: dict[str, Path]) -> None:
    from service.media import decode_video

    mp4 = sample_videos["real_bikes"].read_bytes()
    frames = np.ascontiguousarray(decode_video(sample_videos["real_bikes"], 12).frames[:, :96, :128])
    sources = {
        "path": {"path": "real_bikes.mp4"},
        "base64": {"base64": base64.b64encode(mp4).decode()},
        "npy": {"npy": base64.b64encode(npy_bytes(frames)).decode(), "fps": 8},
        "frames": {"frames": [png_b64(f) for f in frames]},
    }
    for kind, video in sources.items():
        full = httpx.post(f"{live_server}/v1/score", json={"prompt": PROMPT, "video": video,
                                                           "options": {"max_reason_tokens": 4}}, timeout=120)
        only = httpx.post(f"{live_server}/v1/score", json={"prompt": PROMPT, "video": video,
                                                           "options": {"rationale": False}}, timeout=120)
        assert full.status_code == only.status_code == 200, (kind, full.text, only.text)
        assert label_part(only.json()) == label_part(full.json()), kind
        assert only.json()["rationale"] is False and only.json()["dimensions"]["video_fidelity"]["rationale"] is None
    # multipart upload (options as a form field) and a batch item
    up = httpx.post(f"{live_server}/v1/score", files={"video": ("v.mp4", mp4, "video/mp4")},
                    data={"prompt": PROMPT, "options": json.dumps({"rationale": False})}, timeout=120)
    batch = httpx.post(f"{live_server}/v1/score/batch", json={"items": [
        {"prompt": PROMPT, "video": sources["base64"], "options": {"rationale": False}},
        {"prompt": PROMPT, "video": sources["base64"]}]}, timeout=120)
    assert up.status_code == 200 and batch.status_code == 200, (up.text, batch.text)
    full = batch.json()["results"][1]
    assert label_part(up.json()) == label_part(full) == label_part(batch.json()["results"][0])
    assert full["rationale"] is True and batch.json()["results"][0]["rationale"] is False
    bad = httpx.post(f"{live_server}/v1/score", json={"prompt": PROMPT, "video": sources["path"],
                                                      "options": {"rationale": False, "scoring": "lift"}}, timeout=30)
    assert bad.status_code == 422 and "rationale" in bad.json()["error"]["message"], bad.text


def scored(url: str) -> dict[str, float]:
    """lift_scored_videos_total by rationale from the app's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {"true": 0.0, "false": 0.0}
    for m in re.finditer(r'^lift_scored_videos_total\{rationale="(true|false)",scoring="label"\} (\S+)$', text, re.M):
        out[m.group(1)] += float(m.group(2))
    return out


@pytest.fixture(scope="module")
def flow_apps(serve_app: Callable[..., AbstractContextManager[str]]) -> Iterator[tuple[str, str]]:
    with serve_app(adapters=["flow-factory"]) as default, \
            serve_app(adapters=["flow-factory"], adapter_rationale=True) as with_reasons:
        yield default, with_reasons


def test_flow_factory_asks_for_reward_only_by_default(flow_apps, sample_videos) -> None:
    from service.media import decode_video

    frames = decode_video(sample_videos["real_carphone"], 6).frames[:, :64, :64]
    payload = {"prompt": [PROMPT, PROMPT], "video": [[png_b64(f) for f in frames]] * 2}
    for url, want in zip(flow_apps, ("false", "true")):
        before = scored(url)
        r = httpx.post(f"{url}/compute", json=payload, timeout=120)
        assert r.status_code == 200, r.text
        after = scored(url)
        assert after[want] - before[want] == 2
        assert after["true" if want == "false" else "false"] == before["true" if want == "false" else "false"]
