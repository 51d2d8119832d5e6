"""Agreement of a critic with human labels: accuracy, confusion matrices, rank agreement of scores.

Pure numpy (matplotlib only for the PNG). Label order for rank metrics: Bad < Normal < Good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.rubric import DIMENSION_NAMES, LABELS

LABEL_ORDER: dict[str, int] = {"Bad": 0, "Normal": 1, "Good": 2}
DIMENSION_TITLES: dict[str, str] = {
    "semantic_consistency": "Semantic Consistency",
    "motion_smoothness": "Motion Smoothness",
    "video_fidelity": "Video Fidelity",
}


@dataclass(frozen=True)
class Judgement:
    """The critic's answer for one human-rated (video, caption, dimension)."""

    dimension: str
    human: str
    predicted: str
    expected_score: float
    probabilities: Mapping[str, float] = field(default_factory=dict)
    rationale: str = ""
    video: str = ""
    caption: str = ""


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None when undefined (fewer than 2 points or a constant side)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def pairwise_auc(scores: Sequence[float], order: Sequence[int]) -> float | None:
    """P(score of the better-labelled item > score of the worse one) over all pairs with different
    labels, ties counting one half. Binary labels: the ROC AUC. None when all labels are equal."""
    s, o = np.asarray(scores, dtype=np.float64), np.asarray(order)
    diff_o = o[:, None] - o[None, :]
    pairs = diff_o > 0
    n = int(pairs.sum())
    if n == 0:
        return None
    diff_s = s[:, None] - s[None, :]
    wins = (diff_s > 0) & pairs
    ties = (diff_s == 0) & pairs
    return float((wins.sum() + 0.5 * ties.sum()) / n)


@dataclass
class DimensionReport:
    dimension: str
    n: int
    accuracy: float | None
    confusion: dict[str, dict[str, int]]  # human label -> predicted label -> count
    spearman: float | None  # expected_score vs human label order
    auc: float | None  # pairwise concordance of expected_score with the label order
    human_counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "n": self.n, "accuracy": self.accuracy, "confusion": self.confusion,
                "spearman": self.spearman, "auc": self.auc, "human_counts": self.human_counts}


@dataclass
class EvalReport:
    model: str
    dimensions: dict[str, DimensionReport]
    n_videos: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # items the critic could not score

    @property
    def mean_accuracy(self) -> float | None:
        accs = [r.accuracy for r in self.dimensions.values() if r.accuracy is not None]
        return float(np.mean(accs)) if accs else None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "n_videos": self.n_videos, "mean_accuracy": self.mean_accuracy,
                "dimensions": {d: r.to_json() for d, r in self.dimensions.items()}, "failures": self.failures}


def summarize(model: str, judgements: Sequence[Judgement], *, n_videos: int = 0,
              failures: Sequence[dict[str, str]] = ()) -> EvalReport:
    dims: dict[str, DimensionReport] = {}
    for dim in DIMENSION_NAMES:
        js = [j for j in judgements if j.dimension == dim]
        confusion = {h: {p: 0 for p in LABELS} for h in LABELS}
        for j in js:
            confusion[j.human][j.predicted] += 1
        human_order = [LABEL_ORDER[j.human] for j in js]
        scores = [j.expected_score for j in js]
        dims[dim] = DimensionReport(
            dimension=dim, n=len(js),
            accuracy=(sum(j.human == j.predicted for j in js) / len(js)) if js else None,
            confusion=confusion,
            spearman=spearman(scores, human_order),
            auc=pairwise_auc(scores, human_order),
            human_counts={h: sum(confusion[h].values()) for h in LABELS},
        )
    return EvalReport(model=model, dimensions=dims, n_videos=n_videos, failures=list(failures))


# ---- presentation ------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table2_markdown(reports: Sequence[EvalReport]) -> str:
    """Accuracy (%) per dimension, one row per critic: the layout of the LiFT paper's Table 2."""
    head = "| Critic | " + " | ".join(DIMENSION_TITLES[d] for d in DIMENSION_NAMES) + " | Average |"
    rule = "|---|" + "---:|" * (len(DIMENSION_NAMES) + 1)
    rows = []
    for r in reports:
        cells = [_pct(r.dimensions[d].accuracy) for d in DIMENSION_NAMES]
        rows.append(f"| {r.model} | " + " | ".join(cells) + f" | {_pct(r.mean_accuracy)} |")
    return "\n".join([head, rule, *rows])


def agreement_markdown(report: EvalReport) -> str:
    """n, accuracy and how the continuous expected_score ranks against the human labels."""
    lines = ["| Dimension | n | Accuracy (%) | Spearman(expected_score, label) | AUC(expected_score) |",
             "|---|---:|---:|---:|---:|"]
    for d in DIMENSION_NAMES:
        r = report.dimensions[d]
        lines.append(f"| {DIMENSION_TITLES[d]} | {r.n} | {_pct(r.accuracy)} | {_num(r.spearman)} | {_num(r.auc)} |")
    return "\n".join(lines)


def confusion_markdown(report: EvalReport) -> str:
    """One small table per dimension: rows human label, columns critic label."""
    parts = []
    for d in DIMENSION_NAMES:
        c = report.dimensions[d].confusion
        parts.append(f"**{DIMENSION_TITLES[d]}** (rows: human, columns: critic)\n")
        parts.append("| human \\ critic | " + " | ".join(LABELS) + " |")
        parts.append("|---|" + "---:|" * len(LABELS))
        for h in LABELS:
            parts.append(f"| {h} | " + " | ".join(str(c[h][p]) for p in LABELS) + " |")
        parts.append("")
    return "\n".join(parts)


def full_markdown(report: EvalReport) -> str:
    out = [f"# Critic evaluation: {report.model}", "", f"{report.n_videos} videos", "",
           "## Accuracy (Table 2 layout)", "", table2_markdown([report]), "",
           "## Agreement of expected_score with the labels", "", agreement_markdown(report), "",
           "## Confusion matrices", "", confusion_markdown(report)]
    if report.failures:
        out += ["## Not scored", ""] + [f"- {f.get('video', '?')}: {f.get('error', '')}" for f in report.failures]
    return "\n".join(out) + "\n"


def plot_confusion(report: EvalReport, path: Path | str) -> Path:
    """The three confusion matrices side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DIMENSION_NAMES), figsize=(4.2 * len(DIMENSION_NAMES), 4.0))
    for ax, d in zip(axes, DIMENSION_NAMES, strict=True):
        r = report.dimensions[d]
        m = np.array([[r.confusion[h][p] for p in LABELS] for h in LABELS], dtype=float)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()))
        for i in range(len(LABELS)):
            for k in range(len(LABELS)):
                ax.text(k, i, int(m[i, k]), ha="center", va="center",
                        color="white" if m[i, k] > m.max() / 2 else "black")
        ax.set_xticks(range(len(LABELS)), LABELS)
        ax.set_yticks(range(len(LABELS)), LABELS)
        ax.set_xlabel("critic")
        ax.set_ylabel("human")
        ax.set_title(f"{DIMENSION_TITLES[d]}\nacc {_pct(r.accuracy)}%  n={r.n}")
    fig.suptitle(report.model)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
