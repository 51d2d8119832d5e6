"""The tiny Qwen2.5-VL critic: the real release's tokenizer layout and chat template, a forward in transformers."""

import hashlib

import numpy as np
import pytest

from service.tiny_critics.qwen2_5_vl import ADDED_TOKENS, CHAT_TEMPLATE, build_tiny_qwen2_5_vl

REAL_ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # Qwen2.5-VL-7B-Instruct's, ids 151643..151664


@pytest.fixture(scope="module")
def critic_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), seed=0)


@pytest.fixture(scope="module")
def processor(critic_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(critic_dir)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_same_seed_same_files(tmp_path, critic_dir):
    assert _digest(build_tiny_qwen2_5_vl(tmp_path / "again", seed=0)) == _digest(critic_dir)


def test_chat_template_renders_as_the_real_one(processor):
    assert processor.chat_template == CHAT_TEMPLATE and processor.tokenizer.chat_template == CHAT_TEMPLATE
    conversation = [
        {"role": "system", "content": "You are a video critic."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Is the motion smooth?"}]},
    ]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a video critic.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Is the motion smooth?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # no system turn: the default one; add_vision_id numbers pictures and videos separately
    user_only = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "video"},
                                              {"type": "text", "text": "Compare."}]}]
    assert processor.apply_chat_template(user_only, add_generation_prompt=False, add_vision_id=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>Compare.<|im_end|>\n"
    )


def test_digits_and_yes_no_are_single_tokens(processor):
    tok = processor.tokenizer
    for text in ("1", "2", "3", "4", "5", "Yes", "No"):
        assert len(tok.encode(text, add_special_tokens=False)) == 1, text
    for d in "12345":  # as in Qwen2's tokenizer: the space is its own token, digits never merge
        assert tok.tokenize(f" {d}") == ["Ġ", d]
    assert tok.tokenize("12345") == list("12345")
    assert tok.tokenize("Physics Score (1-5): 4")[-3:] == ["):", "Ġ", "4"]


def test_added_tokens_in_the_real_order(processor):
    tok = processor.tokenizer
    assert list(ADDED_TOKENS) == REAL_ADDED_TOKENS
    ids = tok.convert_tokens_to_ids(REAL_ADDED_TOKENS)
    assert ids == list(range(len(tok) - 22, len(tok)))
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert special == set(REAL_ADDED_TOKENS[:14])
    assert type(tok).__name__ == "Qwen2Tokenizer"


def test_forward_on_a_video(critic_dir, processor):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(critic_dir).eval()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and model.dtype == torch.float32
    vision = model.config.vision_config
    assert sum(model.config.text_config.rope_parameters["mrope_section"]) * 2 == 128 // 4
    assert vision.out_hidden_size == model.config.text_config.hidden_size and vision.window_size == 112
    assert all(0 <= i < vision.depth for i in vision.fullatt_block_indexes)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(4)]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Score 1-5."}]}],
        add_generation_prompt=True)
    inputs = processor(text=[text], videos=[frames], do_sample_frames=False, return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]  # 112x112 frames pass unresized
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_unifiedreward_trained_format_parses(tmp_path):
    """critic="unifiedreward": a brief fine-tune, so greedy generation for its real prompt (16 small frames as
    images, then the text) writes "Alignment Score (1-5): X ..." and the parsed-score path runs."""
    import json

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from service.critics.unifiedreward import NUM_FRAMES, SPEC, parse_answer

    folder = build_tiny_qwen2_5_vl(tmp_path / "unifiedreward", seed=0, critic="unifiedreward")
    record = json.loads((folder / "lift_critic.json").read_text())
    assert record["trained_format"] == "unifiedreward" and record["steps"] > 0
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(NUM_FRAMES)]
    messages = [{"role": "user", "content": [{"type": "image"}] * NUM_FRAMES
                 + [{"type": "text", "text": SPEC.queries[0].user_text("a red car on a road")}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    values = parse_answer(answer).values
    assert set(values) == {"alignment", "physics", "style"}
    assert all(v is not None and 1 <= v <= 5 for v in values.values()), answer
