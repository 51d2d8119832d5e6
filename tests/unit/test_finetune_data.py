"""Label lines -> sample weights (LiFT reward, expected reward, dimensions, rejection), configs, CLI errors."""

from __future__ import annotations

import json

import pytest

from finetune.config import ConfigError, GenerateConfig, LoopConfig, TrainConfig
from finetune.data import read_labels, read_prompts, read_real, sample_weight


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
