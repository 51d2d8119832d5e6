"""Batch reward labeling: a manifest in, one labels line per item out, resumable at any instant.

`label(config)` reads the manifest, repairs and reads the journal (see `clients.journal`), and runs
`concurrency` workers that upload videos to the replicas (spread least-loaded, failing over when one
dies). Every result is appended the moment it arrives. An item the service rejects (missing file,
broken video, ...) becomes an error line, redone later with `retry_errors`. When no replica can be
reached at all the run stops (exit code 3) instead of writing every remaining item as an error;
re-running the same command resumes.

With `shard` (`--shard K/N`) the run owns only the manifest's items whose id hashes to K (see
`clients.shards`); its `out` is that shard's own journal, and a journal holding another shard's ids is
refused rather than mixed. `lift label merge` (`clients.merge`) joins the shards' files afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.errors import InvalidRequest, LiftError
from service.protocol import ScoreOptions

from .balancing import RetryPolicy
from .client import AsyncRewardClient, DEFAULT_TIMEOUT
from .errors import ServiceUnreachable
from .journal import ERROR, OK, Journal
from .label_outputs import Summary, error_record, export_lift, ok_record, plot, summarize, to_parquet
from .manifest import Manifest, ManifestItem, read_manifest
from .shards import Shard
from .video import PreparedVideo, prepare_video

# Labeling runs for hours: be more patient with a restarting replica than an interactive call is.
LABEL_RETRY = RetryPolicy(max_attempts=10, backoff_base_s=0.25, backoff_max_s=15.0)


@dataclass
class LabelConfig:
    manifest: Path = field(metadata={"help": "JSONL manifest: {id?, video, prompt} per line."})
    out: Path = field(metadata={"help": "Labels file (JSONL journal, or Parquet with format='parquet')."})
    servers: list[str] = field(default_factory=list, metadata={"help": "Scoring service base URLs."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once, over all replicas."})
    retry_errors: bool = field(default=False, metadata={"help": "Redo items recorded as errors."})
    format: Literal["jsonl", "parquet"] = field(default="jsonl", metadata={"help": "Output format."})
    export_lift: Path | None = field(default=None, metadata={"help": "Also write LiFT's [{video, caption, score}]."})
    plot: Path | None = field(default=None, metadata={"help": "PNG of reward distributions per dimension."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the service."})
    options: ScoreOptions | None = field(default=None, metadata={"help": "Score options for every item."})
    timeout_s: float = field(default=DEFAULT_TIMEOUT.read or 120.0, metadata={"help": "Per-request read timeout."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar on stderr."})
    retry: RetryPolicy = field(default_factory=lambda: LABEL_RETRY)
    shard: Shard | None = field(default=None, metadata={"help": "Label only this shard's items (K/N)."})
    allow_item_errors: bool = field(default=False, metadata={"help": "Exit 0 when finished with error lines."})
    rule_agreement: bool = field(default=False, metadata={
        "help": "Summary counts the answers that the other scoring rule (label vs LiFT's substring) reads differently."})

    def __post_init__(self) -> None:
        self.manifest, self.out = Path(self.manifest), Path(self.out)
        if not self.servers:
            raise InvalidRequest("at least one --server URL is needed", param="server")
        if self.concurrency < 1:
            raise InvalidRequest("--concurrency must be >= 1", param="concurrency")
        if self.format not in ("jsonl", "parquet"):
            raise InvalidRequest(f"unknown format {self.format!r}: jsonl or parquet", param="format")

    @property
    def journal_path(self) -> Path:
        # Parquet cannot be appended line by line safely; the JSONL journal next to it is what resumes.
        return self.out if self.format == "jsonl" else self.out.with_name(self.out.name + ".journal.jsonl")


@dataclass
class LabelResult:
    summary: Summary
    aborted: str | None  # why the run stopped early, None when every item has a line
    repaired_bytes: int
    allow_item_errors: bool = False  # a finished run with error lines exits 0

    @property
    def exit_code(self) -> int:
        if self.aborted:
            return 3
        return 1 if self.summary.errors and not self.allow_item_errors else 0


async def label(config: LabelConfig) -> LabelResult:
    manifest = read_manifest(config.manifest)
    if config.format == "jsonl" and config.out.suffix == ".parquet":
        raise InvalidRequest("--out ends in .parquet: add --format parquet", param="format")
    items = manifest.items
    if config.shard is not None:
        items = [it for it in items if config.shard.owns(it.id)]
    journal = Journal(config.journal_path)
    journal.lock()  # before load: load may cut a torn tail that another live run is still writing
    try:
        done = journal.load()
        if config.shard is not None:
            _check_shard_journal(journal, config.shard)
        if config.retry_errors:
            journal.drop_errors()
            done = journal.status
        todo = [it for it in items if it.id not in done]
        skipped = len(items) - len(todo)

        journal.open()
        aborted: str | None = None
        t0 = time.monotonic()
        try:
            aborted = await _run(manifest, todo, journal, config)
        finally:
            journal.close()
        seconds = time.monotonic() - t0
    finally:
        journal.unlock()

    ids = [it.id for it in items]
    summary = summarize(journal.path, ids, rule_agreement=config.rule_agreement)
    summary.new_this_run = sum(1 for it in todo if journal.status.get(it.id) in (OK, ERROR))
    summary.skipped_done = skipped
    summary.seconds = seconds
    summary.duplicates_in_manifest = manifest.duplicates
    if config.shard is not None:
        summary.shard = str(config.shard)
        summary.manifest_total = len(manifest.items)
    if config.format == "parquet":
        to_parquet(journal.path, config.out)
    if config.export_lift is not None:
        export_lift(journal.path, ids, config.export_lift)
    if config.plot is not None:
        plot(summary, config.plot)
    return LabelResult(summary, aborted, journal.repaired_bytes, config.allow_item_errors)


def _check_shard_journal(journal: Journal, shard: Shard) -> None:
    """A shard resumes only from its own journal: ids of other shards there mean two runs share one --out."""
    foreign = [i for i in journal.status if not shard.owns(i)]
    if foreign:
        raise InvalidRequest(
            f"{journal.path} holds {len(foreign)} ids that shard {shard} does not own (e.g. {foreign[0]!r}): it "
            "is another shard's output or an unsharded run's; give every shard its own --out", param="out",
        )


async def _run(manifest: Manifest, todo: list[ManifestItem], journal: Journal, config: LabelConfig) -> str | None:
    from tqdm import tqdm

    queue: asyncio.Queue[ManifestItem] = asyncio.Queue()
    for it in todo:
        if it.problem is None:
            queue.put_nowait(it)
    abort: list[str] = []
    errors = 0
    bar = tqdm(total=len(todo), unit="video", desc="label", disable=not config.progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)

    def record(rec: dict[str, Any]) -> None:
        nonlocal errors
        journal.append(rec)
        if rec["status"] == ERROR:
            errors += 1
            bar.set_postfix(errors=errors, refresh=False)
        bar.update(1)

    # Malformed manifest lines need no service: record them first, whatever happens to the replicas.
    for it in todo:
        if it.problem is not None:
            record(error_record(it.id, it.video, it.prompt, InvalidRequest.code, it.problem, "manifest"))

    async with AsyncRewardClient(config.servers, api_key=config.api_key, retry=config.retry,
                                 timeout=config.timeout_s, max_connections=max(8, config.concurrency)) as client:

        async def worker() -> None:
            while not abort:
                try:
                    it = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    video = await asyncio.to_thread(_load, manifest, it)
                    resp = await client.score(video, it.prompt, options=config.options)
                except ServiceUnreachable as exc:
                    # Not the item's fault: stop rather than mark everything left as failed.
                    abort.append(exc.message)
                    return
                except LiftError as exc:
                    record(error_record(it.id, it.video, it.prompt, exc.code, exc.message, exc.param))
                    continue
                except Exception as exc:  # a bug or an odd file; keep the run and the evidence
                    record(error_record(it.id, it.video, it.prompt, "client_error", f"{type(exc).__name__}: {exc}"))
                    continue
                try:
                    record(ok_record(it.id, it.video, it.prompt, resp))
                except ValueError as exc:  # e.g. a NaN the journal refuses to write as JSON
                    record(error_record(it.id, it.video, it.prompt, "client_error", f"unwritable result: {exc}"))

        try:
            await asyncio.gather(*(worker() for _ in range(min(config.concurrency, max(1, len(todo))))))
        finally:
            bar.close()
    return abort[0] if abort else None


def _load(manifest: Manifest, it: ManifestItem) -> PreparedVideo:
    return prepare_video(manifest.resolve(it.video))
