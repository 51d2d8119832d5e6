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
