"""Qwen2-VL family: a short clip keeps its repeated frames (the video input merges frames in pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from service.media import frames_from_array


@pytest.mark.parametrize("clip_frames", [1, 3, 7])
def test_qwen2_vl_shows_the_even_count_asked_with_repeats(tiny_critic_dir, clip_frames) -> None:
    from service.families import load_family

    family = load_family(tiny_critic_dir)
    clip = frames_from_array(np.zeros((clip_frames, 32, 32, 3), dtype=np.uint8), 8)
    assert family.critic_frames(clip).num_frames == 8
    p = family.vllm_prompt("a red car", "motion_smoothness", clip)
    frames, _meta = p.vllm_mm_data["video"] if isinstance(p.vllm_mm_data["video"], tuple) else (p.vllm_mm_data["video"], None)
    assert len(frames) == 8
