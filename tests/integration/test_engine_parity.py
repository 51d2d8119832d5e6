"""Parity: the vLLM engine is held to the transformers reference on the same checkpoint and prompts (float32).

Tolerance: label probabilities within 1e-4 absolute (measured: 1.2e-7 on this 2-core CPU; kernels differ in
summation order); greedy labels identical.
"""

import numpy as np
import pytest

from service.critic import Critic
from service.protocol import ScoreOptions

pytestmark = pytest.mark.vllm

PROB_TOL = 1e-4
COLOURS = ["red", "green", "blue", "yellow", "white", "purple"]


@pytest.fixture(scope="module")
def reference_critic(tiny_critic_dir, critic_runtime):
    critic = Critic.from_pretrained(tiny_critic_dir, engine="transformers", dtype="float32")
    critic_runtime.run(critic.start())
    return critic


def test_vllm_matches_transformers_on_ten_videos(critic_runtime, reference_critic, video_factory, sample_videos):
    videos = [video_factory(f"parity_{i}", colour=COLOURS[i % 6], seed=i, jitter=0.3 * (i % 3), noise=0.1 * (i % 2))
              for i in range(9)] + [sample_videos["real_carphone"]]
    opts = ScoreOptions(max_reason_tokens=2)  # only labels and probabilities are compared
    worst = 0.0
    for i, video in enumerate(videos):
        caption = f"a {COLOURS[i % 6]} square"
        fast = critic_runtime.run(critic_runtime.critic.score(video, caption, opts))
        ref = critic_runtime.run(reference_critic.score(video, caption, opts))
        for name, dim in fast.dimensions.items():
            other = ref.dimensions[name]
            assert dim.label == other.label, (i, name)
            a, b = dim.probabilities.model_dump(), other.probabilities.model_dump()
            worst = max(worst, max(abs(a[k] - b[k]) for k in a))
        assert fast.expected_reward == pytest.approx(ref.expected_reward, abs=PROB_TOL)
    assert worst < PROB_TOL, worst
    print(f"max |p_vllm - p_transformers| over 10 videos x 3 dimensions = {worst:.2e}")


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_lift_scoring_rule_reads_the_free_answer_by_substring(critic_runtime, reference_critic, sample_videos, engine):
    """options.scoring='lift': the whole answer is generated freely (LiFT's decoding), the label is LiFT's
    substring reading of it, the probabilities are the same as with our rule, and a seed repeats the answer."""
    from service.rubric import lift_substring_label

    critic = critic_runtime.critic if engine == "vllm" else reference_critic
    video = sample_videos["h264_mp4"]
    lift = ScoreOptions(scoring="lift", max_reason_tokens=12, seed=7)
    ours = critic_runtime.run(critic.score(video, "a red square", ScoreOptions(max_reason_tokens=2)))
    first = critic_runtime.run(critic.score(video, "a red square", lift))
    again = critic_runtime.run(critic.score(video, "a red square", lift))
    assert first.scoring == "lift" and ours.scoring == "label"
    for name, dim in first.dimensions.items():
        assert dim.label == lift_substring_label(dim.rationale)
        assert dim.score == {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}[dim.label]
        assert dim.probabilities == ours.dimensions[name].probabilities  # the label round is the same
        assert dim.rationale == again.dimensions[name].rationale  # seeded sampling at T = 0.2 repeats
    assert first.reward == pytest.approx(sum(d.score for d in first.dimensions.values()) / 3)
