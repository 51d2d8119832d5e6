"""The tiny critic is built offline, deterministically, and loads in transformers."""

import hashlib

from service.families import detect_family, load_family
from service.tiny_critics import build_tiny_critic


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_same_seed_same_files(tmp_path, tiny_critic_dir):
    again = build_tiny_critic(tmp_path / "again", family="qwen2_vl", seed=0)
    assert _digest(again) == _digest(tiny_critic_dir)
    other = build_tiny_critic(tmp_path / "other", family="qwen2_vl", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(tiny_critic_dir)["model.safetensors"]


def test_family_detected_and_labels_tokenized(tiny_critic_dir):
    assert detect_family(tiny_critic_dir) == "qwen2_vl"
    family = load_family(tiny_critic_dir)
    ids = family.label_token_ids()
    # "Good"/"Bad" are single tokens; "Normal" is split: both paths of label scoring get exercised
    assert len(ids["Good"]) == 1 and len(ids["Bad"]) == 1 and len(ids["Normal"]) > 1
    text = family.chat_text("a red car", "video_fidelity")
    assert text.count("<|video_pad|>") == 1 and text.endswith("<|im_start|>assistant\n")


def test_transformers_loads_it(tiny_critic_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_critic_dir)
    assert model.config.text_config.hidden_size // model.config.text_config.num_attention_heads == 32
