"""Training features are the serving prompt plus the answer, and the loss sees the answer only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.critic.data import RatedExample
from finetune.critic.features import IGNORE_INDEX, RatedVideoDataset, answer_token_ids, build_features, collate
from finetune.critic.synthetic import ClipSpec, render_clip, write_mp4
from service.families import load_family
from service.media import decode_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ClipSpec("c", scene_colour="red", caption_colour="red", subject="car", jitter=False, noisy=False)
    return write_mp4(tmp_path_factory.mktemp("feat") / "c.mp4", render_clip(spec, size=64, num_frames=12))


def test_features_are_the_serving_prompt_plus_the_answer(tiny_critic_dir: Path, clip: Path) -> None:
    family = load_family(tiny_critic_dir)
    ex = RatedExample(clip, "a red car", "motion_smoothness", "Normal", "It stutters once.")
    video = decode_video(clip, num_frames=8)  # the service's own sampling
    assert video.indices == [0, 1, 3, 4, 6, 7, 9, 11]
    feats = build_features(family, ex, video)
    served = family.hf_prompt(ex.caption, ex.dimension, video)  # what the transformers engine feeds
    n = served["input_ids"].shape[1]
    assert torch.equal(feats["input_ids"][:n], served["input_ids"][0])
    assert torch.equal(feats["pixel_values_videos"], served["pixel_values_videos"])
    assert torch.equal(feats["video_grid_thw"], served["video_grid_thw"])
    # the vLLM engine's prompt is the same tokens before its video placeholder is expanded
    vllm_ids = family.vllm_prompt(ex.caption, ex.dimension, video).token_ids
    pad = family.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    collapsed = [t for i, t in enumerate(feats["input_ids"][:n].tolist()) if not (t == pad and i and
                                                                                 feats["input_ids"][i - 1] == pad)]
    assert collapsed == vllm_ids

    # loss only on the answer: "<Label>" as the engines score it, ". " as they force it, reason, end of turn
    labels = feats["labels"]
    assert (labels[:n] == IGNORE_INDEX).all() and (labels[n:] != IGNORE_INDEX).all()
    answer = labels[n:].tolist()
    label_ids = family.label_token_ids()["Normal"]
    assert answer[: len(label_ids)] == label_ids and len(label_ids) > 1  # "Normal" is several tokens here
    assert answer[-1] == family.tokenizer.eos_token_id
    assert family.tokenizer.decode(answer, skip_special_tokens=True) == "Normal. It stutters once."
    assert answer == answer_token_ids(family, "Normal", "It stutters once.")
    assert feats["mm_token_type_ids"][n:].eq(0).all()


def test_collate_pads_right_and_keeps_media(tiny_critic_dir: Path, clip: Path) -> None:
    family = load_family(tiny_critic_dir)
    examples = [RatedExample(clip, "a red car", "video_fidelity", "Good", "Clean."),
                RatedExample(clip, "a red car on a long road at night", "semantic_consistency", "Bad",
                             "The car is blue in the video, not red as the caption says.")]
    ds = RatedVideoDataset(examples, family)
    a, b = ds[0], ds[1]
    assert ds[0] is a  # cached: later epochs skip decoding and the processor
    batch = collate([a, b], pad_token_id=family.tokenizer.pad_token_id)
    la, lb = a["input_ids"].shape[0], b["input_ids"].shape[0]
    assert batch["input_ids"].shape == (2, max(la, lb))
    short = 0 if la < lb else 1
    n_short = min(la, lb)
    assert batch["attention_mask"][short, n_short:].eq(0).all()
    assert batch["labels"][short, n_short:].eq(IGNORE_INDEX).all()
    assert batch["pixel_values_videos"].shape[0] == a["pixel_values_videos"].shape[0] * 2
    assert batch["video_grid_thw"].shape == (2, 3)
