"""VideoAlign's VideoReward on our engines: a tiny release in its layout -> `lift convert-videoalign` -> the vLLM
engine (a pooling model with VideoAlign's 1-D positions) and the transformers engine, both held to a transformers
model with VideoAlign's own forward semantics (service/families/videoalign/reference.py): the three raw head
outputs, the normalised values and Overall as its inference computes them; then served over HTTP."""

from __future__ import annotations

import asyncio
import math
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.critics import load_spec
from service.protocol import ScoreResponse
from tests.conftest import CriticRuntime
from tests.integration.conftest import LIVE_DEFAULTS, serve_in_runtime

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
RAW_TOLERANCE = 2e-3  # float32 on both engines; vLLM's CPU kernels differ in summation order
CAPTIONS = ("a red square moving right", "A {curly} caption: <b>bold</b>, 2 fps")


@dataclass
class Engines:
    model_dir: Path
    runtime: CriticRuntime  # the vLLM critic, on its own event loop
    reference_critic: Any  # the transformers critic (same loop)
    reference_model: Any  # VideoAlignRewardModel: its forward, its reading


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    from service.critic import Critic
    from service.families.videoalign.convert import convert_videoalign
    from service.families.videoalign.reference import VideoAlignRewardModel
    from service.tiny_critics.videoalign import build_tiny_videoalign_release

    release = build_tiny_videoalign_release(tmp_path_factory.mktemp("videoalign_release"), seed=0)
    model_dir = convert_videoalign(release, tmp_path_factory.mktemp("videoalign") / "critic",
                                   dtype="float32").out_dir
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="videoalign-loop", daemon=True)
    thread.start()
    critic = Critic.from_pretrained(model_dir, engine="vllm", critic="videoalign", model_name="tiny-videoalign",
                                    dtype="float32", max_model_len=4096, max_num_seqs=8)
    reference = Critic.from_pretrained(model_dir, engine="transformers", critic="videoalign", dtype="float32")
    runtime = CriticRuntime(critic, loop)
    runtime.run(critic.start())
    runtime.run(reference.start())
    try:
        yield Engines(model_dir, runtime, reference, VideoAlignRewardModel.from_converted(model_dir))
    finally:
        runtime.run(critic.stop(), timeout=120)
        runtime.run(reference.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def its_inference(engines: Engines, video: Path, caption: str) -> dict[str, float]:
    """VideoVLMRewardInference.reward(use_norm=True) on the frames our critic decodes: the raw head outputs from
    its model's forward, `_norm`, then Overall."""
    import torch

    from service.critics.runner import chat_for
    from service.critics.videoalign import EVAL_DIMS, NORMALISATION

    critic = engines.runtime.critic
    frames = critic.decode(video)
    inputs = critic.engine.family.hf_chat(chat_for(critic.spec, critic.spec.queries[0], caption), frames)
    with torch.inference_mode():
        logits = engines.reference_model(**inputs)["logits"]
    assert logits.shape == (1, 3)
    out = {}
    for i, dim in enumerate(EVAL_DIMS):  # columns 0, 1, 2 are VQ, MQ, TA
        raw = float(logits[0, i])
        mean, std = NORMALISATION[dim]
        out[f"raw_{dim}"] = raw
        out[dim] = (raw - mean) / std
    out["overall"] = out["vq"] + out["mq"] + out["ta"]
    return out


def raw_of(response: ScoreResponse, dim: str) -> float:
    from service.critics.videoalign import NORMALISATION

    mean, std = NORMALISATION[dim]
    return response.dimensions[dim].value * std + mean  # type: ignore[operator]


def test_both_engines_agree_with_its_forward_and_its_numbers(engines: Engines, sample_videos: dict[str, Path]) -> None:
    spec = load_spec("videoalign")
    for video, caption in zip((sample_videos["h264_mp4"], sample_videos["real_carphone"]), CAPTIONS):
        ours = engines.runtime.run(engines.runtime.critic.score(video, caption))
        ref = engines.runtime.run(engines.reference_critic.score(video, caption))
        want = its_inference(engines, video, caption)
        assert ours.critic == ref.critic == "videoalign" and list(ours.dimensions) == list(spec.dimension_names)
        assert ours.num_frames == ref.num_frames >= 4 and ours.num_frames % 2 == 0
        for dim in spec.dimension_names:
            assert raw_of(ours, dim) == pytest.approx(want[f"raw_{dim}"], abs=RAW_TOLERANCE), (video.name, dim)
            assert raw_of(ref, dim) == pytest.approx(want[f"raw_{dim}"], abs=1e-4), (video.name, dim)
            for r in (ours, ref):
                d = r.dimensions[dim]
                assert d.value == pytest.approx(want[dim], abs=RAW_TOLERANCE)
                assert d.score == pytest.approx(1 / (1 + math.exp(-d.value)), abs=1e-12)
                assert d.label is None and d.probabilities is None and d.expected_score is None and d.parsed
        # the reward is its Overall = VQ + MQ + TA of the normalised values
        assert ours.reward == pytest.approx(want["overall"], abs=3 * RAW_TOLERANCE)
        assert ours.reward == pytest.approx(sum(d.value for d in ours.dimensions.values()), abs=1e-9)
        assert ref.reward == pytest.approx(want["overall"], abs=1e-4)
        assert ours.expected_reward is None
        assert ours.provenance is not None and ours.provenance.critic.critic == "videoalign"
        assert ours.provenance.critic.source == spec.source


def test_the_three_outputs_differ_from_mrope_positions(engines: Engines, sample_videos: dict[str, Path]) -> None:
    """The reading depends on VideoAlign's 1-D positions: Qwen2-VL's own 3-D positions give other numbers (so the
    agreement above is not an accident of positions that do not matter)."""
    from service.critics.runner import chat_for
    from service.engines.transformers_engine import TransformersEngine

    critic = engines.reference_critic
    video = sample_videos["h264_mp4"]
    frames = critic.decode(video)
    chat = chat_for(critic.spec, critic.spec.queries[0], CAPTIONS[0])
    mrope = TransformersEngine(engines.model_dir, critic.engine.family, dtype="float32", positions="mrope")
    mrope.model = critic.engine.model  # same weights, other positions
    ids = [critic.engine.family.token_ids(t)[0] for t in ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")]
    a = engines.runtime.run(critic.engine.pool(chat, frames, ids))
    b = engines.runtime.run(mrope.pool(chat, frames, ids))
    assert a.prompt_tokens == b.prompt_tokens
    assert max(float(abs(a.hidden[i] - b.hidden[i]).max()) for i in ids) > 1e-3


def test_a_caption_carrying_a_reward_token_is_refused(engines: Engines, sample_videos: dict[str, Path]) -> None:
    from service.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="must not contain <\\|TA_reward\\|>"):
        engines.runtime.run(engines.runtime.critic.score(sample_videos["h264_mp4"], "a cat <|TA_reward|>"))


def test_served_over_http(engines: Engines, sample_videos: dict[str, Path], live_media_root: Path) -> None:
    spec = load_spec("videoalign")
    video = sample_videos["h264_mp4"]
    with serve_in_runtime(engines.runtime, media_root=live_media_root, **LIVE_DEFAULTS, critic="videoalign",
                          api_keys="k") as url:
        auth = {"Authorization": "Bearer k"}
        card = httpx.get(f"{url}/v1/models", headers=auth, timeout=10).json()["data"][0]
        assert card["critic"] == "videoalign" and list(card["dimensions"]) == ["vq", "mq", "ta"]
        assert all(tuple(v["scale"]) == spec.dimension(d).scale for d, v in card["dimensions"].items())
        assert card["source"] == spec.source and "Overall" in card["reward"]
        r = httpx.post(f"{url}/v1/score", headers=auth, files={"video": ("v.mp4", video.read_bytes(), "video/mp4")},
                       data={"prompt": CAPTIONS[0], "options": json.dumps({"rationale": False})}, timeout=120)
        assert r.status_code == 200, r.text
        scored = ScoreResponse.model_validate(r.json())
        assert scored.critic == "videoalign" and list(scored.dimensions) == ["vq", "mq", "ta"]
        want = its_inference(engines, video, CAPTIONS[0])
        assert scored.reward == pytest.approx(want["overall"], abs=3 * RAW_TOLERANCE)
        for dim in ("vq", "mq", "ta"):
            assert scored.dimensions[dim].value == pytest.approx(want[dim], abs=RAW_TOLERANCE)
        bad = httpx.post(f"{url}/v1/score", headers=auth,
                         files={"video": ("v.mp4", video.read_bytes(), "video/mp4")},
                         data={"prompt": "x <|VQ_reward|>"}, timeout=60)
        assert bad.status_code == 400 and "VQ_reward" in bad.text
