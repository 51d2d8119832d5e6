"""The vila family's prompts (LiFT's query in VILA's templates, VILA's piece-wise tokenization) and the
transformers reference (image-token expansion == VILA's splice, padded vocabulary masked, strict loading)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from service.errors import InvalidRequest, ModelLoadError
from service.families.vila.prompt import CHAT_TEMPLATES, choose_template, lift_query
from service.media import VideoFrames
from service.rubric import DIMENSIONS, LABELS


@pytest.fixture(scope="module")
def vila_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp("vila-family")
    src = build_tiny_vila(root / "src", seed=1, with_lora=True)
    convert_vila(src, root / "critic", src / "lora")
    return src, root / "critic"


@pytest.fixture(scope="module")
def family(vila_dirs: tuple[Path, Path]):
    from service.families import load_family

    return load_family(vila_dirs[1])


@pytest.fixture(scope="module")
def reference(vila_dirs: tuple[Path, Path]):
    from service.families.vila.reference import load_reference

    return load_reference(vila_dirs[1])


def video(seed: int = 0, n: int = 8) -> VideoFrames:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 90, 120, 3), dtype=np.uint8)
    return VideoFrames(frames=frames, indices=list(range(n)), total_frames=n, fps=8.0, duration_s=n / 8)


# ---- prompt text ----------------------------------------------------------------------------------
def test_vicuna_v1_and_hermes_2_render_as_vila_does() -> None:
    q = lift_query("a cat", "motion_smoothness", 2)
    assert q == "<image>\n<image>\na cat" + DIMENSIONS[1].question
    assert CHAT_TEMPLATES["vicuna_v1"].render(q) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: " + q + " ASSISTANT:")
    assert CHAT_TEMPLATES["hermes-2"].render(q) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n" + q
        + "<|im_end|><|im_start|>assistant\n")


def test_template_choice_from_checkpoint() -> None:
    assert choose_template({}, "siglip_vision_model", {"<s>", "</s>"}) == "vicuna_v1"  # 13B
    assert choose_template({}, "intern_vit_6b", {"<|startoftext|>"}) == "hermes-2"  # 40B tower
    assert choose_template({}, "siglip_vision_model", {"<|im_start|>"}) == "hermes-2"


def test_caption_cannot_smuggle_an_image_slot() -> None:
    with pytest.raises(InvalidRequest):
        lift_query("a cat <image> here", "video_fidelity", 8)


# ---- family ---------------------------------------------------------------------------------------
def test_detection_and_unconverted_folder_refused(vila_dirs: tuple[Path, Path]) -> None:
    from service.families import detect_family, load_family

    src, critic = vila_dirs
    assert detect_family(critic) == "vila" and load_family(critic).name == "vila"
    with pytest.raises(ModelLoadError, match="lift convert-vila --base"):
        load_family(src)  # VILA's release layout (model_type llava_llama) -> told to convert


def test_vllm_prompt_is_vilas_token_sequence(family) -> None:
    tok = family.tokenizer
    p = family.vllm_prompt("a red car", "semantic_consistency", video())
    ids = p.token_ids
    assert ids.count(family.image_token_id) == 8 and len(p.vllm_mm_data["image"]) == 8
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # VILA tokenizes each piece between images on its own
    pieces = family.template.render(lift_query("a red car", "semantic_consistency", 8)).split("<image>")
    expected = tok(pieces[0]).input_ids
    for piece in pieces[1:]:
        expected += [family.image_token_id] + tok(piece).input_ids[1:]
    assert ids == expected
    assert tok.decode(ids[-12:]).endswith("ASSISTANT:")


def test_hf_prompt_expands_each_image_to_its_projected_tokens(family) -> None:
    p = family.hf_prompt("a red car", "video_fidelity", video(n=5))
    ids = p["input_ids"][0].tolist()
    assert ids.count(family.image_token_id) == 5 * 25 == 5 * family.tokens_per_image
    assert p["pixel_values"].shape == (5, 3, 126, 126)
    short = family.vllm_prompt("a red car", "video_fidelity", video(n=5)).token_ids
    assert len(ids) == len(short) + 5 * 24


def test_label_tokens_follow_the_assistant_turn(family) -> None:
    ids = family.label_token_ids()
    tok = family.tokenizer
    assert set(ids) == set(LABELS)
    for label, seq in ids.items():  # vicuna_v1 answers "ASSISTANT: Good. ...": the space is the label's '▁'
        assert "".join(tok.convert_ids_to_tokens(seq)).replace("▁", " ") == " " + label
    assert len(ids["Good"]) == 1 and len(ids["Normal"]) > 1  # the tiny tokenizer never saw "Normal" whole
    assert family.mm_limits(8) == {"image": 8}


# ---- reference ------------------------------------------------------------------------------------
def vila_splice_logits(model, short_ids: list[int], pixel_values: torch.Tensor, image_id: int) -> torch.Tensor:
    """VILA's own way (prepare_inputs_labels_for_multimodal): one sentinel per image, the text chunks' embeddings
    and each image's projected features concatenated in order."""
    feats = model.encode_images(pixel_values)
    embed = model.llm.get_input_embeddings()
    parts, chunk, k = [], [], 0
    for t in short_ids + [None]:
        if t == image_id or t is None:
            if chunk:
                parts.append(embed(torch.tensor(chunk)))
            chunk = []
            if t == image_id:
                parts.append(feats[k])
                k += 1
        else:
            chunk.append(t)
    return model.llm(inputs_embeds=torch.cat(parts)[None]).logits[0]


def test_reference_expansion_equals_vila_splice(family, reference) -> None:
    v = video(seed=4)
    hf = family.hf_prompt("a dog runs", "motion_smoothness", v)
    short = family.vllm_prompt("a dog runs", "motion_smoothness", v).token_ids
    with torch.inference_mode():
        ours = reference(**hf).logits[0]
        vila = vila_splice_logits(reference, short, hf["pixel_values"], family.image_token_id)
    real = reference.real_vocab_size
    torch.testing.assert_close(ours[:, :real], vila[:, :real], rtol=0, atol=1e-5)
    assert (ours[:, real:] == -1e4).all()  # padding rows (added for the in-vocab <image> id) masked
    # and the images matter: other frames, other logits
    other = family.hf_prompt("a dog runs", "motion_smoothness", video(seed=5))
    with torch.inference_mode():
        assert (reference(**other).logits[0, -1] - ours[-1]).abs().max() > 1e-3


def test_reference_generates_with_cache(family, reference) -> None:
    hf = family.hf_prompt("a dog runs", "motion_smoothness", video(seed=6))
    with torch.inference_mode():
        out = reference.generate(**hf, max_new_tokens=4, do_sample=False)
        step = reference(**hf).logits[0, -1].argmax()
    assert out.shape[1] == hf["input_ids"].shape[1] + 4 and out[0, hf["input_ids"].shape[1]] == step


def test_reference_refuses_incomplete_checkpoint(vila_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from service.families.vila.reference import load_reference

    broken = tmp_path / "broken"
    shutil.copytree(vila_dirs[1], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[-1]  # the projector's
    tensors = load_file(str(shard))
    tensors.pop("mm_projector.layers.4.weight")
    save_file(tensors, str(shard))
    with pytest.raises(ModelLoadError, match="lacks 1 tensors"):
        load_reference(broken)
    with pytest.raises(ModelLoadError, match="convert-vila"):
        load_reference(vila_dirs[0])


def test_sentencepiece_llama_tokenizer_release(vila_dirs: tuple[Path, Path], family) -> None:
    """The tiny 13B's llm/ is SentencePiece only, as VILA1.5-13b's: converted and prompted like VILA does, with
    Llama's quirks: each piece after an image starts with a bare '▁', and the label is '▁Good'.
    (tests/unit/test_vila_tokenizer.py holds every piece to sentencepiece's own ids.)"""
    src, _ = vila_dirs
    assert (src / "llm" / "tokenizer.model").is_file() and not (src / "llm" / "tokenizer.json").exists()
    tok = family.tokenizer
    assert family.label_token_ids()["Good"] == [tok.convert_tokens_to_ids("▁Good")]
    ids = family.vllm_prompt("a red car", "motion_smoothness", video()).token_ids
    newline = tok("\n").input_ids[1:]  # [▁, <0x0A>]: what VILA's piece-wise tokenization produces
    assert tok.convert_ids_to_tokens(newline) == ["▁", "<0x0A>"]
    starts = [i for i, t in enumerate(ids) if t == family.image_token_id]
    assert len(starts) == 8 and all(ids[i + 1:i + 3] == newline for i in starts[:-1])


@pytest.mark.parametrize("clip_frames, shown", [(1, 1), (3, 3), (7, 7), (8, 8), (20, 8)])
def test_short_clip_gets_one_image_per_frame_it_has_as_lift_did(family, clip_frames, shown) -> None:
    """LiFT's loader reads every frame of a clip shorter than 8 and puts one <image> per frame in the prompt;
    longer clips are sampled to 8 by linspace."""
    import numpy as np

    from service.media import frames_from_array

    rng = np.random.default_rng(clip_frames)
    clip = frames_from_array(rng.integers(0, 255, (clip_frames, 32, 32, 3), dtype=np.uint8), 8)
    assert clip.num_frames == 8  # sampled with repeats, as decoded
    p = family.vllm_prompt("a red car", "motion_smoothness", clip)
    assert p.token_ids.count(family.image_token_id) == shown and len(p.vllm_mm_data["image"]) == shown
    hf = family.hf_prompt("a red car", "motion_smoothness", clip)
    assert hf["input_ids"][0].tolist().count(family.image_token_id) == shown * family.tokens_per_image
    assert hf["pixel_values"].shape[0] == shown
    seen = family.critic_frames(clip)
    assert seen.indices == sorted(set(clip.indices)) and np.array_equal(seen.frames[0], clip.frames[0])


def test_reason_continues_the_label_as_in_vilas_answer_text(family) -> None:
    """After the label the engines force its '.', tokenized as in "ASSISTANT: Good. The ..." (VILA's training
    text): with SentencePiece a lone '. ' would be other pieces than the ones after '▁Good'."""
    tok = family.tokenizer
    base = tok(family.template.tail).input_ids
    for label, ids in family.label_token_ids().items():
        answer = tok(family.template.tail + family.template.answer_lead + label + ". The video is fine").input_ids
        assert answer[:len(base)] == base
        answer = answer[len(base):]
        forced = ids + family.reason_prefix_ids(label)
        assert answer[:len(forced)] == forced, (label, tok.convert_ids_to_tokens(answer[:len(forced) + 1]))
        assert tok.convert_ids_to_tokens(answer[len(forced)]).startswith("▁")  # the reason's space is generated
