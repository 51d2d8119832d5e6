"""LiFT-Critic's architecture (VILA-1.5) on the real vLLM CPU engine, through the out-of-tree plugin.

The tiny VILA (VILA's own layout + a LiFT-layout LoRA) is converted with the project's converter; ONE vLLM
engine on it lives for the whole session (`vila_runtime`, its own event loop in a thread), shared by every
test here: parity with the transformers reference through the project's engines, a logits-level check, the
prefix cache across a video's three questions, and the scoring API end to end over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from service.protocol import ScoreResponse
from service.rubric import DIMENSION_NAMES, LABEL_SCORES, LABELS

pytestmark = pytest.mark.vllm
T = TypeVar("T")

# float32 on both sides; measured max |dp| about 1e-6 (different kernels, same math).
PROB_TOL = 1e-4
LOGPROB_TOL = 1e-3


class LoopThread:
    """An event loop in a daemon thread: the vLLM critic (and in-process servers) live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vila-loop", daemon=True)
        self.thread.start()
        self.critic: Any = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def vila_critic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp("vila-critic")
    src = build_tiny_vila(root / "VILA1.5-tiny", seed=0, with_lora=True)
    convert_vila(src, root / "critic", src / "lora")
    return root / "critic"


@pytest.fixture(scope="session")
def vila_runtime(vila_critic_dir: Path) -> Iterator[LoopThread]:
    """The session's one VILA vLLM engine."""
    from service.critic import Critic

    rt = LoopThread()
    rt.critic = Critic.from_pretrained(vila_critic_dir, engine="vllm", model_name="tiny-vila", dtype="float32",
                                       max_model_len=2048, max_num_seqs=32)
    try:
        rt.run(rt.critic.start())
        yield rt
    finally:
        rt.run(rt.critic.stop(), timeout=120)
        rt.close()


@pytest.fixture(scope="module")
def vila_reference(vila_critic_dir: Path) -> Iterator[Any]:
    from service.critic import Critic

    critic = Critic.from_pretrained(vila_critic_dir, engine="transformers", model_name="tiny-vila-ref")
    asyncio.run(critic.start())
    yield critic
    asyncio.run(critic.stop())


@pytest.fixture(scope="module")
def parity_videos(video_factory: Callable[..., Path]) -> list[Path]:
    specs = [dict(colour=c, seed=s, jitter=j, noise=n) for c, s, j, n in [
        ("red", 0, 0.0, 0.0), ("blue", 1, 0.0, 0.0), ("green", 2, 0.5, 0.0), ("yellow", 3, 0.0, 0.3),
        ("white", 4, 1.0, 0.0), ("red", 5, 0.0, 0.8), ("purple", 6, 0.2, 0.2), ((230, 120, 20), 7, 0.0, 0.0),
        ("blue", 8, 1.0, 1.0), ("green", 9, 0.0, 0.5), ("white", 10, 0.3, 0.0), ("yellow", 11, 0.8, 0.6)]]
    return [video_factory(f"vila_parity_{i}", num_frames=12 + i, **spec) for i, spec in enumerate(specs)]


@contextlib.contextmanager
def serve(rt: LoopThread, **settings: Any) -> Iterator[str]:
    """The service app (`create_app`) on the runtime's critic, uvicorn in the runtime's loop, a free port."""
    import socket
    import time

    from service.app import create_app
    from service.app.server import GracefulServer, uvicorn_config
    from service.app.settings import ServiceSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServiceSettings(host="127.0.0.1", **settings)
    server = GracefulServer(uvicorn_config(create_app(cfg, rt.critic), cfg, port=port))
    done = asyncio.run_coroutine_threadsafe(server.serve(), rt.loop)
    deadline = time.monotonic() + 30
    while not server.started:
        assert not done.done() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        done.result(timeout=60)


CAPTIONS = ["a red car driving on the road", "a blue bird flies over a river", "a cat walks in the city at night",
            "a person running", "a dog", "green and yellow shapes move smoothly"]


def test_parity_with_transformers_reference(vila_runtime: LoopThread, vila_reference: Any,
                                            parity_videos: list[Path]) -> None:
    """Same greedy labels and label probabilities (within PROB_TOL) on 12 videos x 3 questions."""
    worst, labels_seen = 0.0, set()
    for i, path in enumerate(parity_videos):
        caption = CAPTIONS[i % len(CAPTIONS)]
        ours = vila_runtime.run(vila_runtime.critic.score(path, caption))
        ref = asyncio.run(vila_reference.score(path, caption))
        for dim in DIMENSION_NAMES:
            a, b = ours.dimensions[dim], ref.dimensions[dim]
            pa, pb = a.probabilities.model_dump(), b.probabilities.model_dump()
            diff = max(abs(pa[k] - pb[k]) for k in LABELS)
            worst = max(worst, diff)
            assert diff <= PROB_TOL, (path.name, dim, pa, pb)
            assert a.label == b.label, (path.name, dim, pa, pb)
            labels_seen.add(a.label)
        assert abs(ours.expected_reward - ref.expected_reward) <= PROB_TOL
    print(f"\nvila parity: 12 videos x 3 questions, max |dp| = {worst:.2e}, labels seen {sorted(labels_seen)}")


def test_logits_parity_first_answer_token(vila_runtime: LoopThread, vila_reference: Any,
                                          parity_videos: list[Path]) -> None:
    """Below the engines: vLLM's log-probs for the first answer token vs the reference's log_softmax."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    critic = vila_runtime.critic
    family = critic.engine.family
    reference = vila_reference.engine.model
    worst = 0.0
    for path in parity_videos[:3]:
        frames = critic.decode(path)
        prompt = family.vllm_prompt("a red car driving on the road", "motion_smoothness", frames)

        async def first_token() -> Any:
            final = None
            request = TokensPrompt(prompt_token_ids=prompt.token_ids, multi_modal_data=prompt.vllm_mm_data)
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
            async for out in critic.engine._engine.generate(request, params, f"logits-{path.name}"):
                final = out
            return final

        out = vila_runtime.run(first_token()).outputs[0]
        with torch.inference_mode():
            hf = family.hf_prompt("a red car driving on the road", "motion_smoothness", frames)
            ref_lp = torch.log_softmax(reference(**hf).logits[0, -1].float(), dim=-1)
        top = out.logprobs[0]
        assert out.token_ids[0] == int(ref_lp.argmax())  # same greedy token
        for token_id, lp in top.items():
            worst = max(worst, abs(lp.logprob - float(ref_lp[token_id])))
        assert worst <= LOGPROB_TOL
    print(f"\nvila logits parity: top-20 log-probs of the first answer token, max |dlogp| = {worst:.2e}")


def test_three_questions_share_the_frames_prefix(vila_runtime: LoopThread, parity_videos: list[Path]) -> None:
    from service.engines import CriticQuery

    critic = vila_runtime.critic
    frames = critic.decode(parity_videos[4])
    answers = vila_runtime.run(critic.engine.generate(CriticQuery(frames, "a brand new caption for caching")))
    assert [a.dimension for a in answers] == list(DIMENSION_NAMES)
    cached = [c for a in answers for c in a.extra["cached_tokens_all"]]
    # system prompt + 8 frames x 25 image tokens + caption are computed once and reused
    assert max(cached) >= 200, cached
    assert all(a.text.startswith(f"{a.label}. ") for a in answers)


def test_scoring_api_end_to_end(vila_runtime: LoopThread, sample_videos: dict[str, Path]) -> None:
    """The real FastAPI app over a real socket, on the VILA critic's vLLM engine."""
    import base64

    with serve(vila_runtime, max_video_bytes=4 * 1024 * 1024) as url:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        assert "vila" in str(models)
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
        data = sample_videos["h264_mp4"].read_bytes()
        r = httpx.post(f"{url}/v1/score", files={"video": ("clip.mp4", data, "video/mp4")},
                       data={"prompt": "a red square moves right"}, timeout=300)
        assert r.status_code == 200, r.text
        score = ScoreResponse.model_validate(r.json())
        assert set(score.dimensions) == set(DIMENSION_NAMES) and score.num_frames == 8
        for d in score.dimensions.values():
            assert d.score == LABEL_SCORES[d.label] and d.rationale is not None
        b64 = base64.b64encode(sample_videos["real_bikes"].read_bytes()).decode()
        batch = httpx.post(f"{url}/v1/score/batch", timeout=300, json={"items": [
            {"prompt": "people ride bikes", "video": {"base64": b64}, "options": {"num_frames": 6}},
            {"prompt": "a caption with <image> inside", "video": {"base64": b64}},
            {"prompt": "garbage", "video": {"base64": base64.b64encode(b"not a video").decode()}},
        ]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert ScoreResponse.model_validate(results[0]).num_frames == 6
        assert results[1]["error"]["code"] == "invalid_request"
        assert results[2]["error"]["code"] == "invalid_video"
