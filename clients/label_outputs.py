"""What `lift label` makes from a finished journal: the summary, a plot, Parquet, LiFT's training file.

All of it is derived from the JSONL journal (the source of truth), streaming where the set may be large.
pyarrow and matplotlib are imported lazily (the `labels` extra).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from service.errors import InvalidRequest
from service.protocol import DimensionName, ScoreResponse
from service.rubric import lift_substring_label

from .journal import ERROR, OK, iter_records

DIMENSIONS: tuple[str, ...] = get_args(DimensionName)
LABELS = ("Good", "Normal", "Bad")
# The provenance object's leaves as Parquet columns (service.protocol.Provenance): name, type.
PROVENANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("provenance.critic.name", "str"), ("provenance.critic.family", "str"), ("provenance.critic.digest", "str"),
    ("provenance.rubric.digest", "str"),
    ("provenance.frames.count", "int"), ("provenance.frames.rule", "str"), ("provenance.frames.short_clip", "str"),
    ("provenance.engine.name", "str"), ("provenance.engine.dtype", "str"),
    ("provenance.sampling.temperature", "float"), ("provenance.sampling.seed", "int"),
    ("provenance.sampling.max_tokens", "int"), ("provenance.sampling.scoring", "str"),
    ("provenance.sampling.rationale", "bool"),
    ("provenance.server.name", "str"), ("provenance.server.version", "str"),
)


def ok_record(item_id: str, video: str, prompt: str, resp: ScoreResponse) -> dict[str, Any]:
    return {
        "id": item_id,
        "video": video,
        "prompt": prompt,
        "status": OK,
        "reward": resp.reward,
        "expected_reward": resp.expected_reward,
        "dimensions": {k: v.model_dump(mode="json") for k, v in resp.dimensions.items()},
        "model": resp.model,
        "critic": resp.critic,
        "num_frames": resp.num_frames,
        "scoring": resp.scoring,
        "request_id": resp.id,
        "provenance": resp.provenance.model_dump(mode="json") if resp.provenance is not None else None,
    }


def error_record(item_id: str, video: str, prompt: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "video": video, "prompt": prompt, "status": ERROR,
            "error": {"code": code, "message": message, "param": param}}


@dataclass
class Summary:
    total: int = 0  # items in the manifest
    ok: int = 0
    errors: int = 0
    missing: int = 0  # in the manifest, not in the journal (an aborted run)
    new_this_run: int = 0
    skipped_done: int = 0
    duplicates_in_manifest: int = 0
    shard: str | None = None  # "K/N" when the run labeled one shard; total then counts that shard's items
    manifest_total: int | None = None  # items in the whole manifest (sharded runs)
    seconds: float = 0.0  # this run's labeling time (from the first request to the last line)
    error_codes: Counter = field(default_factory=Counter)
    reward_sum: float = 0.0
    expected_sum: float = 0.0
    expected_n: int = 0  # records with an expected_reward (a critic without probabilities has none)
    labels: dict[str, Counter] = field(default_factory=lambda: {d: Counter() for d in DIMENSIONS})
    dim_score_sum: dict[str, float] = field(default_factory=lambda: {d: 0.0 for d in DIMENSIONS})
    rewards: list[float] = field(default_factory=list)
    expected_scores: dict[str, list[float]] = field(default_factory=lambda: {d: [] for d in DIMENSIONS})
    # with rule_agreement: per dimension, the answers whose label the other scoring rule reads differently
    rule_disagreements: dict[str, int] | None = None
    # the ok records' provenances, each distinct one (JSON text) -> its records; more than one: a mixed file
    provenances: Counter = field(default_factory=Counter)

    def provenance_list(self) -> list[dict[str, Any]]:
        """Each distinct provenance of the ok records with its count, the most common first (records labeled
        before provenance existed: `provenance` null)."""
        return [{"records": n, "provenance": json.loads(text)} for text, n in self.provenances.most_common()]

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.ok if self.ok else math.nan

    @property
    def mean_expected_reward(self) -> float:
        return self.expected_sum / self.expected_n if self.expected_n else math.nan

    @property
    def dimensions(self) -> list[str]:
        """LiFT's three unless the records are another critic's (then theirs, in the order first seen)."""
        seen = [d for d in self.dim_score_sum if d not in DIMENSIONS or self.labels[d].total()]
        return list(DIMENSIONS) if not seen or set(seen) <= set(DIMENSIONS) else seen

    def _labels_of(self, d: str) -> list[str]:
        return list(LABELS) if d in DIMENSIONS else sorted(self.labels[d])

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "ok": self.ok, "errors": self.errors, "missing": self.missing,
            "new_this_run": self.new_this_run, "skipped_done": self.skipped_done, "seconds": round(self.seconds, 3),
            "duplicates_in_manifest": self.duplicates_in_manifest,
            **({"shard": self.shard, "manifest_total": self.manifest_total} if self.shard else {}),
            "error_codes": dict(self.error_codes),
            "mean_reward": None if not self.ok else self.mean_reward,
            "mean_expected_reward": None if not self.expected_n else self.mean_expected_reward,
            "labels": {d: {lab: self.labels[d][lab] for lab in self._labels_of(d)} for d in self.dimensions},
            **({"rule_disagreements": dict(self.rule_disagreements)} if self.rule_disagreements is not None else {}),
            "provenance": self.provenance_list(),
        }

    def format(self) -> str:
        where = f" of shard {self.shard} ({self.manifest_total} in the manifest)" if self.shard else ""
        lines = [
            f"labeled {self.ok} of {self.total} items{where}: {self.errors} errors, {self.missing} not done"
            f" (this run: {self.new_this_run} new, {self.skipped_done} already done"
            + (f", {self.duplicates_in_manifest} duplicate manifest lines skipped" if self.duplicates_in_manifest else "")
            + f", {self.seconds:.1f} s)",
        ]
        if self.error_codes:
            lines.append("errors by code: " + ", ".join(f"{c} {n}" for c, n in self.error_codes.most_common()))
        if self.ok and self.dimensions != list(DIMENSIONS):  # another critic's: its scores, its labels if any
            lines.append(f"mean reward {self.mean_reward:.4f}   mean expected_reward {self.mean_expected_reward:.4f}")
            width = max(len(d) for d in self.dimensions)
            lines.append(f"{'dimension':<{width}}  mean score  labels")
            for d in self.dimensions:
                labels = ", ".join(f"{lab} {n}" for lab, n in self.labels[d].most_common()) or "-"
                lines.append(f"{d:<{width}}  {self.dim_score_sum[d] / self.ok:>10.4f}  {labels}")
        elif self.ok:
            lines.append(f"mean reward {self.mean_reward:.4f}   mean expected_reward {self.mean_expected_reward:.4f}")
            width = max(len(d) for d in DIMENSIONS)
            lines.append(f"{'dimension':<{width}}  {'Good':>6} {'Normal':>6} {'Bad':>6}  mean score")
            for d in DIMENSIONS:
                c = self.labels[d]
                lines.append(
                    f"{d:<{width}}  {c['Good']:>6} {c['Normal']:>6} {c['Bad']:>6}  {self.dim_score_sum[d] / self.ok:.4f}"
                )
        for entry in self.provenance_list()[:5]:
            lines.append(_provenance_line(entry["provenance"], entry["records"], len(self.provenances) > 1))
        if self.rule_disagreements is not None and self.ok:
            n = sum(self.rule_disagreements.values())
            lines.append(f"scoring rules (label vs LiFT's substring rule) disagree on {n} of {self.ok * len(DIMENSIONS)} "
                         "answers: " + ", ".join(f"{d} {self.rule_disagreements[d]}" for d in DIMENSIONS))
        return "\n".join(lines)


def _provenance_line(p: dict[str, Any] | None, records: int, mixed: bool) -> str:
    head = f"{records} records: " if mixed else ""
    if not p:
        return f"provenance: {head}none recorded (labeled by an older server)"
    c, s = p["critic"], p["sampling"]
    return (f"provenance: {head}critic {c['name']} ({c['family']}, {_short(c.get('digest'))}), rubric "
            f"{_short(p['rubric']['digest'])}, {p['engine']['name']} {p['engine']['dtype']}, {p['frames']['count']} "
            f"frames, temperature {s['temperature']:g}, scoring {s['scoring']}, lift-reward {p['server']['version']}")


def _short(digest: str | None) -> str:
    return "no digest" if not digest else digest[:len("sha256:") + 12]


def other_rule_label(dim: dict[str, Any], scoring: str) -> str:
    """The label the scoring rule NOT used for this answer would have read: LiFT's substring rule on the answer
    the label rule produced ("<Label>. <reason>"), or the most probable label where LiFT's rule was used."""
    if scoring == "lift":
        probs = dim["probabilities"]
        return max(LABELS, key=lambda lab: (probs[lab], -LABELS.index(lab)))
    return lift_substring_label(f"{dim['label']}. {dim.get('rationale', '')}")


def summarize(journal_path: Path, ids: Iterable[str], *, rule_agreement: bool = False) -> Summary:
    """Statistics over the journal, restricted to the manifest's ids (one record per id)."""
    wanted = set(ids)
    s = Summary(total=len(wanted))
    if rule_agreement:
        s.rule_disagreements = {d: 0 for d in DIMENSIONS}
    seen: set[str] = set()
    for rec in iter_records(journal_path):
        ident = str(rec["id"])
        if ident not in wanted or ident in seen:
            continue
        seen.add(ident)
        if rec["status"] == OK:
            s.ok += 1
            s.provenances[json.dumps(rec.get("provenance"), sort_keys=True)] += 1
            s.reward_sum += rec["reward"]
            if rec.get("expected_reward") is not None:
                s.expected_sum += rec["expected_reward"]
                s.expected_n += 1
            s.rewards.append(rec["reward"])
            for d, dim in (rec.get("dimensions") or {}).items():
                if dim:
                    s.labels.setdefault(d, Counter())
                    s.dim_score_sum.setdefault(d, 0.0)
                    s.expected_scores.setdefault(d, [])
                    if dim.get("label") is not None:
                        s.labels[d][dim["label"]] += 1
                    s.dim_score_sum[d] += dim["score"]
                    if dim.get("expected_score") is not None:
                        s.expected_scores[d].append(dim["expected_score"])
                    if s.rule_disagreements is not None and d in DIMENSIONS:
                        s.rule_disagreements[d] += other_rule_label(dim, rec.get("scoring", "label")) != dim["label"]
        else:
            s.errors += 1
            s.error_codes[rec.get("error", {}).get("code", "unknown")] += 1
    s.missing = len(wanted - seen)
    return s


def plot(summary: Summary, out: Path) -> None:
    """Histograms: reward, and each dimension's expected score with its label counts."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidRequest("--plot needs matplotlib: pip install 'lift-reward[labels]'", param="plot") from None
    dims = summary.dimensions
    fig, axes = plt.subplots(1, 1 + len(dims), figsize=(4.2 * (1 + len(dims)), 3.6))
    bins = [i / 40 for i in range(41)]
    axes[0].hist(summary.rewards, bins=bins, color="#4c72b0")
    axes[0].set_title(f"reward (n={summary.ok}, mean {summary.mean_reward:.3f})" if summary.ok else "reward (no data)")
    axes[0].set_xlabel("reward")
    axes[0].set_ylabel("videos")
    for ax, d in zip(axes[1:], dims):
        ax.hist(summary.expected_scores[d], bins=bins, color="#55a868")
        c = summary.labels[d]
        if d in DIMENSIONS:
            for x in (0.05, 0.2, 0.9):  # LiFT's label scores
                ax.axvline(x, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{d}\nGood {c['Good']} / Normal {c['Normal']} / Bad {c['Bad']}", fontsize=9)
        else:
            ax.set_title(f"{d}\n" + (" / ".join(f"{k} {n}" for k, n in c.most_common()) or "mean "
                                      f"{summary.dim_score_sum[d] / max(summary.ok, 1):.3f}"), fontsize=9)
        ax.set_xlabel("expected score")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def export_lift(journal_path: Path, order: list[str], out: Path) -> int:
    """LiFT's training format: [{"video", "caption", "score"}] with score = reward, manifest order."""
    by_id: dict[str, tuple[str, str, float]] = {}
    for rec in iter_records(journal_path):
        if rec["status"] == OK:
            by_id[str(rec["id"])] = (rec["video"], rec["prompt"], float(rec["reward"]))
    rows = [{"video": by_id[i][0], "caption": by_id[i][1], "score": by_id[i][2]} for i in order if i in by_id]
    _atomic_write_text(out, json.dumps(rows, ensure_ascii=False, indent=1))
    return len(rows)


def journal_dimensions(journal_path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The dimensions of the journal's critic (the first scored record's; LiFT's if none) and, per dimension, the
    keys of its probabilities (LiFT: its labels)."""
    for rec in iter_records(journal_path):
        if rec["status"] == OK and rec.get("dimensions"):
            dims = rec["dimensions"]
            if set(dims) <= set(DIMENSIONS):
                break
            return list(dims), {d: list((x or {}).get("probabilities") or {}) for d, x in dims.items()}
    return list(DIMENSIONS), {d: list(LABELS) for d in DIMENSIONS}


def _flat(rec: dict[str, Any], dimensions: Sequence[str] = DIMENSIONS,
          outcomes: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(rec["id"]), "video": rec.get("video"), "prompt": rec.get("prompt"), "status": rec["status"],
        "reward": rec.get("reward"), "expected_reward": rec.get("expected_reward"), "model": rec.get("model"),
        "num_frames": rec.get("num_frames"),
        "error_code": (rec.get("error") or {}).get("code"), "error_message": (rec.get("error") or {}).get("message"),
    }
    prov = rec.get("provenance") or {}
    for name, _ in PROVENANCE_COLUMNS:
        section, key = name.split(".")[1:]
        row[name] = (prov.get(section) or {}).get(key)
    dims = rec.get("dimensions") or {}
    for d in dimensions:
        x = dims.get(d) or {}
        probs = x.get("probabilities") or {}
        row[f"{d}.label"] = x.get("label")
        row[f"{d}.score"] = x.get("score")
        row[f"{d}.expected_score"] = x.get("expected_score")
        for lab in (outcomes or {}).get(d, LABELS):
            row[f"{d}.p_{lab.lower()}"] = probs.get(lab)
        row[f"{d}.rationale"] = x.get("rationale")
    return row


def to_parquet(journal_path: Path, out: Path, row_group: int = 10_000) -> int:
    """Journal -> Parquet, streamed in row groups, written to a temp file and renamed (never half a file)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidRequest("--format parquet needs pyarrow: pip install 'lift-reward[labels]'", param="format") from None
    fields = [("id", pa.string()), ("video", pa.string()), ("prompt", pa.string()), ("status", pa.string()),
              ("reward", pa.float64()), ("expected_reward", pa.float64()), ("model", pa.string()),
              ("num_frames", pa.int32()), ("error_code", pa.string()), ("error_message", pa.string())]
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    fields += [(name, types[kind]) for name, kind in PROVENANCE_COLUMNS]
    dimensions, outcomes = journal_dimensions(journal_path)
    for d in dimensions:
        fields += [(f"{d}.label", pa.string()), (f"{d}.score", pa.float64()), (f"{d}.expected_score", pa.float64())]
        fields += [(f"{d}.p_{lab.lower()}", pa.float64()) for lab in outcomes[d]]
        fields += [(f"{d}.rationale", pa.string())]
    schema = pa.schema(fields)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        batch: list[dict[str, Any]] = []
        for rec in iter_records(journal_path):
            batch.append(_flat(rec, dimensions, outcomes))
            if len(batch) >= row_group:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
                batch = []
        if batch or n == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    os.replace(tmp, out)
    return n


def _atomic_write_text(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
