"""`lift label --rule-agreement`: the summary counts the answers the two scoring rules read differently."""

from __future__ import annotations

import json

from clients.label_outputs import ok_record, other_rule_label, summarize
from service.protocol import ScoreResponse

DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


def _response(labels: dict[str, str], rationales: dict[str, str], scoring: str = "label",
              probs: dict[str, dict[str, float]] | None = None) -> ScoreResponse:
    scores = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
    dims = {}
    for d in DIMS:
        p = (probs or {}).get(d) or {"Good": 0.2, "Normal": 0.2, "Bad": 0.2} | {labels[d]: 0.6}
        dims[d] = {"label": labels[d], "score": scores[labels[d]], "expected_score": 0.5, "probabilities": p,
                   "rationale": rationales[d]}
    r = sum(scores[labels[d]] for d in DIMS) / 3
    return ScoreResponse(id="x", model="m", reward=r, expected_reward=0.5, num_frames=8, scoring=scoring,
                         dimensions=dims)


def test_summary_counts_where_lifts_substring_rule_reads_our_answers_differently(tmp_path):
    journal = tmp_path / "labels.jsonl"
    good = {d: "Good" for d in DIMS}
    rows = [
        ok_record("a", "a.mp4", "p", _response(good, {d: "fine" for d in DIMS})),            # agree everywhere
        ok_record("b", "b.mp4", "p", _response(good, {"semantic_consistency": "the colour is Normal",
                                                      "motion_smoothness": "Bad jitter", "video_fidelity": "ok"})),
        ok_record("c", "c.mp4", "p", _response({**good, "video_fidelity": "Bad"}, {d: "fine" for d in DIMS})),
    ]
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = summarize(journal, ["a", "b", "c"], rule_agreement=True)
    assert s.rule_disagreements == {"semantic_consistency": 1, "motion_smoothness": 1, "video_fidelity": 0}
    assert "disagree on 2 of 9 answers" in s.format()
    assert s.as_dict()["rule_disagreements"]["motion_smoothness"] == 1
    assert summarize(journal, ["a", "b", "c"]).rule_disagreements is None  # only when asked
    assert "disagree" not in summarize(journal, ["a", "b", "c"]).format()


def test_lift_scored_answers_are_compared_with_the_most_probable_label():
    dim = {"label": "Normal", "rationale": "Good overall, motion Normal",
           "probabilities": {"Good": 0.7, "Normal": 0.2, "Bad": 0.1}}
    assert other_rule_label(dim, "lift") == "Good"
    assert other_rule_label({**dim, "label": "Good", "rationale": "fine"}, "label") == "Good"
