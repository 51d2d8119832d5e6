"""A tiny random Qwen2-VL critic: a checkpoint both engines load as is.

Preset `tiny`: every frame resized to about 224x224, so 8 frames give 256 video tokens: enough to fill KV-cache
blocks and show prefix sharing across a video's three questions; "Normal" is split into several tokens so that
multi-token label scoring is exercised. Preset `realistic`: LiFT-Critic-13B's token proportions, 8 frames x 196
visual tokens = 1568 (Qwen2-VL merges frame pairs, so 4 groups of 392: frames of about 392x784 pixels), ~1770
prompt tokens, the three labels whole tokens as in real critics' vocabularies, and its compute split: the vision
tower ~10 % of a question's compute as SigLIP is of LiFT-Critic-13B's (`proportions.py`; a wider tower would put
two thirds of the time in it, which no real critic does), so that a benchmark's costs fall where the real
critic's do.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from service.tiny_critics.corpus import lift_answer_corpus

_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FRAME_PIXELS = 224 * 224
PRESETS = ("tiny", "realistic")


@dataclass(frozen=True)
class QwenShape:
    frame_pixels: int = FRAME_PIXELS
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4  # head_dim = hidden / heads: CPU attention needs 32/64/80+
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2
    vision_depth: int = 2
    vision_dim: int = 64
    whole_labels: bool = False  # all three labels single tokens (else "Normal" is split)


SHAPES = {"tiny": QwenShape(),
          "realistic": QwenShape(frame_pixels=392 * 784, hidden=256, intermediate=688, layers=4, heads=4, kv_heads=2,
                                 mrope_section=(8, 12, 12), vision_depth=1, vision_dim=32, whole_labels=True)}


def _build_tokenizer(seed: int, whole_labels: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=768, special_tokens=_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    labels = ("Good", "Normal", "Bad") if whole_labels else ("Good", "Bad")
    tok.train_from_iterator(lift_answer_corpus(random.Random(seed), labels=labels), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=_SPECIALS[1:], model_max_length=4096,
    )
    hf_tok.chat_template = _CHAT_TEMPLATE
    return hf_tok


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0, preset: str = "tiny") -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if preset not in SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    shape = SHAPES[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(seed, shape.whole_labels)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIALS}
    size = {"shortest_edge": shape.frame_pixels, "longest_edge": shape.frame_pixels}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(size=size), chat_template=_CHAT_TEMPLATE)
    text = dict(vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                 "mrope_section": list(shape.mrope_section)},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    vision = dict(depth=shape.vision_depth, embed_dim=shape.vision_dim, hidden_size=shape.hidden, num_heads=2, mlp_ratio=2,
                  patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                     pad_token_id=ids["<|endoftext|>"], do_sample=False).save_pretrained(out)
    (out / "lift_critic.json").write_text(json.dumps({"family": "qwen2_vl", "tiny": True, "preset": preset, "seed": seed}, indent=1))
    return out


__all__ = ["FRAME_PIXELS", "PRESETS", "SHAPES", "QwenShape", "build_tiny_qwen2_vl"]
