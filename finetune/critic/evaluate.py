"""Score human-rated videos with a critic and measure agreement with the humans.

The critic is either a checkpoint folder run here (`Critic.from_pretrained`, vLLM or transformers) or
a running service reached through `clients.RewardClient`: the same numbers either way. One score per
(video, caption) answers all three questions; each rated dimension is then compared to its label.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune.critic.data import RatedExample
from finetune.critic.metrics import (EvalReport, Judgement, full_markdown, plot_confusion, summarize,
                                     table2_markdown)
from service.errors import LiftError
from service.protocol import ScoreOptions, ScoreResponse

# Greedy, seeded: an evaluation is reproducible. Reasons are kept for the judgements file but do not count,
# so they are bounded shorter than the service default.
EVAL_OPTIONS = ScoreOptions(temperature=0.0, seed=0, max_reason_tokens=32)


def eval_options(num_frames: int | None = None, max_reason_tokens: int | None = None) -> ScoreOptions:
    update = {k: v for k, v in (("num_frames", num_frames), ("max_reason_tokens", max_reason_tokens)) if v}
    return EVAL_OPTIONS.model_copy(update=update)
Item = tuple[Path, str]  # (video, caption)
Outcome = ScoreResponse | LiftError


def group_items(examples: Sequence[RatedExample]) -> list[Item]:
    """Distinct (video, caption) pairs in first-seen order: each is scored once."""
    seen: dict[Item, None] = {}
    for ex in examples:
        seen.setdefault((Path(ex.video), ex.caption), None)
    return list(seen)


def judge(examples: Sequence[RatedExample], items: Sequence[Item],
          outcomes: Sequence[Outcome]) -> tuple[list[Judgement], list[dict[str, str]]]:
    by_item = dict(zip(items, outcomes, strict=True))
    judgements: list[Judgement] = []
    failures: list[dict[str, str]] = []
    failed: set[Item] = set()
    for ex in examples:
        item = (Path(ex.video), ex.caption)
        out = by_item[item]
        if isinstance(out, LiftError):
            if item not in failed:
                failed.add(item)
                failures.append({"video": str(ex.video), "caption": ex.caption, "error": f"{out.code}: {out.message}"})
            continue
        d = out.dimensions[ex.dimension]
        judgements.append(Judgement(
            dimension=ex.dimension, human=ex.label, predicted=d.label, expected_score=d.expected_score,
            probabilities=d.probabilities.model_dump(), rationale=d.rationale, video=str(ex.video), caption=ex.caption))
    return judgements, failures


async def score_items(critic: Any, items: Sequence[Item], *, concurrency: int = 4,
                      options: ScoreOptions = EVAL_OPTIONS,
                      progress: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Score with a started `service.critic.Critic`; a failing video is its error, never the whole run."""
    sem = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(item: Item) -> Outcome:
        nonlocal done
        async with sem:
            try:
                result: Outcome = await critic.score(item[0], item[1], options)
            except LiftError as exc:
                result = exc
        done += 1
        if progress:
            progress(done, len(items))
        return result

    return list(await asyncio.gather(*(one(i) for i in items)))


def evaluate_model(examples: Sequence[RatedExample], model_dir: Path | str, *, engine: str = "vllm",
                   name: str | None = None, concurrency: int = 4, num_frames: int | None = None,
                   max_reason_tokens: int | None = None, progress: Callable[[int, int], None] | None = None,
                   **engine_options: Any) -> tuple[EvalReport, list[Judgement]]:
    """Load the checkpoint on `engine`, score every rated video, summarise."""
    from service.critic import Critic

    items = group_items(examples)
    kwargs: dict[str, Any] = dict(engine_options)
    if num_frames:
        kwargs["num_frames"] = num_frames

    async def run() -> list[Outcome]:
        critic = Critic.from_pretrained(model_dir, engine=engine, **kwargs)
        await critic.start()
        try:
            return await score_items(critic, items, concurrency=concurrency, progress=progress,
                                     options=eval_options(num_frames, max_reason_tokens))
        finally:
            await critic.stop()

    outcomes = asyncio.run(run())
    judgements, failures = judge(examples, items, outcomes)
    label = name or f"{Path(model_dir).name} ({engine})"
    return summarize(label, judgements, n_videos=len(items), failures=failures), judgements


def evaluate_server(examples: Sequence[RatedExample], url: str | Sequence[str], *, api_key: str | None = None,
                    name: str | None = None, batch_size: int = 8, timeout_s: float = 600.0,
                    num_frames: int | None = None,
                    max_reason_tokens: int | None = None) -> tuple[EvalReport, list[Judgement]]:
    """Score through a running `lift serve` (one or several replicas) with the project's client."""
    from clients import RewardClient

    items = group_items(examples)
    options = eval_options(num_frames, max_reason_tokens)
    with RewardClient(url, api_key=api_key, timeout=timeout_s) as client:
        outcomes = client.score_batch([str(v) for v, _ in items], [c for _, c in items], options=options,
                                      batch_size=batch_size, return_exceptions=True)
    judgements, failures = judge(examples, items, outcomes)
    label = name or (url if isinstance(url, str) else ",".join(url))
    return summarize(label, judgements, n_videos=len(items), failures=failures), judgements


def write_report(report: EvalReport, judgements: Sequence[Judgement], out_dir: Path | str) -> dict[str, Path]:
    """report.json, report.md (Table 2 layout, agreement, confusion tables), confusion.png, judgements.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "confusion.png",
             "judgements": out / "judgements.jsonl"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=1))
    paths["markdown"].write_text(full_markdown(report))
    plot_confusion(report, paths["png"])
    with paths["judgements"].open("w") as fh:
        for j in judgements:
            fh.write(json.dumps({**asdict(j), "probabilities": dict(j.probabilities)}) + "\n")
    return paths


__all__ = ["EVAL_OPTIONS", "eval_options", "evaluate_model", "evaluate_server", "group_items", "judge", "score_items",
           "table2_markdown", "write_report"]
