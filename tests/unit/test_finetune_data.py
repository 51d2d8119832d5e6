"""Label lines -> sample weights (LiFT reward, expected reward, dimensions, rejection), configs, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.config import ConfigError, GenerateConfig, LoopConfig, TrainConfig
from finetune.data import labels_format, read_labels, read_lift_scores, read_prompts, read_real, sample_weight


def _dims(sc, ms, vf):
    score = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
    return {name: {"label": lbl, "score": score[lbl], "expected_score": score[lbl] - 0.01,
                   "probabilities": {"Good": 0.3, "Normal": 0.3, "Bad": 0.4}, "rationale": "r"}
            for name, lbl in (("semantic_consistency", sc), ("motion_smoothness", ms), ("video_fidelity", vf))}


ROWS = [
    {"id": "a", "video": "videos/a.mp4", "prompt": "p a", "status": "ok", "reward": (0.9 + 0.9 + 0.9) / 3,
     "expected_reward": 0.7, "dimensions": _dims("Good", "Good", "Good")},
    {"id": "b", "video": "videos/b.mp4", "prompt": "p b", "status": "ok", "reward": (0.9 + 0.2 + 0.05) / 3,
     "expected_reward": 0.3, "dimensions": _dims("Good", "Normal", "Bad")},
    {"id": "c", "video": "videos/c.mp4", "prompt": "p c", "status": "error",
     "error": {"code": "invalid_video", "message": "broken"}},
]


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_reward_modes(labels):
    by = {s.id: s for s in read_labels(labels, "reward")}
    assert set(by) == {"a", "b"}  # the error line is skipped
    assert by["b"].weight == pytest.approx((0.9 + 0.2 + 0.05) / 3)
    assert by["a"].video == labels.parent / "videos/a.mp4"  # relative paths are relative to the labels file
    assert {s.id: s.weight for s in read_labels(labels, "expected_reward")} == {"a": 0.7, "b": 0.3}
    # dimensions: weighted mean of per-dimension scores; equal weights reproduce the reward
    eq = {s.id: s.weight for s in read_labels(labels, "dimensions")}
    assert eq["b"] == pytest.approx(by["b"].weight)
    only_motion = {s.id: s.weight for s in read_labels(labels, "dimensions", {"motion_smoothness": 1.0})}
    assert only_motion == {"a": pytest.approx(0.9), "b": pytest.approx(0.2)}
    mixed = read_labels(labels, "dimensions", {"video_fidelity": 3.0, "semantic_consistency": 1.0}, "expected_score")
    assert {s.id: s.weight for s in mixed}["b"] == pytest.approx((3 * 0.04 + 1 * 0.89) / 4)
    # rejection sampling (LiFT's ablation): only all-Good samples, weight 1
    assert [(s.id, s.weight) for s in read_labels(labels, "rejection")] == [("a", 1.0)]


def test_later_lines_replace_earlier_ones(tmp_path):
    path = tmp_path / "l.jsonl"
    rows = [ROWS[0], {**ROWS[0], "reward": 0.2}, ROWS[1], {**ROWS[2], "id": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn', encoding="utf-8")
    assert [(s.id, s.weight) for s in read_labels(path)] == [("a", 0.2)]


def test_unusable_rewards_are_dropped_not_zeroed():
    assert sample_weight({"reward": None}, "reward") is None
    assert sample_weight({"reward": float("nan")}, "reward") is None
    assert sample_weight({"dimensions": {}}, "dimensions") is None
    assert sample_weight({"reward": 0.0}, "reward") == 0.0


def test_bad_label_files_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_labels(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ConfigError, match=":2: not JSON"):
        read_labels(bad)
    nofields = tmp_path / "nofields.jsonl"
    nofields.write_text('{"id": "x", "reward": 0.5}\n')
    with pytest.raises(ConfigError, match="needs 'video' and 'prompt'"):
        read_labels(nofields)


# ---- LiFT's scored file (CodeGoat24/LiFT CogVideo/process_reward_score.py -> CogVideo/finetune/train.py) --------
def _videos(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0")  # existence is what the reader checks; decoding is the trainer's job


def _lift_entry(video, score, caption="a crane in a wetland", **extra):
    # as process_reward_score.py leaves it: the critic's output entry plus "score"
    return {"video_id": Path(video).stem, "video": video, "caption": caption,
            "semantic consistency": "Good. Basically correct.", "fidelity issues": "Bad. No eyes.",
            "motion issues": "Good. No obvious problems.", "score": score, **extra}


def test_lift_scored_file_reads_into_weighted_samples(tmp_path):
    _videos(tmp_path, "videos/a.mp4", "videos/b.mp4", "videos/gen/c.mp4")
    elsewhere = tmp_path / "elsewhere"
    _videos(elsewhere, "d.mp4")
    entries = [
        _lift_entry("videos/a.mp4", round((0.9 + 0.05 + 0.9) / 3, 2)),  # relative to the file's folder
        _lift_entry("videos/b.mp4", "0.2", caption="  a panda  "),  # LiFT's trainer does float(score): strings too
        _lift_entry("/their/cluster/gen/c.mp4", 0.9),  # LiFT's rule: <root>/videos/<last two parts>
        _lift_entry(str(elsewhere / "d.mp4"), 0.05, video_id="a"),  # absolute path; a repeated video_id
        {"video": "videos/a.mp4", "caption": "the bare three fields", "score": 0},  # LiFT's dataset/data.json layout
    ]
    path = tmp_path / "data.json"  # LiFT's name for it
    path.write_text(json.dumps(entries, indent=4))
    assert labels_format(path) == "lift"
    samples = read_labels(path)
    assert [(s.id, s.video, s.prompt, s.weight) for s in samples] == [
        ("a", tmp_path / "videos/a.mp4", "a crane in a wetland", 0.62),
        ("b", tmp_path / "videos/b.mp4", "a panda", 0.2),
        ("c", tmp_path / "videos/gen/c.mp4", "a crane in a wetland", 0.9),
        ("entry4", elsewhere / "d.mp4", "a crane in a wetland", 0.05),
        ("entry5", tmp_path / "videos/a.mp4", "the bare three fields", 0.0),
    ]
    assert read_lift_scores(path) == samples
    assert len({s.id for s in samples}) == len(samples)  # ids stay unique: they seed each sample's noise


def test_labels_kind_is_read_off_the_content_not_the_name(tmp_path, labels):
    _videos(tmp_path, "v.mp4")
    ours_named_json = tmp_path / "labels.json"
    ours_named_json.write_text(labels.read_text())
    assert labels_format(ours_named_json) == "jsonl"
    assert {s.id for s in read_labels(ours_named_json)} == {"a", "b"}
    theirs_named_jsonl = tmp_path / "scores.jsonl"
    theirs_named_jsonl.write_text("\ufeff \n\n  " + json.dumps([{"video": "v.mp4", "caption": "c", "score": 0.5}]))
    assert labels_format(theirs_named_jsonl) == "lift"
    assert [s.weight for s in read_labels(theirs_named_jsonl)] == [0.5]


def test_bad_lift_scored_entries_are_all_named_with_file_and_entry(tmp_path):
    _videos(tmp_path, "v.mp4")
    entries = [
        {"video": "v.mp4", "caption": "fine", "score": 0.5},
        {"video": "v.mp4", "caption": "no score"},
        {"video": "v.mp4", "caption": "nan", "score": float("nan")},
        {"video": "v.mp4", "caption": "too big", "score": 1.5},
        {"video": "v.mp4", "caption": "negative", "score": -0.05},
        {"video": "v.mp4", "caption": "placeholder", "score": "reward_score"},  # LiFT's data.json template value
        {"video": "v.mp4", "caption": "boolean", "score": True},
        {"video": "gone.mp4", "caption": "missing video", "score": 0.2},
        {"video": "v.mp4", "caption": "  ", "score": 0.2},
        "not an object",
    ]
    path = tmp_path / "scored.json"
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")  # entry n on line n + 1
    with pytest.raises(ConfigError) as info:
        read_labels(path)
    msg = info.value.message
    assert info.value.param == "data"
    assert msg.startswith(f"{path}: 9 problem(s) in LiFT's scored file: ")
    assert "entry 1 " not in msg
    assert "entry 2 (line 3): missing field(s): score" in msg
    assert "entry 3 (line 4): 'score' is not finite" in msg
    assert "entry 4 (line 5): 'score' 1.5 is out of range [0, 1]" in msg
    assert "entry 5 (line 6): 'score' -0.05 is out of range" in msg
    assert "entry 6 (line 7): 'score' must be a number, got 'reward_score'" in msg
    assert "entry 7 (line 8): 'score' must be a number, got bool" in msg
    assert f"entry 8 (line 9): video not found: {tmp_path / 'gone.mp4'} (nor {tmp_path / 'videos/gone.mp4'})" in msg
    assert "entry 9 (line 10): 'caption' must be a non-empty string" in msg
    assert "entry 10 (line 11): expected an object, got str" in msg


def test_lift_scored_file_structure_errors(tmp_path):
    torn = tmp_path / "torn.json"
    torn.write_text('[\n {"video": "v.mp4", "caption": "c", "score": 0.5},\n {"video": ')
    with pytest.raises(ConfigError, match=r"torn.json: LiFT's scored file is not a valid JSON list \(line 3"):
        read_labels(torn)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ConfigError, match="has no entries"):
        read_labels(empty)
    _videos(tmp_path, "v.mp4")
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps([{"video": "v.mp4", "caption": "c", "score": 0.5}]))
    # the file holds the reward only: the other weightings cannot be had from it, and say so
    for mode in ("expected_reward", "dimensions", "rejection"):
        with pytest.raises(ConfigError, match=f"holds the reward only, so --reward {mode} cannot") as info:
            read_labels(ok, mode)
        assert info.value.param == "reward"


def test_cli_train_reports_a_bad_lift_scored_file_in_one_line(capsys, tmp_path):
    from clients.cli import main

    bad = tmp_path / "data.json"
    bad.write_text(json.dumps([{"video": "gone.mp4", "caption": "c", "score": 0.5}]))
    code = main(["finetune", "train", "--model", str(tmp_path), "--data", str(bad), "--out", str(tmp_path / "o"),
                 "--lora-rank", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "1 problem(s) in LiFT's scored file: entry 1 (line 1): video not found" in err[0]


def test_prompts_and_real(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na cat\n\na dog\n")
    assert [(p.id, p.text) for p in read_prompts(txt)] == [("p00000", "a cat"), ("p00001", "a dog")]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "x", "prompt": "a cat"}\n{"prompt": "a dog"}\n')
    assert [p.id for p in read_prompts(jl)] == ["x", "p00001"]
    real = tmp_path / "real.jsonl"
    real.write_text('{"video": "r.mp4", "caption": "a river"}\n')
    assert [(s.prompt, s.weight) for s in read_real(real)] == [("a river", 1.0)]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


@pytest.mark.parametrize("kwargs, param", [
    ({}, "lora_rank"),  # neither --lora-rank nor --full
    ({"lora_rank": 4, "full": True}, "lora_rank"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_rank": 4, "real_weight": -1}, "real_weight"),
    ({"lora_rank": 4, "dimension_weights": {"colour": 1.0}, "reward": "dimensions"}, "dimension_weights"),
    ({"lora_rank": 4, "dimension_weights": {"video_fidelity": 1.0}}, "dimension_weights"),
    ({"lora_rank": 4, "gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"lora_rank": 4, "num_frames": 10}, "num_frames"),
    ({"lora_rank": 4, "height": 100}, "height"),
    ({"full": True, "init_lora": "x"}, "init_lora"),
])
def test_train_config_rejects_bad_values(kwargs, param):
    with pytest.raises(ConfigError) as info:
        TrainConfig(model="m", data="d", out="o", **kwargs)
    assert info.value.param == param


def test_other_configs_check_values():
    with pytest.raises(ConfigError):
        GenerateConfig(model="m", prompts="p", out="o", num_frames=8)
    with pytest.raises(ConfigError):
        GenerateConfig(model="m", prompts="p", out="o", per_prompt=0)
    with pytest.raises(ConfigError):
        LoopConfig(model="m", prompts="p", out="o", rounds=0)
    assert GenerateConfig(model="m", prompts="p", out="o").guidance_scale == 6.0  # LiFT's sampling default


def test_cli_reports_bad_arguments_in_one_line(capsys, tmp_path):
    from clients.cli import main

    code = main(["finetune", "train", "--model", str(tmp_path), "--data", "x.jsonl", "--out", str(tmp_path / "o"),
                 "--full", "--lora-rank", "4"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lift finetune: error: invalid_request: choose exactly one of --lora-rank R or --full"]
    code = main(["finetune", "train", "--model", str(tmp_path), "--data", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o"), "--lora-rank", "4"])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
