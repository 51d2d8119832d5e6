"""The rubric's numbers and wording against LiFT's, and the answer parser on messy critic output."""

import pytest

from service.errors import AnswerParseError
from service.rubric import (
    DIMENSION_NAMES,
    DIMENSIONS,
    LABEL_SCORES,
    dimension_of_question,
    format_answer,
    parse_answer,
    user_text,
)
from service.scoring import dimension_score, expected_score, reward


def test_label_scores_are_lifts():
    assert LABEL_SCORES == {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}


def test_dimensions_and_questions_verbatim():
    assert DIMENSION_NAMES == ("semantic_consistency", "motion_smoothness", "video_fidelity")
    q = {d.name: d.question for d in DIMENSIONS}
    assert q["semantic_consistency"].startswith(" Please identify the semantic consistency issues in this video")
    assert q["semantic_consistency"].endswith("quantity, color, scene description, style, and other relevant aspects.")
    assert q["motion_smoothness"] == (
        " Please identify the motion issues in this video, focusing on the continuity and smoothness of actions, "
        "as well as their coherence and adherence to the laws of physics.")
    assert "missing limbs, deformed hands or faces, or other unrealistic elements." in q["video_fidelity"]


def test_prompt_is_caption_then_question():
    text = user_text("  a red car on a road ", "motion_smoothness")
    assert text == "a red car on a road Please identify the motion issues in this video, focusing on the continuity " \
                   "and smoothness of actions, as well as their coherence and adherence to the laws of physics."
    assert dimension_of_question("<video>\n" + text) == "motion_smoothness"
    assert dimension_of_question("what is this?") is None


@pytest.mark.parametrize(
    "text,label,rationale",
    [
        ("Good. The car moves smoothly.", "Good", "The car moves smoothly."),
        ("  bad.  the hands are deformed  ", "Bad", "the hands are deformed"),
        ("NORMAL: some flicker", "Normal", "some flicker"),
        ("Good the motion is fine", "Good", "the motion is fine"),  # missing period
        ("Bad. Not good at all, the dog has five legs", "Bad", "Not good at all, the dog has five legs"),
        ("Good.", "Good", ""),  # empty reason
        ('"Normal." slightly blurry', "Normal", "slightly blurry"),
        ("The video is Bad because of jitter", "Bad", "The video is Bad because of jitter"),
    ],
)
def test_parse_messy_answers(text, label, rationale):
    parsed = parse_answer(text)
    assert (parsed.label, parsed.rationale) == (label, rationale)


@pytest.mark.parametrize("text", ["", "   ", "Excellent video", "goodness gracious"])
def test_parse_refuses_answers_without_label(text):
    with pytest.raises(AnswerParseError):
        parse_answer(text)


def test_format_round_trips():
    assert parse_answer(format_answer("Normal", "a bit shaky")).rationale == "a bit shaky"
    assert format_answer("Good", "") == "Good."


def test_reward_is_mean_of_scores_and_expected_reward_uses_probabilities():
    p_good = {"Good": 1.0, "Normal": 0.0, "Bad": 0.0}
    p_mixed = {"Good": 0.5, "Normal": 0.25, "Bad": 0.25}
    assert expected_score(p_mixed) == pytest.approx(0.5 * 0.9 + 0.25 * 0.2 + 0.25 * 0.05)
    dims = {
        "semantic_consistency": dimension_score("Good", p_good, "ok"),
        "motion_smoothness": dimension_score("Bad", p_mixed, "jitter"),
        "video_fidelity": dimension_score("Normal", p_mixed, "blur"),
    }
    r, er = reward(dims)
    assert r == pytest.approx((0.9 + 0.05 + 0.2) / 3)  # LiFT Eq. 2
    assert er == pytest.approx((0.9 + 2 * expected_score(p_mixed)) / 3)
    with pytest.raises(ValueError):
        reward({"semantic_consistency": dims["semantic_consistency"]})


@pytest.mark.parametrize("answer, label", [
    ("Good. The video matches, although the light is Normal.", "Normal"),  # Normal anywhere wins
    ("Good. The dog's legs look Bad in frame 3.", "Bad"),                    # else Bad anywhere
    ("Bad. Not Normal at all.", "Normal"),                                   # Normal before Bad, as LiFT checks
    ("Good. Smooth and consistent.", "Good"),
    ("The video shows a cat on a sofa.", "Good"),                            # no label at all -> Good (0.9)
    ("", "Good"),
    ("bad motion, normal colours", "Good"),                                  # case-sensitive, as LiFT's `in`
])
def test_lift_substring_rule_is_lifts_get_score(answer, label):
    from service.rubric import lift_substring_label

    assert lift_substring_label(answer) == label
