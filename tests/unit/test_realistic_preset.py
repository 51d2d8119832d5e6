"""`lift make-tiny-critic --preset realistic`: LiFT-Critic-13B's token counts and its compute split, on a
model this CPU runs; the tiny preset keeps "Normal" split so multi-token label scoring stays exercised."""

from pathlib import Path

import pytest

from service.families import load_family
from service.media import VideoFrames, frames_from_array
from service.rubric import DIMENSION_NAMES, LABELS
from service.synthetic_videos import moving_square
from service.tiny_critics import build_tiny_critic
from service.tiny_critics.proportions import (
    LanguageShape,
    TowerShape,
    lift_critic_13b_vision_share,
    vision_share,
)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    return build_tiny_critic(tmp_path_factory.mktemp("realistic"), family="qwen2_vl", seed=0, preset="realistic")


def _frames() -> VideoFrames:
    return frames_from_array(moving_square(num_frames=8, height=96, width=128, colour="red", seed=0))


def test_token_counts_are_lift_critic_13b_s(realistic):
    family = load_family(realistic)
    for dim in DIMENSION_NAMES:
        inputs = family.hf_prompt("a red square moving right", dim, _frames())
        grid_t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        visual = grid_t * h * w // 4  # after the 2x2 merge
        # the processor keeps the frame's aspect on its patch grid: 8 x 196 within a few %
        assert abs(visual - 8 * 196) <= 0.1 * 8 * 196, visual
        assert 1700 <= inputs["input_ids"].shape[1] <= 1850


def test_realistic_labels_are_whole_tokens_and_tiny_splits_normal(realistic, tiny_critic_dir):
    assert all(len(ids) == 1 for ids in load_family(realistic).label_token_ids().values())
    tiny = load_family(tiny_critic_dir).label_token_ids()
    assert set(tiny) == set(LABELS) and len(tiny["Normal"]) > 1


def test_vision_tower_share_is_the_13b_critic_s(realistic):
    import json

    family = load_family(realistic)
    config = json.loads((realistic / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    inputs = family.hf_prompt("a red square moving right", DIMENSION_NAMES[0], _frames())
    patches, patch_values = inputs["pixel_values_videos"].shape
    grid_t = int(inputs["video_grid_thw"][0][0])
    tower = TowerShape(depth=vision["depth"], width=vision["embed_dim"], mlp=int(vision["embed_dim"] * vision["mlp_ratio"]),
                       patches=patches, seq=patches // grid_t, patch_values=patch_values)
    language = LanguageShape(layers=text["num_hidden_layers"], hidden=text["hidden_size"],
                             intermediate=text["intermediate_size"], heads=text["num_attention_heads"],
                             kv_heads=text["num_key_value_heads"])
    share, target = vision_share(tower, language, inputs["input_ids"].shape[1]), lift_critic_13b_vision_share()
    assert 0.05 < target < 0.2  # SigLIP-so400m on 8 frames vs Llama-2-13B's prefill
    assert target / 1.5 < share < target * 1.5, (share, target)
