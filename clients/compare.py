"""`lift critics compare`: score one manifest with every critic the servers serve, and say how they agree.

The critics: every `--server` URL is asked `GET /v1/models`; the union of their cards is the set of critics. A
card id listed by several servers is one critic with several replicas (requests are spread over them). A server
listing several cards (one deployment, several critics) is told which critic answers each request
(`options.critics = [id]`, the same as the request's top-level `model`); a server with one card is asked plainly,
so servers from before critics could be chosen work too.

Scoring reuses `lift label` whole (`clients.labeler.label`): one JSONL journal per critic under
`OUT/journals/`, appended as results arrive, so a killed run resumes and asks nothing that is done. The critics
run at the same time, each with `--concurrency` requests in flight.

Then, from the journals (ok records only, items both critics scored): per pair of critics, Spearman and Kendall
(scipy.stats) of their rewards, expected rewards and every pair of their dimensions; with `--labels`, each critic
against the human columns; the items whose reward ranks differ most between two critics (for a person to look
at); scatter plots. `OUT/compare.json` has everything, `OUT/compare.md` the same as tables, `OUT/plots/` the
PNGs; stdout gets a short JSON summary, the log goes to stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, LiftError
from service.protocol import ModelCard, ScoreOptions

from .balancing import RetryPolicy
from .journal import OK, iter_records
from .label_outputs import LABELS, _atomic_write_text
from .labeler import LabelConfig, LabelResult, label
from .manifest import Manifest, item_id, read_manifest

LABEL_ORDER: dict[str, int] = {"Bad": 0, "Normal": 1, "Good": 2}  # as finetune.critic.metrics ranks them
LIFT_CRITIC = "lift"
# Asking /v1/models is interactive: a server that does not answer is a bad URL, not one to wait minutes for.
DISCOVERY_RETRY = RetryPolicy(max_attempts=2, backoff_base_s=0.2, backoff_max_s=1.0, max_retry_after_s=5.0)
HUMAN_IGNORED = frozenset({"id", "video", "prompt", "caption"})


def log(msg: str) -> None:
    print(f"lift critics compare: {msg}", file=sys.stderr, flush=True)


# ---- the critics -----------------------------------------------------------------------------------------
@dataclass
class CriticTarget:
    id: str  # the card id (`model` in a request)
    critic: str  # which critic it is (service.critics): lift, videoscore2, ...
    dimensions: list[str]
    servers: list[str]
    choose: bool  # send the critic's id with each request: one of its servers serves several critics
    journal: Path = Path()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "critic": self.critic, "dimensions": self.dimensions, "servers": self.servers,
                "model_field_sent": self.choose, "journal": str(self.journal)}


def journal_name(card_id: str) -> str:
    """A file name for a card id (ids may hold '/', spaces, ...): readable, and distinct for distinct ids."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", card_id).strip(".")
    if slug != card_id or not slug:
        slug = f"{slug or 'critic'}-{hashlib.sha256(card_id.encode('utf-8')).hexdigest()[:8]}"
    return slug


async def _cards_of(url: str, api_key: str | None, timeout_s: float) -> list[ModelCard]:
    from .client import AsyncRewardClient

    try:
        async with AsyncRewardClient([url], api_key=api_key, retry=DISCOVERY_RETRY, timeout=min(timeout_s, 30.0),
                                     max_connections=2) as client:
            return (await client.models()).data
    except LiftError as exc:
        exc.message = f"GET {url}/v1/models: {exc.message}".replace("\n", " ")
        exc.param = exc.param or "server"
        raise


async def discover(servers: Sequence[str], api_key: str | None, timeout_s: float) -> list[CriticTarget]:
    """Every critic the servers serve (union by card id, replicas pooled), in the order first listed."""
    from .client import _urls

    urls = list(dict.fromkeys(_urls(list(servers))))  # checks the scheme; the same URL twice is one server
    answers = await asyncio.gather(*(_cards_of(u, api_key, timeout_s) for u in urls), return_exceptions=True)
    for a in answers:
        if isinstance(a, BaseException):
            raise a
    targets: dict[str, CriticTarget] = {}
    for url, cards in zip(urls, answers):
        assert isinstance(cards, list)
        if not cards:
            raise InvalidRequest(f"{url}/v1/models lists no critic", param="server")
        for card in cards:
            dims = list(card.dimensions)
            t = targets.get(card.id)
            if t is None:
                targets[card.id] = CriticTarget(card.id, card.critic, dims, [url], len(cards) > 1)
                continue
            if t.critic != card.critic or (dims and t.dimensions and dims != t.dimensions):
                raise InvalidRequest(
                    f"{t.servers[0]} and {url} both serve a critic named {card.id!r} but different ones "
                    f"({t.critic} {t.dimensions} vs {card.critic} {dims}); give each deployment its own name",
                    param="server")
            t.servers.append(url)
            t.choose = t.choose or len(cards) > 1
            t.dimensions = t.dimensions or dims
    return list(targets.values())


# ---- configuration and run ---------------------------------------------------------------------------------
@dataclass
class CompareConfig:
    manifest: Path
    servers: list[str]
    out: Path
    labels: Path | None = None
    concurrency: int = 8  # per critic
    api_key: str | None = None
    options: ScoreOptions | None = None
    timeout_s: float = 120.0
    top: int = 20
    retry_errors: bool = False
    progress: bool = True
    progress_every_s: float = 15.0
    plots: bool = True

    def __post_init__(self) -> None:
        self.manifest, self.out = Path(self.manifest), Path(self.out)
        if not self.servers:
            raise InvalidRequest("at least one --server URL is needed", param="server")
        if self.concurrency < 1:
            raise InvalidRequest("--concurrency must be >= 1", param="concurrency")
        if self.top < 0:
            raise InvalidRequest("--top must be >= 0", param="top")
        if self.labels is not None:
            self.labels = Path(self.labels)


@dataclass
class CompareResult:
    report: dict[str, Any]
    summary: dict[str, Any]
    aborted: str | None = None
    item_errors: int = 0

    @property
    def exit_code(self) -> int:
        if self.aborted:
            return 3
        return 1 if self.item_errors else 0


async def compare(config: CompareConfig) -> CompareResult:
    manifest = read_manifest(config.manifest)  # first: a missing manifest is said before any server is asked
    human = read_human_labels(config.labels, manifest) if config.labels is not None else None
    targets = await discover(config.servers, config.api_key, config.timeout_s)
    names = ", ".join(f"{t.id} ({t.critic}, {len(t.servers)} server{'s' if len(t.servers) > 1 else ''})"
                      for t in targets)
    if len(targets) < 2 and human is None:
        raise InvalidRequest(
            f"the servers serve one critic ({names}); comparing critics needs two: add --server URL of a deployment "
            "serving another critic, or give --labels HUMAN.jsonl to measure this one against human labels",
            param="server")
    log(f"{len(manifest.items)} items, critics: {names}")
    journals = config.out / "journals"
    for t in targets:
        t.journal = journals / f"{journal_name(t.id)}.jsonl"
    results = await _score_all(config, targets)
    aborted = next((f"{t.id}: {r.aborted}" for t, r in zip(targets, results) if r.aborted), None)
    if aborted:
        summary = {"aborted": aborted, "critics": [_run_dict(t, r) for t, r in zip(targets, results)]}
        return CompareResult({}, summary, aborted=aborted)

    report = build_report(manifest, targets, results, human, top=config.top)
    report["labels_file"] = str(config.labels) if config.labels is not None else None
    if len(targets) < 2:
        report["notes"].append(f"one critic ({targets[0].id}): no pairs of critics to compare; human agreement only")
    if config.plots and report["pairs"]:
        report["plots"] = plot_pairs(report, manifest, targets, config.out / "plots")
    _atomic_write_text(config.out / "compare.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _atomic_write_text(config.out / "compare.md", markdown(report))
    errors = sum(r.summary.errors for r in results)
    return CompareResult(report, summary_of(report, config.out), item_errors=errors)


async def _score_all(config: CompareConfig, targets: list[CriticTarget]) -> list[LabelResult]:
    configs = []
    for t in targets:
        options = config.options
        if t.choose:
            options = (options or ScoreOptions()).model_copy(update={"critics": [t.id]})
        configs.append(LabelConfig(
            manifest=config.manifest, out=t.journal, servers=t.servers, concurrency=config.concurrency,
            retry_errors=config.retry_errors, api_key=config.api_key, options=options, timeout_s=config.timeout_s,
            progress=False))
    t0 = time.monotonic()
    reporter = asyncio.create_task(_report_progress(targets, config)) if config.progress else None
    try:
        outcomes = await asyncio.gather(*(label(c) for c in configs), return_exceptions=True)
    finally:
        if reporter is not None:
            reporter.cancel()
    for t, o in zip(targets, outcomes):
        if isinstance(o, BaseException):
            if isinstance(o, LiftError):
                o.message = f"critic {t.id}: {o.message}"
            raise o
    results = [o for o in outcomes if isinstance(o, LabelResult)]
    for t, r in zip(targets, results):
        s = r.summary
        if r.repaired_bytes:
            log(f"{t.id}: cut a torn last line ({r.repaired_bytes} bytes) from {t.journal}; its item was redone")
        log(f"{t.id}: {s.ok} ok, {s.errors} errors, {s.missing} not done (this run {s.new_this_run} new, "
            f"{s.skipped_done} already done)")
    log(f"scored in {time.monotonic() - t0:.1f} s")
    return results


async def _report_progress(targets: list[CriticTarget], config: CompareConfig) -> None:
    while True:
        await asyncio.sleep(config.progress_every_s)
        counts = []
        for t in targets:
            try:
                lines = t.journal.read_bytes().count(b"\n")
            except FileNotFoundError:
                lines = 0
            counts.append(f"{t.id} {lines}")
        log("journal lines: " + ", ".join(counts))


def _run_dict(t: CriticTarget, r: LabelResult) -> dict[str, Any]:
    s = r.summary
    return {**t.as_dict(), "ok": s.ok, "errors": s.errors, "missing": s.missing, "new_this_run": s.new_this_run,
            "skipped_done": s.skipped_done, "error_codes": dict(s.error_codes)}


# ---- human labels -------------------------------------------------------------------------------------------
@dataclass
class HumanLabels:
    path: Path
    columns: dict[str, dict[str, Any]]  # column -> {id: value (float, or a LiFT label)}
    kinds: dict[str, str]  # column -> "labels" | "numbers"
    unknown_ids: list[str] = field(default_factory=list)  # ids not in the manifest


def _label_of(value: str) -> str | None:
    v = value.strip().capitalize()
    return v if v in LABELS else None


def read_human_labels(path: Path, manifest: Manifest) -> HumanLabels:
    """JSONL: {"id": ..., <column>: number | "Good" | "Normal" | "Bad", ...} per line (an item without "id" may
    give "video" and "prompt", as the manifest does). A column holds numbers or labels, not both."""
    if not path.is_file():
        raise InvalidRequest(f"labels file not found: {path}", param="labels")
    known = {it.id for it in manifest.items}
    columns: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    unknown: list[str] = []
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{path}:{n} is not JSON ({exc.msg})", param="labels") from None
            if not isinstance(obj, dict):
                raise InvalidRequest(f"{path}:{n} is not a JSON object", param="labels")
            raw_id = obj.get("id")
            if raw_id is None and isinstance(obj.get("video"), str) and isinstance(obj.get("prompt", obj.get("caption")), str):
                raw_id = item_id(obj["video"], obj.get("prompt", obj.get("caption")))
            if raw_id is None or isinstance(raw_id, (bool, dict, list)):
                raise InvalidRequest(f"{path}:{n} has no \"id\" (or \"video\" and \"prompt\")", param="labels")
            ident = str(raw_id)
            if ident not in known:
                unknown.append(ident)
                continue
            for col, value in obj.items():
                if col in HUMAN_IGNORED or value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise InvalidRequest(f"{path}:{n}: {col!r} must be a number or Good/Normal/Bad", param="labels")
                if isinstance(value, str):
                    lab = _label_of(value)
                    if lab is None:
                        raise InvalidRequest(f"{path}:{n}: {col!r} is {value!r}: a number or Good/Normal/Bad",
                                             param="labels")
                    kind, value = "labels", lab
                else:
                    if not math.isfinite(value):
                        raise InvalidRequest(f"{path}:{n}: {col!r} is not a finite number", param="labels")
                    kind, value = "numbers", float(value)
                if kinds.setdefault(col, kind) != kind:
                    raise InvalidRequest(f"{path}:{n}: column {col!r} mixes numbers and labels", param="labels")
                columns.setdefault(col, {})[ident] = value
    if not columns:
        raise InvalidRequest(f"{path} has no human column for any item of the manifest (ids must be the manifest's)",
                             param="labels")
    return HumanLabels(path, columns, kinds, unknown)


# ---- statistics ---------------------------------------------------------------------------------------------
def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _p(x: float | None) -> float | None:
    """A p-value to 3 significant digits (tiny ones stay tiny, not 0)."""
    return None if x is None or not math.isfinite(x) else float(f"{float(x):.3g}")


def rank_agreement(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau-b (scipy.stats) with p-values; null where undefined (n < 2, a constant
    side)."""
    try:
        from scipy import stats
    except ImportError:
        raise InvalidRequest("lift critics compare needs scipy: pip install scipy", param="scipy") from None
    n = len(x)
    out: dict[str, Any] = {"n": n, "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if n < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(x, y)
        tau = stats.kendalltau(x, y)
    out.update(spearman=_num(rho.statistic), spearman_p=_p(rho.pvalue), kendall=_num(tau.statistic),
               kendall_p=_p(tau.pvalue))
    return out


def _dim_field(recs_a: list[dict[str, Any]], da: str, recs_b: list[dict[str, Any]] | None = None,
               db: str | None = None) -> str:
    """expected_score where every record (of both sides) has one: continuous, fewer ties; else score."""
    def has(recs: list[dict[str, Any]], d: str) -> bool:
        return all(((r.get("dimensions") or {}).get(d) or {}).get("expected_score") is not None for r in recs)

    ok = has(recs_a, da) and (recs_b is None or db is None or has(recs_b, db))
    return "expected_score" if ok else "score"


def _dim_values(recs: list[dict[str, Any]], d: str, fld: str) -> list[float] | None:
    vals = [((r.get("dimensions") or {}).get(d) or {}).get(fld) for r in recs]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def _series(recs: list[dict[str, Any]], key: str) -> list[float] | None:
    vals = [r.get(key) for r in recs]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def _ranks01(values: Sequence[float]) -> list[float]:
    """Average ranks scaled to [0, 1] (0 lowest); one item: 0.5."""
    from scipy.stats import rankdata

    n = len(values)
    if n < 2:
        return [0.5] * n
    return [(r - 1) / (n - 1) for r in rankdata(values, method="average")]


def ok_records(journal: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rec in iter_records(journal):
        ident = str(rec["id"])
        if ident in ids and rec.get("status") == OK:
            out[ident] = rec
    return out


def build_report(manifest: Manifest, targets: list[CriticTarget], results: list[LabelResult],
                 human: HumanLabels | None, *, top: int = 20) -> dict[str, Any]:
    ids = [it.id for it in manifest.items]
    wanted = set(ids)
    recs = {t.id: ok_records(t.journal, wanted) for t in targets}
    for t in targets:  # a card without dimensions (an older server): the records say them
        if not t.dimensions and recs[t.id]:
            t.dimensions = list(next(iter(recs[t.id].values())).get("dimensions") or {})
    report: dict[str, Any] = {
        "manifest": str(manifest.path), "items": len(ids),
        "critics": [_run_dict(t, r) for t, r in zip(targets, results)],
        "pairs": [], "human": None, "disagreements": [], "plots": [], "notes": [],
    }
    by_item = {it.id: it for it in manifest.items}
    candidates: list[dict[str, Any]] = []
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            common = [x for x in ids if x in recs[a.id] and x in recs[b.id]]
            ra, rb = [recs[a.id][x] for x in common], [recs[b.id][x] for x in common]
            pair: dict[str, Any] = {"a": a.id, "b": b.id, "n": len(common),
                                    "reward": rank_agreement(_series(ra, "reward") or [], _series(rb, "reward") or [])}
            ea, eb = _series(ra, "expected_reward"), _series(rb, "expected_reward")
            pair["expected_reward"] = rank_agreement(ea, eb) if ea is not None and eb is not None and common else None
            dims = []
            for da in a.dimensions:
                for db in b.dimensions:
                    fld = _dim_field(ra, da, rb, db)
                    va, vb = _dim_values(ra, da, fld), _dim_values(rb, db, fld)
                    if va is None or vb is None:
                        continue
                    dims.append({"a": da, "b": db, "field": fld, **rank_agreement(va, vb)})
            pair["dimensions"] = dims
            report["pairs"].append(pair)
            if len(common) >= 2:
                rank_a = _ranks01([r["reward"] for r in ra])
                rank_b = _ranks01([r["reward"] for r in rb])
                for x, qa, qb, xa, xb in zip(common, rank_a, rank_b, ra, rb):
                    diff = abs(qa - qb)
                    if diff > 1e-12:
                        it = by_item[x]
                        candidates.append({
                            "id": x, "video": it.video, "path": str(manifest.resolve(it.video)),
                            "prompt": it.prompt, "a": a.id, "b": b.id,
                            "reward": {a.id: xa["reward"], b.id: xb["reward"]},
                            "rank": {a.id: _num(qa), b.id: _num(qb)}, "rank_difference": _num(diff)})
    candidates.sort(key=lambda c: (-c["rank_difference"], c["id"], c["a"], c["b"]))
    report["disagreements"] = candidates[:top]
    if human is not None:
        report["human"] = human_agreement(human, targets, recs)
        if human.unknown_ids:
            report["notes"].append(f"{len(human.unknown_ids)} ids of the labels file are not in the manifest "
                                   f"(e.g. {human.unknown_ids[0]!r}); left out")
    for t, r in zip(targets, results):
        if r.summary.errors:
            report["notes"].append(f"{t.id}: {r.summary.errors} items are error lines "
                                   f"({', '.join(f'{c} {n}' for c, n in r.summary.error_codes.most_common())}); "
                                   "left out of every statistic (--retry-errors redoes them)")
    return report


def human_agreement(human: HumanLabels, targets: list[CriticTarget],
                    recs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "file": str(human.path),
        "columns": {c: {"kind": human.kinds[c], "n": len(v)} for c, v in human.columns.items()},
        "unknown_ids": len(human.unknown_ids),
        "critics": {},
    }
    for t in targets:
        per_col: dict[str, Any] = {}
        for col, values in human.columns.items():
            common = [x for x in values if x in recs[t.id]]
            rs = [recs[t.id][x] for x in common]
            hv = [float(LABEL_ORDER[values[x]]) if human.kinds[col] == "labels" else values[x] for x in common]
            entry: dict[str, Any] = {"n": len(common), "vs": {}}
            for key in ("reward", "expected_reward"):
                s = _series(rs, key)
                if s is not None and common:
                    entry["vs"][key] = rank_agreement(hv, s)
            for d in t.dimensions:
                fld = _dim_field(rs, d)
                s = _dim_values(rs, d, fld)
                if s is not None and common:
                    entry["vs"][d] = {"field": fld, **rank_agreement(hv, s)}
            if human.kinds[col] == "labels" and t.critic == LIFT_CRITIC and col in t.dimensions:
                pairs = [(values[x], ((r.get("dimensions") or {}).get(col) or {}).get("label"))
                         for x, r in zip(common, rs)]
                pairs = [(h, p) for h, p in pairs if p is not None]
                confusion = {h: {p: 0 for p in LABELS} for h in LABELS}
                for h, p in pairs:
                    if p in confusion[h]:
                        confusion[h][p] += 1
                entry["accuracy"] = _num(sum(h == p for h, p in pairs) / len(pairs)) if pairs else None
                entry["confusion"] = confusion  # rows: human, columns: critic
            per_col[col] = entry
        out["critics"][t.id] = per_col
    return out


# ---- outputs -------------------------------------------------------------------------------------------------
def summary_of(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """What stdout gets: where the outputs are, the counts and the headline numbers."""
    human = None
    if report.get("human"):
        human = {}
        for cid, cols in report["human"]["critics"].items():
            human[cid] = {}
            for col, e in cols.items():
                main = e["vs"].get(col) or e["vs"].get("reward") or {}
                human[cid][col] = {"vs": col if col in e["vs"] else "reward", "n": e["n"],
                                   "spearman": main.get("spearman"), "kendall": main.get("kendall"),
                                   **({"accuracy": e["accuracy"]} if "accuracy" in e else {})}
    return {
        "out": str(out), "compare_json": str(out / "compare.json"), "compare_md": str(out / "compare.md"),
        "items": report["items"],
        "critics": [{k: c[k] for k in ("id", "critic", "ok", "errors", "missing", "new_this_run", "skipped_done")}
                    for c in report["critics"]],
        "pairs": [{"a": p["a"], "b": p["b"], "n": p["n"],
                   "reward": {k: p["reward"][k] for k in ("spearman", "kendall")},
                   "expected_reward": ({k: p["expected_reward"][k] for k in ("spearman", "kendall")}
                                       if p["expected_reward"] else None)} for p in report["pairs"]],
        "human": human,
        "disagreements": len(report["disagreements"]),
        "plots": report["plots"],
        "notes": report["notes"],
    }


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cell(text: Any) -> str:
    """Text for a markdown table cell (a '|' or a newline would break the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Critics compared", "", f"Manifest `{report['manifest']}`: {report['items']} items.", "",
             "| critic | kind | servers | ok | errors | not done |", "|---|---|---|---:|---:|---:|"]
    for c in report["critics"]:
        lines.append(f"| {c['id']} | {c['critic']} | {', '.join(c['servers'])} | {c['ok']} | {c['errors']} | "
                     f"{c['missing']} |")
    for p in report["pairs"]:
        lines += ["", f"## {p['a']} vs {p['b']} ({p['n']} items both scored)", "",
                  "| what | Spearman | Kendall | n |", "|---|---:|---:|---:|",
                  f"| reward | {_f(p['reward']['spearman'])} | {_f(p['reward']['kendall'])} | {p['reward']['n']} |"]
        if p["expected_reward"]:
            e = p["expected_reward"]
            lines.append(f"| expected_reward | {_f(e['spearman'])} | {_f(e['kendall'])} | {e['n']} |")
        if p["dimensions"]:
            lines += ["", f"Dimensions (rows {p['a']}, columns {p['b']}): Spearman / Kendall", ""]
            cols = list(dict.fromkeys(d["b"] for d in p["dimensions"]))
            rows = list(dict.fromkeys(d["a"] for d in p["dimensions"]))
            cell = {(d["a"], d["b"]): d for d in p["dimensions"]}
            lines += ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            for r in rows:
                lines.append(f"| {r} | " + " | ".join(
                    f"{_f(cell[r, c]['spearman'])} / {_f(cell[r, c]['kendall'])}" if (r, c) in cell else "-"
                    for c in cols) + " |")
    h = report.get("human")
    if h:
        lines += ["", "## Agreement with the human labels", "", f"File `{h['file']}`: columns "
                  + ", ".join(f"{c} ({v['kind']}, {v['n']})" for c, v in h["columns"].items()), ""]
        for cid, cols in h["critics"].items():
            lines += [f"### {cid}", "", "| human column | critic's | Spearman | Kendall | n |", "|---|---|---:|---:|---:|"]
            for col, e in cols.items():
                for what, s in e["vs"].items():
                    lines.append(f"| {col} | {what} | {_f(s['spearman'])} | {_f(s['kendall'])} | {s['n']} |")
            acc = {col: e["accuracy"] for col, e in cols.items() if "accuracy" in e}
            if acc:
                lines += ["", "Accuracy (critic's label = human label): "
                          + ", ".join(f"{col} {_f(a)}" for col, a in acc.items())]
            lines.append("")
    if report["disagreements"]:
        lines += ["", "## Where the critics disagree most", "",
                  "Rank difference of the rewards (0 = same place, 1 = opposite ends).", "",
                  "| id | video | critics | rewards | rank difference |", "|---|---|---|---|---:|"]
        for d in report["disagreements"]:
            rewards = ", ".join(f"{k} {v:.3f}" for k, v in d["reward"].items())
            lines.append(f"| {_cell(d['id'])} | {_cell(d['path'])} | {_cell(d['a'])} / {_cell(d['b'])} | {_cell(rewards)} "
                         f"| {d['rank_difference']:.3f} |")
    if report["plots"]:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot_pairs(report: dict[str, Any], manifest: Manifest, targets: list[CriticTarget], out: Path) -> list[str]:
    """One PNG per pair of critics: reward vs reward (and expected_reward vs expected_reward where both have it).
    Paths are relative to the compare folder."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append("no plots: matplotlib is not installed (pip install 'lift-reward[labels]')")
        return []
    ids = {it.id for it in manifest.items}
    recs = {t.id: ok_records(t.journal, ids) for t in targets}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in report["pairs"]:
        a, b = p["a"], p["b"]
        common = [x for x in recs[a] if x in recs[b]]
        panels = [("reward", p["reward"])]
        if p["expected_reward"]:
            panels.append(("expected_reward", p["expected_reward"]))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
        for ax, (key, stats) in zip(axes[0], panels):
            ax.scatter([recs[a][x][key] for x in common], [recs[b][x][key] for x in common], s=14, alpha=0.6,
                       color="#4c72b0")
            ax.set_xlabel(f"{a} {key}")
            ax.set_ylabel(f"{b} {key}")
            ax.set_title(f"n={stats['n']}  Spearman {_f(stats['spearman'])}  Kendall {_f(stats['kendall'])}",
                         fontsize=9)
        fig.tight_layout()
        path = out / f"reward_{journal_name(a)}_vs_{journal_name(b)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(Path(out.name) / path.name))
    return paths


def run(config: CompareConfig) -> CompareResult:
    return asyncio.run(compare(config))


__all__ = ["CompareConfig", "CompareResult", "CriticTarget", "compare", "discover", "rank_agreement",
           "read_human_labels", "run"]
