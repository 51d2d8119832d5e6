"""`lift label merge PART.jsonl... --out MERGED.jsonl`: the shards' labels files joined into one, each id once.

Policy, per id seen in more than one line (across parts, or twice in one part):
- the same result twice (every field equal, numbers within `tolerance`, the per-request `request_id` aside):
  kept once, counted as a duplicate;
- an ok line and an error line: the ok line wins (the error was redone elsewhere), counted as superseded;
- two error lines: the first is kept;
- two ok lines that differ: a conflict. Every conflict is reported (id, parts, the fields that differ). With
  `on_conflict="fail"` (the default) nothing is written and the exit code is 3, so an ambiguous file never
  reaches training; `"first"` / `"last"` keep the line from the first / last part given (command-line order)
  and write the file.
Lines labeled by different critics or rubrics (their `provenance` digests differ) are not comparable: the
merge is refused, naming the first two, unless `allow_mixed_provenance`; lines without provenance (an older
server) are not checked.
With a manifest, its ids that no part has are reported as missing. A torn last line (a shard killed and not
resumed) is skipped and reported. Error lines are kept in the output, as `lift label` keeps them.

Two streaming passes, so memory is one small index entry per id, never the records: the first pass reads
every part and decides which line wins for each id; the second copies the winning lines, byte for byte, in
part order, to a temp file that is fsynced and renamed onto `out` (never half a file).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from service.errors import InvalidRequest, MediaNotFound

from .journal import ERROR, OK

OnConflict = Literal["fail", "first", "last"]
# request_id differs on every request; provenance says how a result was made, not what it is (mixed critics or
# rubrics are refused on their own, see _check_provenance)
IGNORED_FIELDS = frozenset({"request_id", "provenance"})
EXAMPLES = 20  # ids listed per kind of problem in the report


@dataclass
class PartInfo:
    path: str
    lines: int = 0
    torn_bytes: int = 0


@dataclass
class Conflict:
    id: str
    parts: list[str]
    fields: list[str]


@dataclass
class Origin:
    """One critic + rubric seen in the parts, and where first."""

    critic: str
    critic_digest: str | None
    rubric_digest: str
    first_seen: str  # "PART:LINE"
    lines: int = 0

    def describe(self) -> str:
        return (f"critic {self.critic!r} (checkpoint {self.critic_digest or 'digest unknown'}) with rubric "
                f"{self.rubric_digest}, first at {self.first_seen}")


@dataclass
class MergeReport:
    out: str
    parts: list[PartInfo]
    on_conflict: OnConflict
    written: bool = False
    ids: int = 0  # distinct ids across all parts (lines in the merged file when written)
    ok: int = 0
    errors: int = 0
    error_codes: Counter = field(default_factory=Counter)
    duplicates: int = 0  # extra lines carrying the same result as the kept one
    superseded_errors: int = 0  # error lines dropped for an ok line of the same id
    conflicts: dict[str, Conflict] = field(default_factory=dict)
    manifest_total: int | None = None
    missing: list[str] = field(default_factory=list)  # manifest ids in no part
    not_in_manifest: int = 0
    origins: dict[tuple[str | None, str], Origin] = field(default_factory=dict)  # (critic, rubric digest) -> where
    without_provenance: int = 0  # ok lines from a server before provenance: not checked

    @property
    def torn_lines(self) -> int:
        return sum(1 for p in self.parts if p.torn_bytes)

    @property
    def exit_code(self) -> int:
        if self.conflicts and self.on_conflict == "fail":
            return 3
        return 1 if (self.errors or self.missing or self.torn_lines) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out, "written": self.written, "ids": self.ids, "ok": self.ok, "errors": self.errors,
            "error_codes": dict(self.error_codes),
            "missing": len(self.missing) if self.manifest_total is not None else None,
            "manifest_total": self.manifest_total, "not_in_manifest": self.not_in_manifest,
            "duplicates": self.duplicates, "superseded_errors": self.superseded_errors,
            "conflicts": len(self.conflicts), "on_conflict": self.on_conflict, "torn_lines": self.torn_lines,
            "parts": [vars(p) for p in self.parts],
            "conflict_examples": [vars(c) for c in list(self.conflicts.values())[:EXAMPLES]],
            "missing_examples": self.missing[:EXAMPLES],
            "provenance": [vars(o) for o in self.origins.values()],
            "without_provenance": self.without_provenance,
            "exit_code": self.exit_code,
        }

    def problems(self) -> list[str]:
        """One human line per kind of problem (for stderr)."""
        out = []
        for c in list(self.conflicts.values())[:EXAMPLES]:
            out.append(f"conflict: id {c.id!r} has different results in {', '.join(c.parts)} ({', '.join(c.fields[:6])})")
        if len(self.conflicts) > EXAMPLES:
            out.append(f"conflict: ... {len(self.conflicts) - EXAMPLES} more")
        if self.conflicts:
            out.append(f"{len(self.conflicts)} conflicting ids: " + (
                "nothing written (--on-conflict first|last keeps one line per id)" if self.on_conflict == "fail"
                else f"kept the {self.on_conflict} part's line"))
        for p in self.parts:
            if p.torn_bytes:
                out.append(f"torn last line ({p.torn_bytes} bytes) skipped in {p.path}: re-run that shard to redo its item")
        if self.missing:
            out.append(f"{len(self.missing)} manifest ids are in no part, e.g. {', '.join(self.missing[:5])}: "
                       "a shard did not finish or was not given")
        if len(self.origins) > 1:
            out.append("mixed provenance (--allow-mixed-provenance): "
                       + "; ".join(o.describe() for o in self.origins.values()))
        if self.without_provenance:
            out.append(f"{self.without_provenance} ok lines carry no provenance (an older server): their critic and "
                       "rubric were not checked")
        if self.errors:
            codes = ", ".join(f"{c} {n}" for c, n in self.error_codes.most_common())
            out.append(f"{self.errors} ids are error lines ({codes}): lift label --retry-errors on their shard redoes them")
        return out


def merge(parts: list[Path], out: Path, *, manifest: Path | None = None, on_conflict: OnConflict = "fail",
          tolerance: float = 1e-6, allow_mixed_provenance: bool = False) -> MergeReport:
    if on_conflict not in ("fail", "first", "last"):
        raise InvalidRequest(f"on_conflict must be fail, first or last, not {on_conflict!r}", param="on_conflict")
    if not parts:
        raise InvalidRequest("no part files given", param="parts")
    parts = [Path(p) for p in parts]
    out = Path(out)
    for p in parts:
        if not p.is_file():
            raise MediaNotFound(f"part file not found: {p}", param="parts")
        if out.exists() and os.path.samefile(p, out):
            raise InvalidRequest(f"--out {out} is one of the parts; write the merged file elsewhere", param="out")
    if len({os.path.realpath(p) for p in parts}) != len(parts):
        raise InvalidRequest("the same part file is given twice", param="parts")

    report = MergeReport(str(out), [PartInfo(str(p)) for p in parts], on_conflict)
    # id -> (part index, byte offset, status) of the line that is kept
    chosen: dict[str, tuple[int, int, str]] = {}
    readers = [p.open("rb") for p in parts]  # random access to an earlier line when an id comes back
    try:
        for pi, path in enumerate(parts):
            with path.open("rb") as f:
                offset = 0
                for n, raw in enumerate(f, start=1):
                    at, offset = offset, offset + len(raw)
                    if not raw.endswith(b"\n"):
                        report.parts[pi].torn_bytes = len(raw)  # only the last line can lack its newline
                        break
                    if not raw.strip():
                        continue
                    rec = _record(raw, path, n)
                    report.parts[pi].lines += 1
                    if rec["status"] == OK:
                        _check_provenance(report, rec, f"{path}:{n}", allow_mixed_provenance)
                    ident, status = str(rec["id"]), rec["status"]
                    if ident not in chosen:
                        chosen[ident] = (pi, at, status)
                        continue
                    kept = chosen[ident]
                    winner = _resolve(report, ident, kept, (pi, at, status), rec, readers, parts, tolerance)
                    chosen[ident] = winner
    finally:
        for r in readers:
            r.close()

    report.ids = len(chosen)
    for ident, (pi, at, status) in chosen.items():
        if status == OK:
            report.ok += 1
    report.errors = report.ids - report.ok
    if report.errors:
        _count_error_codes(report, chosen, parts)
    if manifest is not None:
        from .manifest import read_manifest

        wanted = [it.id for it in read_manifest(manifest).items]
        report.manifest_total = len(wanted)
        wanted_set = set(wanted)
        report.missing = [i for i in wanted if i not in chosen]
        report.not_in_manifest = sum(1 for i in chosen if i not in wanted_set)

    if report.conflicts and on_conflict == "fail":
        return report
    _write(out, parts, chosen)
    report.written = True
    return report


def _record(raw: bytes, path: Path, n: int) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
        if not isinstance(rec, dict) or "id" not in rec or rec.get("status") not in (OK, ERROR):
            raise ValueError
    except ValueError:
        raise InvalidRequest(f"{path}:{n} is not a labels record (a lift label output line)", param="parts") from None
    return rec


def _check_provenance(report: MergeReport, rec: dict[str, Any], where: str, allow_mixed: bool) -> None:
    """Note which critic and rubric labeled an ok line; a second pair refuses the merge unless allowed."""
    prov = rec.get("provenance")
    if not isinstance(prov, dict):
        report.without_provenance += 1
        return
    critic, rubric = prov.get("critic") or {}, prov.get("rubric") or {}
    key = (critic.get("digest"), str(rubric.get("digest")))
    origin = report.origins.get(key)
    if origin is None:
        origin = report.origins[key] = Origin(str(critic.get("name")), key[0], key[1], where)
        if len(report.origins) > 1 and not allow_mixed:
            first = next(iter(report.origins.values()))
            what = " and ".join(w for w, differs in (("critics", first.critic_digest != key[0]),
                                                      ("rubrics", first.rubric_digest != key[1])) if differs)
            raise InvalidRequest(
                f"the parts were labeled by different {what}: {first.describe()}; {origin.describe()}. Their labels "
                "are not comparable; --allow-mixed-provenance merges them anyway", param="parts")
    origin.lines += 1


def _read_at(readers: list[BinaryIO], pi: int, at: int) -> dict[str, Any]:
    f = readers[pi]
    f.seek(at)
    return json.loads(f.readline())


def _resolve(report: MergeReport, ident: str, kept: tuple[int, int, str], new: tuple[int, int, str],
             new_rec: dict[str, Any], readers: list[BinaryIO], parts: list[Path], tol: float) -> tuple[int, int, str]:
    """Which of two lines of one id stays; updates the report's counters."""
    k_status, n_status = kept[2], new[2]
    if k_status != n_status:
        report.superseded_errors += 1
        return kept if k_status == OK else new
    if k_status == ERROR:
        report.duplicates += 1
        return kept
    diff = differences(_read_at(readers, kept[0], kept[1]), new_rec, tol)
    if not diff:
        report.duplicates += 1
        return kept
    c = report.conflicts.get(ident)
    if c is None:
        c = report.conflicts[ident] = Conflict(ident, [str(parts[kept[0]])], [])
    if str(parts[new[0]]) not in c.parts:
        c.parts.append(str(parts[new[0]]))
    c.fields = sorted(set(c.fields) | set(diff))
    return new if report.on_conflict == "last" else kept


def differences(a: Any, b: Any, tol: float, where: str = "") -> list[str]:
    """Paths of the fields where two records differ (numbers within `tol` are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if not where and k in IGNORED_FIELDS:
                continue
            path = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out += differences(a[k], b[k], tol, path)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [where]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in differences(x, y, tol, f"{where}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=0.0, abs_tol=tol) else [where]
    return [] if a == b else [where]


def _count_error_codes(report: MergeReport, chosen: dict[str, tuple[int, int, str]], parts: list[Path]) -> None:
    wanted: dict[int, set[int]] = {}
    for pi, at, status in chosen.values():
        if status == ERROR:
            wanted.setdefault(pi, set()).add(at)
    for pi, offsets in wanted.items():
        with parts[pi].open("rb") as f:
            for at in sorted(offsets):
                f.seek(at)
                rec = json.loads(f.readline())
                report.error_codes[(rec.get("error") or {}).get("code", "unknown")] += 1


def _write(out: Path, parts: list[Path], chosen: dict[str, tuple[int, int, str]]) -> None:
    keep: dict[int, set[int]] = {}
    for pi, at, _ in chosen.values():
        keep.setdefault(pi, set()).add(at)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as w:
        for pi, path in enumerate(parts):
            offsets = keep.get(pi)
            if not offsets:
                continue
            with path.open("rb") as f:
                offset = 0
                for raw in f:
                    if offset in offsets:
                        w.write(raw)
                    offset += len(raw)
        w.flush()
        os.fsync(w.fileno())
    os.replace(tmp, out)
