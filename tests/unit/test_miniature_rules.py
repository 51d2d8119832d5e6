"""The hidden raters of the miniature LiFT run: each rule sees its own defect and only that one, and the
ratings come out in LiFT's release format, read back by the reader `lift critic train` uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.critic.data import load_rated_data
from finetune.miniature.clips import ClipDefects, ClipSpec, batch, colour_of, prompts, render, TRAIN_SUBJECTS
from finetune.miniature.rules import rate_frames, summarize, write_ratings

RNG_SEEDS = range(6)


def labels(spec: ClipSpec, seed: int) -> dict[str, str]:
    frames = render(spec, np.random.default_rng(seed))
    return {d: r.label for d, r in rate_frames(frames, spec.caption).dimensions.items()}


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_a_clean_matching_clip_is_good_on_every_dimension(seed: int) -> None:
    assert labels(ClipSpec("a red car", "red"), seed) == {
        "semantic_consistency": "Good", "motion_smoothness": "Good", "video_fidelity": "Good"}


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_each_defect_is_seen_by_its_own_rule_only(seed: int) -> None:
    assert labels(ClipSpec("a red car", "blue"), seed) == {
        "semantic_consistency": "Bad", "motion_smoothness": "Good", "video_fidelity": "Good"}
    assert labels(ClipSpec("a green dog", "green", light_fade=0.15), seed) == {
        "semantic_consistency": "Good", "motion_smoothness": "Bad", "video_fidelity": "Good"}
    assert labels(ClipSpec("a blue bird", "blue", exposure=0.45), seed) == {
        "semantic_consistency": "Good", "motion_smoothness": "Good", "video_fidelity": "Bad"}


def test_weak_defects_are_normal() -> None:
    lab = labels(ClipSpec("a red car", "red", light_fade=0.07, exposure=0.7), 0)
    assert lab["motion_smoothness"] == "Normal" and lab["video_fidelity"] == "Normal"


def test_the_pretraining_mixture_has_every_outcome() -> None:
    specs, frames = batch(np.random.default_rng(0), 200, TRAIN_SUBJECTS, ClipDefects())
    summary = summarize([rate_frames(f, s.caption) for s, f in zip(specs, frames)])
    for d, s in summary.items():
        assert s.counts["Good"] > 40 and s.counts["Bad"] > 40, (d, s.counts)


def test_prompts_name_a_palette_colour() -> None:
    assert all(colour_of(p) for p in prompts(TRAIN_SUBJECTS))
    assert colour_of("a dog") is None


def test_ratings_in_lift_format_read_back_by_the_critic_reader(tmp_path: Path) -> None:
    from finetune.critic.synthetic import write_mp4

    vdir = tmp_path / "videos"
    vdir.mkdir()
    ratings = []
    for i, spec in enumerate([ClipSpec("a red car", "red"), ClipSpec("a blue dog", "green", light_fade=0.2, exposure=0.4)]):
        frames = render(spec, np.random.default_rng(i))
        path = write_mp4(vdir / f"v{i}.mp4", frames)
        ratings.append(rate_frames(frames, spec.caption, path))
    out = write_ratings(ratings, tmp_path / "ratings.json", relative_to=vdir)
    entries = json.loads(out.read_text())
    assert len(entries) == 6 and entries[0]["conversations"][0]["from"] == "human"
    examples = load_rated_data(out, vdir)
    got = {(e.video.name, e.dimension): e.label for e in examples}
    assert got[("v0.mp4", "semantic_consistency")] == "Good"
    assert got[("v1.mp4", "semantic_consistency")] == "Bad"
    assert got[("v1.mp4", "motion_smoothness")] == "Bad"
    assert got[("v1.mp4", "video_fidelity")] == "Bad"
    assert all(e.reason for e in examples)


def test_flat_control_gives_every_sample_the_round_mean(tmp_path: Path) -> None:
    from finetune.miniature.control import FlatRewardLabeler

    def inner(manifest: Path, labels_path: Path) -> None:
        rows = [{"id": "a", "video": "a.mp4", "prompt": "p", "status": "ok", "reward": 0.9, "expected_reward": 0.8},
                {"id": "b", "video": "b.mp4", "prompt": "p", "status": "ok", "reward": 0.1, "expected_reward": 0.2},
                {"id": "c", "video": "c.mp4", "prompt": "p", "status": "error", "error": {"code": "bad"}}]
        labels_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    labels_path = tmp_path / "labels.jsonl"
    FlatRewardLabeler(inner)(tmp_path / "manifest.jsonl", labels_path)
    rows = [json.loads(x) for x in labels_path.read_text().splitlines()]
    assert [r.get("reward") for r in rows[:2]] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert [r["critic_reward"] for r in rows[:2]] == [0.9, 0.1]
    assert "reward" not in rows[2]


@pytest.mark.parametrize("exposure", [1.0, 0.45])
def test_a_dark_or_relit_scene_keeps_its_colour(exposure: float) -> None:
    """Light and colour are judged apart: the hue, not the brightness, says which colour a scene is."""
    for colour in ("red", "green", "blue"):
        frames = render(ClipSpec(f"a {colour} car", colour, light_fade=0.25, exposure=exposure), np.random.default_rng(0))
        rating = rate_frames(frames, f"a {colour} car")
        assert rating.dimensions["semantic_consistency"].label == "Good", (colour, rating.measurements)
        assert rating.dimensions["motion_smoothness"].label == "Bad"
        assert rating.dimensions["video_fidelity"].label == ("Good" if exposure == 1.0 else "Bad")


def test_the_rules_read_the_same_labels_from_an_mp4() -> None:
    """The raters see what the service sees: H.264 at 32 px keeps every label."""
    import tempfile

    from finetune.critic.synthetic import write_mp4
    from finetune.miniature.rules import rate_video

    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(batch(rng, 12, TRAIN_SUBJECTS)[0]):
            frames = render(spec, np.random.default_rng(i))
            path = write_mp4(Path(tmp) / f"v{i}.mp4", frames)
            from_file = {d: r.label for d, r in rate_video(path, spec.caption).dimensions.items()}
            assert from_file == labels(spec, i), (spec, from_file)


def test_balanced_oversamples_each_dimensions_rarer_labels() -> None:
    from finetune.miniature.rules import balanced, to_examples

    specs = [ClipSpec("a red car", "red")] * 9 + [ClipSpec("a red car", "blue", light_fade=0.2, exposure=0.4)]
    ratings = [rate_frames(render(s, np.random.default_rng(i)), s.caption, f"v{i}.mp4") for i, s in enumerate(specs)]
    out = balanced(to_examples(ratings), max_repeat=4)
    for d in ("semantic_consistency", "motion_smoothness", "video_fidelity"):
        got = [e.label for e in out if e.dimension == d]
        assert got.count("Good") == 9 and got.count("Bad") == 4, (d, got)


def test_counterfactual_captions_give_each_video_the_other_semantic_label() -> None:
    """A matching video gets a caption naming another colour (Bad), a mismatched one its own colour (Good);
    motion and fidelity do not depend on the caption."""
    from finetune.miniature.clips import recolour
    from finetune.miniature.rules import counterfactual

    assert recolour("a red car", "blue") == "a blue car"
    with pytest.raises(ValueError):
        recolour("a car", "blue")
    for spec, want in ((ClipSpec("a red car", "red", light_fade=0.2), "Bad"),
                       (ClipSpec("a green dog", "blue", exposure=0.4), "Good")):
        rating = rate_frames(render(spec, np.random.default_rng(0)), spec.caption)
        cf = counterfactual(rating)
        assert cf.caption != rating.caption and cf.dimensions["semantic_consistency"].label == want, cf
        for d in ("motion_smoothness", "video_fidelity"):
            assert cf.dimensions[d] == rating.dimensions[d]
    assert counterfactual(rate_frames(render(ClipSpec("a green dog", "blue"), np.random.default_rng(0)),
                                      "a green dog")).caption == "a blue dog"
