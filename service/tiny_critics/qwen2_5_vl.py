"""A tiny random Qwen2.5-VL critic (Qwen2_5_VLForConditionalGeneration, float32): a checkpoint both engines load
as is, in the real Qwen2.5-VL-7B-Instruct release's tokenizer layout.

What is copied from the real release, and where it was checked (public copies found with the search tools):
- Added tokens, in the release's order and after the BPE vocabulary as there (ids 151643..151664 in the real
  tokenizer, here len(bpe_vocab)..+21): the first 14 special, `<tool_call>` .. `<|file_sep|>` not special;
  eos `<|im_end|>`, pad `<|endoftext|>`, no bos, `additional_special_tokens` = `<|im_start|>` .. `<|video_pad|>`.
  Checked against Qwen2.5 tokenizer_config.json `added_tokens_decoder` copies (ids 151643-151664, "special":
  false from 151657 on), the added_tokens.json of a Qwen2.5 fine-tune on huggingface.co
  (scilo/qwen_finetuned_11_5_v2: "<tool_call>": 151657 .. "<|file_sep|>": 151664), and
  github.com/fblissjr/ComfyUI-QwenImageWanBridge explorations/qwen25vl_tokenizer_analysis_20250905.md
  ("22 additional tokens (ID range 151643-151664)" of Qwen2.5-VL 7B).
- The chat template (`CHAT_TEMPLATE`): chat_template.json of Qwen/Qwen2.5-VL-7B-Instruct, with its image_count /
  video_count namespaces and `add_vision_id`; the text is identical in every copy found: huggingface.co
  MBZUAI/Video-R2/chat_template.json and ncbi/OcularChat32B/chat_template.json (both qwen2_5_vl fine-tunes),
  optimum-intel-internal-testing/tiny-random-qwen2.5-vl/chat_template.json, the `processor_config.chat_template`
  of mit-han-lab/StreamingVLM (qwen2_5_vl), and transformers' tests/models/qwen2_vl/test_processing_qwen2_vl.py.
- The pre-tokenizer: Qwen2's regex split (transformers' `tokenization_qwen2.PRETOKENIZE_REGEX`: `\\p{N}` alone, so
  every digit is its own token, " 1" is "Ġ" + "1") then ByteLevel without its own regex, NFC normalizer, as
  `Qwen2Tokenizer` builds it; saved with tokenizer_class Qwen2Tokenizer.
- Processor: Qwen2_5_VLProcessor with Qwen2VLImageProcessor / Qwen2VLVideoProcessor, patch 14, merge 2, temporal
  patch 2; min_pixels 28*28*4 (the release's 3136) and max_pixels 28*28*1280, so frames already resized to
  multiples of 28 within those bounds pass unchanged.
- Vision config: the release's shape scaled down: window attention (window_size 112), the last block of the
  tower full-attention (the 7B has [7, 15, 23, 31] of 32), tokens_per_second 2, out_hidden_size = text hidden.

The BPE (~1000 tokens with the added ones) is trained offline in seconds on text like the critics' answers:
"Yes"/"No", VideoScore-like "visual quality: 4; text-to-video alignment: 3; ...", "Alignment Score (1-5): 3
..." lines, LiFT's answers and questions, and ordinary English, so "Yes", "No", "Good", "Bad", "Normal" are whole
tokens. Same seed, same files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.tiny_critics.corpus import QWEN_WORDS, lift_answer_corpus

# Qwen2.5-VL-7B-Instruct's added tokens, in their order (151643..151664); the first 14 are special.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
NON_SPECIAL_ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
ADDED_TOKENS = SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS

# chat_template.json of Qwen/Qwen2.5-VL-7B-Instruct, verbatim (see the module docstring for the copies checked).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 1280
VOCAB_SIZE = 1000  # BPE tokens + the 22 added ones
PRESETS = ("tiny",)

_ENGLISH = ("is are was were has have had it this that there of in on at to from with without for and or but "
            "very quite slightly mostly overall good bad normal poor fair excellent clear unclear natural "
            "unnatural physics physical common sense consistency quality alignment style prompt text described "
            "object objects background foreground light shadow water fire tree grass road building man woman "
            "child people moves move moving jumps falls flies swims camera pan zoom fast slow stable flicker "
            "artifacts distortion detail details answer question score reason because looks appear appears "
            "visible motion follows laws gravity").split()
_YES_NO_REASONS = ("the video matches the prompt", "the motion looks natural", "the hands are deformed",
                   "the car moves smoothly", "the colors do not match the caption", "the scene is consistent",
                   "there is flicker in the background", "the subject appears in every frame")

# build_tiny_qwen2_5_vl(critic=...): fine-tuned to write the critic's answer format, or left random
TRAINED_CRITICS = ("videoscore2", "unifiedreward")
UNTRAINED_CRITICS = ("lift", "cosmos-reason1")
TRAIN_STEPS = {"videoscore2": 150, "unifiedreward": 100}  # where the loss levels off (the random digits' entropy)
_VS2_RATIONALE = "the video matches the prompt"  # one: a choice of several, greedy, blends them into loops
_MEDIA_PLACEHOLDERS = ("<|vision_start|><|video_pad|><|vision_end|>", "<|vision_start|><|image_pad|><|vision_end|>")


@dataclass(frozen=True)
class QwenShape:
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4  # head_dim 32: CPU attention needs 32/64/80+
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2, as [16, 24, 24] for the 7B's 128
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_heads: int = 2
    fullatt_block_indexes: tuple[int, ...] = (1,)  # the last block, as 7, 15, 23, 31 close each group of 8


SHAPES = {"tiny": QwenShape()}


def critic_answer_corpus(rng: random.Random) -> Iterator[str]:
    """The kinds of text the critics produce, plus ordinary English, for the BPE."""
    words = tuple(QWEN_WORDS) + tuple(_ENGLISH)

    def score() -> int:
        return rng.randint(1, 5)

    for _ in range(1500):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        yes_no = rng.choice(("Yes", "No"))
        yield yes_no
        yield f"{yes_no}, {rng.choice(_YES_NO_REASONS)}."
        yield f"Answer: {yes_no}. {sentence}."
        yield (f"visual quality: {score()}; text-to-video alignment: {score()}; "
               f"physical/common-sense consistency: {score()}")
        yield f"Alignment Score (1-5): {score()}\nPhysics Score (1-5): {score()}\nStyle Score (1-5): {score()}"
        yield f"The score is {score()}. {sentence[:1].upper()}{sentence[1:]}."
    yield from lift_answer_corpus(rng, words=words, labels=("Good", "Normal", "Bad"))


def _build_tokenizer(seed: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(ADDED_TOKENS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(critic_answer_corpus(random.Random(seed)), trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    # the added tokens follow the BPE vocabulary, in the release's order, as 151643.. follow Qwen2's 151643 tokens
    vocab.update({t: len(model["vocab"]) + i for i, t in enumerate(ADDED_TOKENS)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=list(SPECIAL_TOKENS[1:]),
                               model_max_length=131072, errors="replace", clean_up_tokenization_spaces=False,
                               split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    if ids != list(range(len(model["vocab"]), len(model["vocab"]) + len(ADDED_TOKENS))):
        raise RuntimeError(f"added tokens out of the release's order: {ids}")
    return tokenizer


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0, preset: str = "tiny", critic: str | None = None) -> Path:
    """Build the tiny Qwen2.5-VL critic into `out_dir` (returned): config, float32 weights, tokenizer, processor,
    generation config and `lift_critic.json`. Same seed, same files.

    `critic` "videoscore2" or "unifiedreward": the random model is then fine-tuned briefly (CPU, float32, text
    only: see `train_answer_format`) to answer that critic's prompt in its format, so its parsed-score path runs;
    lift_critic.json records {"trained_format": critic, "steps": N}. None, "lift", "cosmos-reason1": untrained
    (cosmos is read from the Yes/No probabilities; None gives the same files as before this option)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if preset not in SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if critic not in (None, *UNTRAINED_CRITICS, *TRAINED_CRITICS):
        raise ValueError(f"unknown critic {critic!r}; choose from {', '.join(UNTRAINED_CRITICS + TRAINED_CRITICS)}")
    shape = SHAPES[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    pixels = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    text = dict(vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                max_position_embeddings=4096, rms_norm_eps=1e-6, max_window_layers=shape.layers,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                 "mrope_section": list(shape.mrope_section)},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    vision = dict(depth=shape.vision_depth, hidden_size=shape.vision_hidden,
                  intermediate_size=shape.vision_intermediate, num_heads=shape.vision_heads, hidden_act="silu",
                  in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                  window_size=112, out_hidden_size=shape.hidden,
                  fullatt_block_indexes=list(shape.fullatt_block_indexes))
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                     pad_token_id=ids["<|endoftext|>"], do_sample=False).save_pretrained(out)
    record = {"family": "qwen2_vl", "architecture": "qwen2_5_vl", "tiny": True, "preset": preset, "seed": seed}
    if critic in TRAINED_CRITICS:
        steps = train_answer_format(model, processor, critic, seed=seed)
        model.save_pretrained(out)  # over the random weights
        record.update(trained_format=critic, steps=steps)
    (out / "lift_critic.json").write_text(json.dumps(record, indent=1))
    return out


def _format_example(critic: str, rng: random.Random) -> tuple[list[dict], str]:
    """One training chat (the critic's real user turn, its media entries included) and an answer in its format,
    the scores random digits 1-5 (so the digits' probabilities come out spread)."""
    caption = " ".join(rng.choice(QWEN_WORDS) for _ in range(rng.randint(2, 6)))
    a, b, c = (rng.randint(1, 5) for _ in range(3))
    if critic == "videoscore2":
        from service.critics.videoscore2 import SPEC
        media = [{"type": "video"}]
        answer = (f"<think>{_VS2_RATIONALE}</think>\nvisual quality: {a}; text-to-video alignment: {b}, "
                  f"physical/common-sense consistency: {c}")
    else:
        from service.critics.unifiedreward import NUM_FRAMES, SPEC
        media = [{"type": "image"}] * NUM_FRAMES
        answer = f"Alignment Score (1-5): {a}\nPhysics Score (1-5): {b}\nStyle Score (1-5): {c}"
    query = SPEC.queries[0]
    messages = [{"role": "system", "content": query.system}] if query.system else []
    messages.append({"role": "user", "content": [*media, {"type": "text", "text": query.user_text(caption)}]})
    return messages, answer


def train_answer_format(model, processor, critic: str, seed: int = 0, steps: int | None = None, batch: int = 8,
                        lr: float = 3e-3, media_every: int | None = 2) -> int:
    """Fine-tune `model` in place (CPU, float32, deterministic for a seed) to answer `critic`'s prompt in its
    format; returns the number of steps. The chat is rendered with the processor's own template. With `media`,
    each media placeholder gets a small random grid of patches (random pixel values in the processor's
    normalised range, 4-16 tokens an image, up to 64 a video), so the answer is learnt after real vision
    embeddings, as at inference; without, the placeholders are dropped (text only). The loss is on the answer's
    tokens and the closing <|im_end|> only."""
    import torch

    tokenizer = processor.tokenizer
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    media_ids = {tokenizer.convert_tokens_to_ids("<|image_pad|>"): 1, tokenizer.convert_tokens_to_ids("<|video_pad|>"): 2}
    patch_dim = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch, the processor's flattened patch
    steps = TRAIN_STEPS[critic] if steps is None else steps
    rng = random.Random(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.model.visual.requires_grad_(False)  # the vision tower stays as built: no backward through it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1 - done / steps)  # linear to 0
    model.train()
    for step in range(steps):
        with_media = bool(media_every) and step % media_every == media_every - 1
        rows = []
        grids: dict[int, list[list[int]]] = {1: [], 2: []}
        for _ in range(batch):
            messages, answer = _format_example(critic, rng)
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if not with_media:
                for placeholder in _MEDIA_PLACEHOLDERS:
                    prompt = prompt.replace(placeholder, "")
            ids, types = [], []
            for token in tokenizer(prompt, add_special_tokens=False)["input_ids"]:
                kind = media_ids.get(token, 0)
                if kind:
                    grid = [rng.choice((2, 3, 4)) if kind == 2 else 1, 2 * rng.randint(2, 6), 2 * rng.randint(2, 6)]
                    grids[kind].append(grid)
                    count = grid[0] * grid[1] * grid[2] // 4
                else:
                    count = 1
                ids += [token] * count
                types += [kind] * count
            answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append((ids + answer_ids, [-100] * len(ids) + answer_ids, types + [0] * len(answer_ids)))
        width = max(len(ids) for ids, _, _ in rows)
        inputs = dict(
            input_ids=torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _, _ in rows]),
            attention_mask=torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows]),
            mm_token_type_ids=torch.tensor([types + [0] * (width - len(types)) for _, _, types in rows]))
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab, _ in rows])
        for kind, (values, grid_key) in {1: ("pixel_values", "image_grid_thw"),
                                         2: ("pixel_values_videos", "video_grid_thw")}.items():
            if grids[kind]:
                patches = sum(t * h * w for t, h, w in grids[kind])
                inputs[values] = torch.rand(patches, patch_dim, generator=generator) * 3.9 - 1.8
                inputs[grid_key] = torch.tensor(grids[kind])
        hidden = model.model(**inputs).last_hidden_state
        targets = labels[:, 1:]
        scored = targets != -100  # the LM head only where the loss is: the answers are a tenth of the tokens
        logits = model.lm_head(hidden[:, :-1][scored])
        loss = torch.nn.functional.cross_entropy(logits, targets[scored])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.model.visual.requires_grad_(True)
    model.eval()
    return steps


__all__ = ["ADDED_TOKENS", "CHAT_TEMPLATE", "MAX_PIXELS", "MIN_PIXELS", "NON_SPECIAL_ADDED_TOKENS", "PRESETS",
           "SHAPES", "SPECIAL_TOKENS", "TRAINED_CRITICS", "TRAIN_STEPS", "UNTRAINED_CRITICS", "QwenShape",
           "build_tiny_qwen2_5_vl", "critic_answer_corpus", "train_answer_format"]
