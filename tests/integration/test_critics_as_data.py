"""Each critic other than LiFT's, on its tiny Qwen2.5-VL model (real chat template and special tokens; the
number-writing ones fine-tuned at build time to write their answer format): the vLLM engine agrees with the
transformers reference, and the critic scores over HTTP and through every trainer adapter.

One vLLM engine per critic for the module (the fixture is parametrised at module scope, so pytest runs one
critic's tests together and starts three engines in all).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.critics import load_spec
from service.protocol import ScoreOptions, ScoreResponse
from tests.conftest import CriticRuntime
from tests.integration.conftest import LIVE_DEFAULTS, serve_in_runtime

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
CRITICS = ("cosmos-reason1", "videoscore2", "unifiedreward")
MAX_TOKENS = 64  # the tiny models write their formats in ~30 tokens; a bound keeps a confused sample short
PROBABILITY_TOLERANCE = 2e-3  # float32 on both engines; vLLM's CPU kernels differ in summation order
# a digit's probabilities ~40 generated steps in: vLLM's decode attention (paged, cached prefix) vs HF's drift more
GENERATED_TOLERANCE = 1e-2


@dataclass
class CriticPair:
    name: str
    model_dir: Path
    runtime: CriticRuntime  # the vLLM critic, on its own event loop
    reference: Any  # the transformers critic (same loop)


@pytest.fixture(scope="module", params=CRITICS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriticPair]:
    from service.critic import Critic
    from service.tiny_critics.qwen2_5_vl import build_tiny_qwen2_5_vl

    name = request.param
    model_dir = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp(name.replace("-", "_")), seed=0, critic=name)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{name}-loop", daemon=True)
    thread.start()
    critic = Critic.from_pretrained(model_dir, engine="vllm", critic=name, model_name=f"tiny-{name}",
                                    dtype="float32", max_model_len=4096, max_num_seqs=32)
    reference = Critic.from_pretrained(model_dir, engine="transformers", critic=name, dtype="float32")
    runtime = CriticRuntime(critic, loop)
    runtime.run(critic.start())
    runtime.run(reference.start())
    try:
        yield CriticPair(name, model_dir, runtime, reference)
    finally:
        runtime.run(critic.stop(), timeout=120)
        runtime.run(reference.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def options(**kw: Any) -> ScoreOptions:
    return ScoreOptions(max_reason_tokens=MAX_TOKENS, **kw)


def test_vllm_agrees_with_the_transformers_reference(pair: CriticPair, sample_videos: dict[str, Path]) -> None:
    spec = load_spec(pair.name)
    for video, caption in ((sample_videos["h264_mp4"], "a red square moving right"),
                           (sample_videos["vp9_webm"], "a blue ball bouncing")):
        ours = pair.runtime.run(pair.runtime.critic.score(video, caption, options()))
        ref = pair.runtime.run(pair.reference.score(video, caption, options()))
        assert ours.critic == ref.critic == pair.name
        assert list(ours.dimensions) == list(ref.dimensions) == list(spec.dimension_names)
        assert ours.num_frames == ref.num_frames
        for dim in spec.dimension_names:
            a, b = ours.dimensions[dim], ref.dimensions[dim]
            assert a.parsed and b.parsed, (a.rationale, b.rationale)  # the tiny model writes the format
            assert a.probabilities is not None and b.probabilities is not None
            assert set(a.probabilities) == set(b.probabilities)
            generated = spec.queries[0].channel.__class__.__name__ == "GeneratedScoresChannel"
            tol = GENERATED_TOLERANCE if generated else PROBABILITY_TOLERANCE
            for k in a.probabilities:
                assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=tol), (dim, k)
            if generated:
                assert a.value == b.value and a.rationale == b.rationale  # greedy: the same answer, read the same
                worst, best = spec.dimension(dim).scale
                assert worst <= a.value <= best
            else:
                assert a.value == pytest.approx(b.value, abs=PROBABILITY_TOLERANCE)
            assert a.expected_score == pytest.approx(b.expected_score, abs=2 * tol)
            assert 0.0 <= a.score <= 1.0
        assert ours.reward == pytest.approx(ref.reward, abs=2 * PROBABILITY_TOLERANCE)
        assert ours.provenance is not None and ours.provenance.critic.critic == pair.name
        assert ours.provenance.critic.source == spec.source


def test_a_parse_failure_fails_the_sample_with_its_text(pair: CriticPair, sample_videos: dict[str, Path]) -> None:
    """One new token cannot hold three scores: the sample fails with the text (never a made-up number), unless a
    failure value is set, which the response then marks as not parsed."""
    from service.critic import Critic
    from service.errors import UnparsableAnswer

    if pair.name == "cosmos-reason1":
        pytest.skip("cosmos-reason1 reads probabilities, not text: nothing to parse")
    video = sample_videos["h264_mp4"]
    with pytest.raises(UnparsableAnswer) as info:
        pair.runtime.run(pair.runtime.critic.score(video, "a red square", ScoreOptions(max_reason_tokens=1)))
    assert "LIFT_PARSE_FAILURE_VALUE" in info.value.message and info.value.text
    lenient = Critic(pair.runtime.critic.engine, pair.model_dir, critic=pair.name, parse_failure_value=1.0)
    r = pair.runtime.run(lenient.score(video, "a red square", ScoreOptions(max_reason_tokens=1)))
    assert all(not d.parsed and d.value == 1.0 and d.score == 0.0 and d.probabilities is None
               for d in r.dimensions.values())
    assert r.expected_reward is None


def test_http_score_models_and_every_adapter(pair: CriticPair, sample_videos: dict[str, Path],
                                             live_media_root: Path) -> None:
    spec = load_spec(pair.name)
    first_dim = spec.dimension_names[0]
    video = sample_videos["h264_mp4"]
    with serve_in_runtime(pair.runtime, media_root=live_media_root, **LIVE_DEFAULTS, critic=pair.name,
                          adapters=["flow-factory", "cosmos-rl", "unirl"], adapter_reward=first_dim,
                          api_keys="k") as url:
        auth = {"Authorization": "Bearer k"}
        models = httpx.get(f"{url}/v1/models", headers=auth, timeout=10).json()["data"][0]
        assert models["critic"] == pair.name and list(models["dimensions"]) == list(spec.dimension_names)
        assert all(tuple(v["scale"]) == spec.dimension(d).scale for d, v in models["dimensions"].items())
        assert models["source"] == spec.source

        r = httpx.post(f"{url}/v1/score", headers=auth, files={"video": ("v.mp4", video.read_bytes(), "video/mp4")},
                       data={"prompt": "a red square moving right",
                             "options": json.dumps({"max_reason_tokens": MAX_TOKENS})}, timeout=120)
        assert r.status_code == 200, r.text
        scored = ScoreResponse.model_validate(r.json())
        assert scored.critic == pair.name and list(scored.dimensions) == list(spec.dimension_names)
        direct = pair.runtime.run(pair.runtime.critic.score(video, "a red square moving right", options()))
        # a probe is one forward: the same number every time; a generated answer is greedy, but a near tie between
        # two tokens (the tiny models write random digits) can flip with vLLM's cached-prefix kernels
        exact = spec.queries[0].channel.__class__.__name__ == "ProbeChannel"
        if exact:
            assert scored.reward == pytest.approx(direct.reward, abs=1e-6)
        assert all(d.parsed and 0.0 <= d.score <= 1.0 for d in scored.dimensions.values())
        want = direct.dimensions[first_dim].expected_score

        # UniRL: its roster names this critic's numbers; `lift` carries LIFT_ADAPTER_REWARD
        roster = httpx.get(f"{url}/rewards", headers=auth, timeout=10).json()["rewards"]
        assert first_dim in roster and "semantic_consistency" not in roster
        b64 = base64.b64encode(video.read_bytes()).decode("ascii")
        r = httpx.post(f"{url}/score", headers=auth, timeout=120, json={"requests": [
            {"history": [{"text": "a red square moving right", "video_b64": b64}],
             "required_rewards": ["lift", first_dim], "metadata": None}]})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["lift"]["lift"] == pytest.approx(result[first_dim][first_dim], abs=1e-9)
        # reward-only (the adapters' default) reads the same numbers as a scored answer with its text
        if exact:
            assert result[first_dim][first_dim] == pytest.approx(want, abs=1e-6)
        assert 0.0 <= result[first_dim][first_dim] <= 1.0

        # an unknown name for this critic is refused, as UniRL's server refuses one
        r = httpx.post(f"{url}/score", headers=auth, timeout=30, json={"requests": [
            {"history": [{"text": "x", "video_b64": b64}], "required_rewards": ["motion_smoothness"]}]})
        assert r.status_code == 400

        # Flow-Factory: frames as PNGs; a per-call reward name of this critic
        frames = _png_frames(video)
        r = httpx.post(f"{url}/compute", headers=auth, timeout=120, json={
            "prompt": ["a red square moving right"], "image": None, "video": [frames], "condition_images": None,
            "condition_videos": None, "kwargs": {"reward": "reward"}})
        assert r.status_code == 200, r.text
        assert 0.0 <= r.json()["rewards"][0] <= 1.0

        # Cosmos-RL: an .npy batch, enqueue then pull; its scores carry every number of this critic
        arr = _decoded(video)[None]
        head = {"prompts": ["a red square moving right"], "reward_fn": {"lift": 1.0}, "media_type": "video",
                "video_infos": [{"video_fps": 8.0}]}
        import io

        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        r = httpx.post(f"{url}/api/reward/enqueue", content=json.dumps(head).encode() + b"\n" + buf.getvalue(),
                       headers={"Content-Type": "application/octet-stream", **auth}, timeout=60)
        assert r.status_code == 200, r.text
        scores = _pull(url, r.json()["uuid"], auth)["scores"]
        assert set(spec.dimension_names) <= set(scores) and scores["lift"] == scores[first_dim]


def _decoded(video: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(video))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _png_frames(video: Path) -> list[str]:
    import io

    from PIL import Image

    out = []
    for frame in _decoded(video):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def _pull(url: str, uuid: str, auth: dict[str, str], timeout_s: float = 120.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(f"{url}/api/reward/pull", data={"uuid": uuid, "type": "lift"}, headers=auth, timeout=10)
        if r.status_code != 400 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return r.json()
        time.sleep(0.2)
