"""Agreement metrics and the evaluation report's tables and PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.critic.evaluate import group_items, judge, write_report
from finetune.critic.data import RatedExample
from finetune.critic.metrics import Judgement, pairwise_auc, spearman, summarize, table2_markdown
from service.errors import InvalidVideo
from service.protocol import DimensionScore, LabelProbabilities, ScoreResponse
from service.rubric import LABEL_SCORES


def test_spearman_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1, 2.5, 2.5, 4) against y ranks (1..4) -> rho = 0.9487
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None


def test_pairwise_auc_is_roc_auc_for_two_labels() -> None:
    # positives (order 1) scores 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered right -> 0.75
    assert pairwise_auc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
    assert pairwise_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half
    assert pairwise_auc([0.3, 0.2, 0.1], [2, 1, 0]) == pytest.approx(1.0)  # three ordered labels
    assert pairwise_auc([0.3, 0.2], [1, 1]) is None


def _j(dim: str, human: str, pred: str, es: float) -> Judgement:
    return Judgement(dimension=dim, human=human, predicted=pred, expected_score=es)


def test_summary_confusion_and_table2_layout() -> None:
    js = [_j("semantic_consistency", "Good", "Good", 0.8), _j("semantic_consistency", "Bad", "Good", 0.5),
          _j("semantic_consistency", "Bad", "Bad", 0.1), _j("semantic_consistency", "Normal", "Bad", 0.2),
          _j("motion_smoothness", "Good", "Good", 0.9)]
    report = summarize("tiny", js, n_videos=4)
    sc = report.dimensions["semantic_consistency"]
    assert sc.n == 4 and sc.accuracy == pytest.approx(0.5)
    assert sc.confusion["Bad"] == {"Good": 1, "Normal": 0, "Bad": 1}
    assert sc.confusion["Normal"]["Bad"] == 1 and sc.human_counts == {"Good": 1, "Normal": 1, "Bad": 2}
    assert report.dimensions["video_fidelity"].accuracy is None  # nothing rated: not 0 %
    assert report.mean_accuracy == pytest.approx(0.75)
    table = table2_markdown([report]).splitlines()
    assert table[0] == "| Critic | Semantic Consistency | Motion Smoothness | Video Fidelity | Average |"
    assert table[2] == "| tiny | 50.0 | 100.0 | - | 75.0 |"


def _response(labels: dict[str, str]) -> ScoreResponse:
    dims = {}
    for d, label in labels.items():
        probs = {k: (0.8 if k == label else 0.1) for k in ("Good", "Normal", "Bad")}
        dims[d] = DimensionScore(label=label, score=LABEL_SCORES[label], rationale="r",
                                 expected_score=sum(probs[k] * LABEL_SCORES[k] for k in probs),
                                 probabilities=LabelProbabilities(**probs))
    return ScoreResponse(id="x", model="m", reward=0.5, expected_reward=0.5, num_frames=8, dimensions=dims)


def test_judge_groups_by_video_and_reports_failures(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    examples = [RatedExample(a, "cap", "semantic_consistency", "Good", ""),
                RatedExample(a, "cap", "video_fidelity", "Bad", ""),
                RatedExample(b, "cap", "video_fidelity", "Good", ""),
                RatedExample(b, "cap", "motion_smoothness", "Good", "")]
    items = group_items(examples)
    assert items == [(a, "cap"), (b, "cap")]  # one score per video answers all its dimensions
    all_good = {d: "Good" for d in ("semantic_consistency", "motion_smoothness", "video_fidelity")}
    judgements, failures = judge(examples, items, [_response(all_good), InvalidVideo("broken file")])
    assert [(j.dimension, j.human, j.predicted) for j in judgements] == [
        ("semantic_consistency", "Good", "Good"), ("video_fidelity", "Bad", "Good")]
    assert failures == [{"video": str(b), "caption": "cap", "error": "invalid_video: broken file"}]
    report = summarize("m", judgements, n_videos=2, failures=failures)
    paths = write_report(report, judgements, tmp_path / "report")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| m | 100.0 | - | 0.0 | 50.0 |" in md and "invalid_video: broken file" in md
    assert len(paths["judgements"].read_text().splitlines()) == 2
