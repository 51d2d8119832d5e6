"""The critic core on the real vLLM CPU engine (shared per session) with the tiny critic."""

import numpy as np
import pytest

from service.critic import Critic
from service.engines import CriticQuery
from service.errors import InvalidRequest, InvalidVideo
from service.media import decode_video
from service.protocol import ScoreOptions
from service.engines.vllm_engine import CPU_BLOCK_SIZE
from service.rubric import DIMENSION_NAMES, DIMENSIONS, LABEL_SCORES

pytestmark = pytest.mark.vllm


def _strip(result):
    data = result.model_dump()
    data.pop("id")
    data.pop("timings_ms")
    return data


@pytest.mark.parametrize("name", ["h264_mp4", "vp9_webm", "mpeg4_avi", "ffv1_mkv", "real_bikes", "real_carphone"])
def test_scores_real_files_in_several_codecs(critic_runtime, sample_videos, name):
    result = critic_runtime.run(critic_runtime.critic.score(sample_videos[name], "a red square moving right"))
    assert set(result.dimensions) == set(DIMENSION_NAMES) and result.num_frames == 8
    for dim in result.dimensions.values():
        probs = dim.probabilities.model_dump()
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert dim.label == max(probs, key=probs.get)  # greedy = most probable whole label
        assert dim.score == LABEL_SCORES[dim.label]
        assert dim.expected_score == pytest.approx(sum(probs[k] * LABEL_SCORES[k] for k in probs))
    assert result.reward == pytest.approx(np.mean([d.score for d in result.dimensions.values()]))
    assert result.timings_ms["engine"] > 0


def test_every_answer_parses_as_label_dot_reason(critic_runtime, sample_videos):
    video = decode_video(sample_videos["h264_mp4"])
    answers = critic_runtime.run(critic_runtime.critic.engine.generate(CriticQuery(video, "a red square")))
    for answer in answers:
        assert answer.text.startswith(answer.label + ". ") or answer.text == answer.label + "."
        assert all(ord(c) >= 32 for c in answer.text)


def test_same_request_twice_gives_the_same_result(critic_runtime, sample_videos):
    video = sample_videos["vp9_webm"]
    a = critic_runtime.run(critic_runtime.critic.score(video, "a red square"))
    b = critic_runtime.run(critic_runtime.critic.score(video, "a red square"))
    assert _strip(a) == _strip(b)


def test_sampling_with_a_seed_is_reproducible(critic_runtime, sample_videos):
    opts = ScoreOptions(temperature=1.0, seed=1234)
    video = sample_videos["h264_mp4"]
    a = critic_runtime.run(critic_runtime.critic.score(video, "a red square", opts))
    b = critic_runtime.run(critic_runtime.critic.score(video, "a red square", opts))
    assert _strip(a) == _strip(b)


def test_three_questions_share_the_video_prefix(critic_runtime, video_factory):
    # a video the engine has never seen: the first request computes the frames' KV blocks, every other request
    # about the same video (other questions, label prefixes, the reason) is served from the prefix cache
    video = decode_video(video_factory("prefix_probe", colour="purple", seed=77, height=112, width=160))
    answers = critic_runtime.run(critic_runtime.critic.engine.generate(CriticQuery(video, "a purple square")))
    cached = [c for a in answers for c in a.extra["cached_tokens_all"]]
    n_requests = len(cached)
    assert n_requests == 3 * (answers[0].extra["label_requests"] + 1)
    # only the very first request computes the frames (it may reuse the system prompt's block that every video
    # shares); the rest reuse at least the video tokens (256 of them)
    first, *rest = sorted(cached)
    assert first < 64 and min(rest) >= 256
    # and reuse is per whole KV block: on CPU the engine asks for the smallest block (32, not vLLM's 128), so a
    # request recomputes at most its own question and label/reason tokens plus less than one block of prefix
    engine = critic_runtime.critic.engine
    assert engine.block_size == CPU_BLOCK_SIZE
    lengths = [n for a in answers for n in a.extra["prompt_tokens_all"]]
    computed = sorted((n - c for n, c in zip(lengths, cached)), reverse=True)
    tokenizer = engine.family.tokenizer
    longest_question = max(len(tokenizer(d.question, add_special_tokens=False).input_ids) for d in DIMENSIONS)
    assert computed[1] < CPU_BLOCK_SIZE + longest_question + 16, computed


def test_bad_input_gives_typed_errors_and_engine_stays_up(critic_runtime, sample_videos):
    critic = critic_runtime.critic
    with pytest.raises(InvalidVideo):
        critic_runtime.run(critic.score(b"\x00not a video" * 100, "x"))
    with pytest.raises(InvalidRequest):
        critic_runtime.run(critic.score(sample_videos["h264_mp4"], "   "))
    assert critic.ready
    assert critic_runtime.run(critic.score(sample_videos["h264_mp4"], "still works")).reward > 0


def test_model_card(critic_runtime):
    card = critic_runtime.critic.model_card()
    assert card.family == "qwen2_vl" and card.engine == "vllm" and card.num_frames == 8
    assert set(card.rubric) == set(DIMENSION_NAMES)
