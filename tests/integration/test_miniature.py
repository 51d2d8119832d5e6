"""The LiFT chain in miniature, fast: every stage of `benchmarks/lift_in_miniature.py --quick` hands the next a
valid artifact, through the real service (`lift serve` of the freshly trained critic on the vLLM engine).

A few steps and videos per stage, so nothing here is about learning (the benchmark's table is): pre-trained
generator -> rule ratings in LiFT's format (read back by the critic reader) -> `lift critic train` -> served
critic -> `lift critic eval` over HTTP -> `lift label` -> `lift finetune loop` and the flat control with rewards
over HTTP -> LoRAs the judge generates with -> results and the last line. The session's shared engine cannot be
reused: the point is to serve the critic this chain trained. Its `lift serve` must be gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            found.append(int(pid))
    return found


def test_every_stage_hands_the_next_a_valid_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("lift_in_miniature", REPO / "benchmarks" / "lift_in_miniature.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    QUICK, main = bench.QUICK, bench.main
    from finetune.critic.data import load_rated_data
    from finetune.data import read_jsonl
    from finetune.lora import WEIGHT_NAME

    out = tmp_path / "mini"
    assert main(["--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out.strip().splitlines()
    last = stdout[-1]
    # stdout is the report alone: the `lift` commands' own output (paths, tables, summaries) goes to stderr
    assert stdout[0].startswith("# LiFT in miniature"), stdout[:3]
    assert re.fullmatch(r"improved_dimensions=[0-3]/3 critic_accuracy=\d+\.\d", last), last

    # 1. a pipeline folder the finetune commands load, with its pre-training record
    assert (out / "generator" / "model_index.json").is_file()
    assert (out / "generator" / "miniature_pretrain.json").is_file()
    # 2. ratings in LiFT's release format, read by the reader `lift critic train` uses: 3 per held-out video;
    # every training video rated against its own caption and a counterfactual one (oversampled, balanced)
    for split in ("rated_train", "rated_heldout"):
        videos = read_jsonl(out / split / "manifest.jsonl")
        examples = load_rated_data(out / split / "ratings.json", out / split / "videos")
        assert {e.dimension for e in examples} == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
        if split == "rated_heldout":
            assert len(examples) == 3 * len(videos) > 0
            continue
        captions: dict[str, set[str]] = {}
        for e in examples:
            captions.setdefault(Path(e.video).name, set()).add(e.caption)
        for v in videos:
            own = captions[Path(v["video"]).name]
            assert v["prompt"] in own and len(own) == 2, (v, own)
    # 3. the trained critic and its evaluation, scored through the server
    assert (out / "critic" / "lift_training.json").is_file() and (out / "critic" / "config.json").is_file()
    report = json.loads((out / "critic_eval" / "report.json").read_text())
    assert set(report["dimensions"]) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
    # 4. `lift label` of the fresh batch: one ok line per video, the service's fields
    fresh = read_jsonl(out / "fresh" / "manifest.jsonl")
    labels = read_jsonl(out / "fresh" / "labels.jsonl")
    assert len(labels) == len(fresh) and all(r["status"] == "ok" for r in labels)
    assert all(set(r["dimensions"]) == {"semantic_consistency", "motion_smoothness", "video_fidelity"} for r in labels)
    # 5. Eq. 3's real data (pre-training clips of the fine-tuning subjects, real mp4s the rules can read), then the
    # loop and its control: rewards over HTTP, flattened in the control, a LoRA per run
    from finetune.miniature.clips import HELDOUT_SUBJECTS
    from finetune.miniature.rules import rate_video

    real = read_jsonl(out / "real" / "real.jsonl")
    assert len(real) == QUICK.real_clips
    assert not any(subject in r["prompt"] for r in real for subject in HELDOUT_SUBJECTS)
    assert all(rate_video(r["video"], r["prompt"]).measurements.exposure > 0 for r in real)
    assert "encode real" in captured.err  # the LiFT loop's trainer encoded them for its lambda term
    for run in ("lift-s0", "flat-s0"):
        d = out / "loops" / run
        log = read_jsonl(d / "loop_log.jsonl")
        assert [r["round"] for r in log] == list(range(QUICK.rounds + 1)) and all(r["errors"] == 0 for r in log)
        rows = read_jsonl(d / "round-000" / "labels.jsonl")
        assert rows and all("semantic_consistency" in r["dimensions"] for r in rows)
        if run.startswith("flat"):
            assert len({r["reward"] for r in rows}) == 1 and all("critic_reward" in r for r in rows)
        assert (d / f"round-{QUICK.rounds - 1:03d}" / "train" / "lora" / WEIGHT_NAME).is_file()
    # 6. the judge's samples from every model, the results and the figures
    for name in ("base", "lift-s0", "flat-s0"):
        assert read_jsonl(out / "judge" / name / "manifest.jsonl")
    results = json.loads((out / "results.json").read_text())
    assert set(results["dimensions"]) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
    for png in ("plots/rewards_per_round.png", "plots/rule_score_per_round.png", "plots/critic_confusion.png",
                "frames/before_after.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    # the server it started is stopped
    assert _processes_mentioning(str(out / "critic")) == []
