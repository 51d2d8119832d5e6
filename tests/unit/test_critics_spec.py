"""Critics as data (service/critics): each critic's prompt byte for byte against strings written from its source
(tests/fixtures/critics, see docs/critics), its parser on real outputs and on what real models emit beside the
format, its frame and pixel rules, the soft scores, and the names trainers may ask for."""

from __future__ import annotations

from pathlib import Path
from string import Template

import pytest

from service.critics import CRITIC_NAMES, load_spec
from service.critics.runner import soft_probabilities, step_at_offset
from service.critics.spec import expected_value

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "critics"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory: pytest.TempPathFactory):
    from service.families.qwen2_vl import Qwen2VLFamily
    from service.tiny_critics.qwen2_5_vl import build_tiny_qwen2_5_vl

    return Qwen2VLFamily(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("q25"), seed=0))


# ---- prompts ------------------------------------------------------------------------------------------------
def test_cosmos_reason1_prompt_is_the_services_byte_for_byte(qwen25) -> None:
    from service.critics.cosmos_reason1 import SYSTEM_PROMPT, USER_PROMPT
    from service.critics.runner import chat_for

    system = fixture("cosmos_reason1_system_prompt.txt")
    assert SYSTEM_PROMPT == system and USER_PROMPT == fixture("cosmos_reason1_user_question.txt")
    spec = load_spec("cosmos-reason1")
    caption = "A robot arm stacks two red cubes."
    text = qwen25.chat_template_text(chat_for(spec, spec.queries[0], caption), 8)
    # Qwen2.5-VL's template: the system turn as given, the user turn video first, then the caption (the service's)
    assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|><|video_pad|><|vision_end|>{caption}<|im_end|>\n<|im_start|>assistant\n")
    question = load_spec("cosmos-reason1", "question")
    assert question.queries[0].user_text(caption) == fixture("cosmos_reason1_user_question.txt")
    with pytest.raises(ValueError, match="no variant"):
        load_spec("cosmos-reason1", "other")


def test_videoscore2_query_is_its_template_byte_for_byte(qwen25) -> None:
    from service.critics.runner import chat_for

    spec = load_spec("videoscore2")
    caption = "A cat jumps over a fence at sunset."
    want = Template(fixture("videoscore2_query_template.txt")).substitute(t2v_prompt=caption)
    assert spec.queries[0].user_text(caption) == want
    text = qwen25.chat_template_text(chat_for(spec, spec.queries[0], caption), 8)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|><|video_pad|><|vision_end|>{want}<|im_end|>\n<|im_start|>assistant\n")


def test_unifiedreward_prompt_is_its_template_with_sixteen_images_first(qwen25) -> None:
    from service.critics.runner import chat_for

    spec = load_spec("unifiedreward")
    caption = "Two dogs play in the snow."
    want = fixture("unifiedreward_prompt_template.txt").format(prompt=caption)
    assert spec.queries[0].user_text(caption) == want and want.endswith(f"Text Caption: [{caption}]")
    text = qwen25.chat_template_text(chat_for(spec, spec.queries[0], caption), 16)
    images = "<|vision_start|><|image_pad|><|vision_end|>" * 16
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"{images}{want}<|im_end|>\n<|im_start|>assistant\n")


# ---- parsers ------------------------------------------------------------------------------------------------
def test_videoscore2_reads_its_published_outputs_as_its_regex_does() -> None:
    import re

    from service.critics.videoscore2 import parse_answer

    # vs2_inference.py's regex, as written there
    source = re.compile(r"visual quality:\s*(\d+).*?text-to-video alignment:\s*(\d+).*?physical/common-sense "
                        r"consistency:\s*(\d+)", re.DOTALL | re.IGNORECASE)
    outputs = fixture("videoscore2_outputs.txt").split("\n=====\n")
    assert len(outputs) == 5
    for text in outputs:
        parsed = parse_answer(text)
        m = source.search(text)
        assert m is not None
        assert [parsed.values[d] for d in ("visual_quality", "text_alignment", "physical_consistency")] == \
            [float(m.group(i)) for i in (1, 2, 3)]
        for dim, offset in parsed.digit_offsets.items():
            assert offset is not None and text[offset].isdigit()


@pytest.mark.parametrize("text, want", [
    # the official layout, extra spaces
    ("visual quality:  4 ; text-to-video alignment:3,  physical/common-sense consistency:   2", (4, 3, 2)),
    # reported of the released weights: descriptors before the colon (the official regex reads nothing)
    ("<think>x</think>\n(1) visual quality – clarity, smoothness, artifacts: 4\n(2) text-to-video alignment – "
     "fidelity to the prompt: 3\n(3) physical/common-sense consistency – naturalness: 5", (4, 3, 5)),
    # decimals after the rationale
    ("</think> Visual Quality: 3.5\nText-to-Video Alignment: 2\nPhysical/Common-sense Consistency: 4", (3.5, 2, 4)),
    # a missing dimension stays missing
    ("visual quality: 4; text-to-video alignment: 3", (4, 3, None)),
    ("I cannot rate this video.", (None, None, None)),
])
def test_videoscore2_parser_takes_what_models_emit(text: str, want: tuple) -> None:
    from service.critics.videoscore2 import parse_answer

    got = parse_answer(text).values
    assert (got["visual_quality"], got["text_alignment"], got["physical_consistency"]) == want


@pytest.mark.parametrize("text, want", [
    (fixture("unifiedreward_outputs.txt"), (2.4036, 3.0987, 3.3889)),  # the script's own example
    ("Alignment Score (1-5): 4\nPhysics Score (1-5):  2\nStyle Score (1-5): 5", (4, 2, 5)),
    ("Alignment Score (1-5): 1\nAlignment Score (1-5): 3\nStyle Score (1-5): 2", (3, None, 2)),  # last one wins
    ("The video is fine.", (None, None, None)),
])
def test_unifiedreward_parser_is_pref_grpos(text: str, want: tuple) -> None:
    from service.critics.unifiedreward import parse_answer

    got = parse_answer(text).values
    assert (got["alignment"], got["physics"], got["style"]) == want


# ---- soft scores --------------------------------------------------------------------------------------------
def test_soft_scores() -> None:
    import math

    from service.critics.videoscore2 import normed_soft_score

    digits = {"1": 11, "2": 12, "3": 13, "4": 14, "5": 15}
    step = {11: math.log(0.05), 12: math.log(0.05), 13: math.log(0.1), 14: math.log(0.5), 15: math.log(0.1)}
    p = soft_probabilities(step, digits)
    assert p is not None and sum(p.values()) == pytest.approx(1.0)
    assert p["4"] == pytest.approx(0.5 / 0.8)  # renormalised over the five
    assert expected_value(p) == pytest.approx((1 * .05 + 2 * .05 + 3 * .1 + 4 * .5 + 5 * .1) / 0.8)
    assert normed_soft_score(p) == round(4 * 0.5 / 0.8, 4)  # vs2_inference.py: best x p(best), 4 places
    assert soft_probabilities({11: 0.0}, digits) is None  # a step without every digit's log-prob: no soft score


def test_the_digit_step_is_found_by_character_offset(qwen25) -> None:
    tok = qwen25.tokenizer
    text = "visual quality: 4; text-to-video alignment: 3"
    ids = tok(text, add_special_tokens=False).input_ids
    digits = {tok.convert_tokens_to_ids(d) for d in "12345"}
    assert step_at_offset(tok, ids, text.index("4"), digits) == ids.index(tok.convert_tokens_to_ids("4"))
    assert step_at_offset(tok, ids, text.index("3"), digits) == len(ids) - 1
    assert step_at_offset(tok, ids, 0, digits) is None  # not a digit's position


# ---- frames and pixels --------------------------------------------------------------------------------------
def test_frame_rules() -> None:
    cosmos = load_spec("cosmos-reason1").media
    assert cosmos.frames.indices(93, 16.0) == list(range(92))  # odd count: the last frame dropped
    picked = cosmos.frames.indices(400, 24.0)  # stride 3 keeps 134 (<= 160)
    assert picked[:3] == [0, 3, 6] and len(picked) == 134
    assert cosmos.frames.sampled_fps(400, 24.0, 134) == 8.0
    assert cosmos.pixels is not None and cosmos.pixels.frame_size(432, 768, 92) == (280, 504)  # ~9,216 tokens
    vs2 = load_spec("videoscore2").media.frames
    assert vs2.indices(49, 8.0) == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48]  # 2 fps, capped at 10 frames
    assert len(vs2.indices(12, 8.0)) == 4  # 1.5 s at 2 fps = 3, at least 4
    ur = load_spec("unifiedreward").media
    assert ur.present_as == "images" and ur.frames.indices(49, 8.0) == [int(i * 49 / 16) for i in range(16)]
    lift = load_spec("lift").media.frames
    assert lift.indices(49, 8.0) == [0, 6, 13, 20, 27, 34, 41, 48]


# ---- names ----------------------------------------------------------------------------------------------------
def test_every_critic_has_a_spec_and_the_cli_offers_each() -> None:
    from service.cli import CRITIC_CHOICES

    assert CRITIC_CHOICES == CRITIC_NAMES == ("lift", "cosmos-reason1", "videoscore2", "unifiedreward", "videoalign")
    for name in CRITIC_NAMES:
        spec = load_spec(name)
        assert spec.name == name and spec.dimension_names and spec.source
        assert all(set(q.dimensions) <= set(spec.dimension_names) for q in spec.queries)
    with pytest.raises(ValueError, match="unknown critic"):
        load_spec("visionreward")


def test_adapter_reward_names_a_critics_own_numbers() -> None:
    from service.adapters.selection import RewardSelection
    from service.errors import InvalidRequest

    dims = load_spec("unifiedreward").dimension_names
    assert str(RewardSelection.parse("alignment=1.4,style=0.7", dims)) == "alignment=1.4,style=0.7"
    with pytest.raises(InvalidRequest, match="unknown reward"):
        RewardSelection.parse("motion_smoothness", dims)
    RewardSelection.parse("motion_smoothness")  # LiFT's, the default critic


def test_settings_check_the_reward_against_the_critic() -> None:
    from pydantic import ValidationError

    from service.app.settings import ServiceSettings

    assert ServiceSettings(critic="videoscore2", adapter_reward="text_alignment").critic == "videoscore2"
    with pytest.raises(ValidationError, match="LIFT_ADAPTER_REWARD"):
        ServiceSettings(critic="videoscore2", adapter_reward="video_fidelity")
    with pytest.raises(ValidationError, match="LIFT_CRITIC_VARIANT"):
        ServiceSettings(critic="videoscore2", critic_variant="question")


def test_a_selection_combines_critics_and_knows_videoaligns_overall() -> None:
    from service.adapters.selection import RewardSelection
    from service.errors import InvalidRequest
    from service.protocol import DimensionScore, ScoreResponse

    critics = {name: load_spec(name).dimension_names for name in ("lift", "videoalign")}
    sel = RewardSelection.parse("videoalign.overall=1.0,lift.expected_reward=0.5", critics["lift"], critics=critics)
    assert sel.critics_asked("lift") == ["lift", "videoalign"]

    def answer(model: str, reward: float, expected: float | None) -> ScoreResponse:
        dim = DimensionScore(label=None, score=0.5, expected_score=expected, probabilities=None, rationale=None)
        return ScoreResponse(id="x", model=model, critic=model, reward=reward, expected_reward=expected,
                             num_frames=8, dimensions={"d": dim})

    lift, va = answer("lift", 0.3, 0.4), answer("videoalign", 2.5, None)
    both = lift.model_copy(update={"by_critic": {"lift": lift, "videoalign": va}})
    assert sel.value(both) == pytest.approx(2.5 + 0.5 * 0.4)
    with pytest.raises(InvalidRequest, match="did not answer"):
        sel.value(lift)  # a response without VideoAlign's answer
    with pytest.raises(InvalidRequest, match="unknown reward"):
        RewardSelection.parse("videoalign.overal", critics["lift"], critics=critics)
