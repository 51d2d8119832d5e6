"""Online rounds: generate with the current model -> score -> reward-weighted update -> generate again.

    out/round-000/{videos/, manifest.jsonl, labels.jsonl, stats.json, train/{checkpoints/, lora/}}
    out/loop_log.jsonl   one line per scored round (mean reward, per dimension, errors, train loss)
    out/rewards.png      mean reward (and per dimension) per round

Every artefact is resumable or written atomically, so re-running the same command after a crash or a
service outage continues where it stopped. Every round samples the same seeds: round-to-round changes
come from the model, not from the noise. Scoring goes through `clients/` (the labeler over HTTP) or an
in-process reward function `fn(videos, prompts) -> list[float | None]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from finetune.config import DIMENSIONS, ConfigError, LoopConfig, SamplingConfig, TrainConfig
from finetune.data import read_jsonl, read_prompts
from service.errors import LiftError

log = logging.getLogger(__name__)

# Item errors that mean "the service was not able to answer", not "this video is bad".
TRANSIENT_CODES = frozenset({"service_unreachable", "engine_not_ready", "overloaded", "timeout", "engine_error"})


class RewardServiceUnavailable(LiftError):
    """Scoring failed after every retry; everything finished so far is kept and the loop can resume."""

    code = "reward_service_unavailable"


class Labeler(Protocol):
    def __call__(self, manifest: Path, labels: Path) -> None: ...


@dataclass
class ServiceLabeler:
    """Labels a round's manifest through the scoring service with the project's batch labeler."""

    servers: list[str]
    api_key: str | None = None
    attempts: int = 5
    backoff_s: float = 2.0
    concurrency: int = 4
    progress: bool = True

    def __call__(self, manifest: Path, labels: Path) -> None:
        import asyncio

        from clients.balancing import RetryPolicy
        from clients.labeler import LabelConfig, label

        why = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("scoring: %s; retrying in %.1fs (attempt %d of %d)", why, delay, attempt + 1, self.attempts)
                time.sleep(delay)
            cfg = LabelConfig(manifest=manifest, out=labels, servers=self.servers, api_key=self.api_key,
                              concurrency=self.concurrency, retry_errors=attempt > 0, progress=self.progress,
                              retry=RetryPolicy(max_attempts=3, backoff_base_s=min(self.backoff_s, 1.0)))
            result = asyncio.run(label(cfg))
            transient = transient_errors(labels)
            if result.aborted is None and not transient:
                return
            why = result.aborted or f"{len(transient)} items failed with {sorted(set(transient.values()))}"
        raise RewardServiceUnavailable(
            f"scoring service {', '.join(self.servers)} unavailable after {self.attempts} attempts ({why}). "
            f"Finished rounds, checkpoints and labels so far are kept; run the same command again to resume.")


def transient_errors(labels: Path) -> dict[str, str]:
    """id -> error code of the items whose latest line is a transient service failure."""
    latest: dict[str, dict[str, Any]] = {}
    if labels.is_file():
        for row in read_jsonl(labels):
            latest[str(row.get("id"))] = row
    return {i: r["error"].get("code", "") for i, r in latest.items()
            if isinstance(r.get("error"), dict) and r["error"].get("code") in TRANSIENT_CODES}


@dataclass
class FunctionLabeler:
    """Labels with an in-process `fn(videos, prompts) -> list[float | None]` (a known reward, a test, a TRL reward)."""

    fn: Callable[[list[str], list[str]], Sequence[float | None]]
    batch_size: int = 16

    def __call__(self, manifest: Path, labels: Path) -> None:
        items = read_jsonl(manifest)
        done = {str(r.get("id")) for r in read_jsonl(labels)} if labels.is_file() else set()
        todo = [r for r in items if str(r["id"]) not in done]
        with labels.open("a", encoding="utf-8") as f:
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i:i + self.batch_size]
                values = list(self.fn([r["video"] for r in chunk], [r["prompt"] for r in chunk]))
                if len(values) != len(chunk):
                    raise ConfigError(f"reward function returned {len(values)} values for {len(chunk)} videos")
                for r, v in zip(chunk, values):
                    base = {"id": r["id"], "video": r["video"], "prompt": r["prompt"]}
                    if v is None or not math.isfinite(float(v)):
                        row = {**base, "status": "error", "error": {"code": "no_reward", "message": "reward was None"}}
                    else:
                        row = {**base, "status": "ok", "reward": float(v), "expected_reward": float(v), "dimensions": {}}
                    f.write(json.dumps(row) + "\n")
                f.flush()


def round_stats(labels: Path, round_index: int) -> dict[str, Any]:
    latest: dict[str, dict[str, Any]] = {str(r.get("id")): r for r in read_jsonl(labels)}
    ok = [r for r in latest.values() if "error" not in r and isinstance(r.get("reward"), (int, float))]
    rewards = [float(r["reward"]) for r in ok]
    n = len(rewards)
    mean = sum(rewards) / n if n else float("nan")
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / n) if n else float("nan")
    dims: dict[str, float] = {}
    for d in DIMENSIONS:
        scores = [float(r["dimensions"][d]["score"]) for r in ok if isinstance(r.get("dimensions"), dict)
                  and d in r["dimensions"]]
        if scores:
            dims[d] = sum(scores) / len(scores)
    expected = [float(r["expected_reward"]) for r in ok if isinstance(r.get("expected_reward"), (int, float))]
    return {"round": round_index, "n": n, "errors": len(latest) - n, "mean_reward": mean, "std_reward": std,
            "mean_expected_reward": sum(expected) / len(expected) if expected else None, "dimensions": dims}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def plot_rewards(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    means = [r["mean_reward"] for r in rows]
    stds = [r["std_reward"] for r in rows]
    ax.errorbar(rounds, means, yerr=stds, marker="o", capsize=3, label="reward (mean ± std)", linewidth=2)
    for d in DIMENSIONS:
        ys = [r["dimensions"].get(d, float("nan")) for r in rows]
        if any(not math.isnan(y) for y in ys):
            ax.plot(rounds, ys, marker=".", linestyle="--", label=d)
    ax.set_xlabel("round (0 = base model)")
    ax.set_ylabel("reward")
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


@dataclass
class LoopResult:
    rounds: list[dict[str, Any]] = field(default_factory=list)
    lora: Path | None = None
    log: Path | None = None
    plot: Path | None = None


def run_loop(cfg: LoopConfig, labeler: Labeler, *, sampling: SamplingConfig | None = None,
             train: dict[str, Any] | None = None, pipe=None, progress: bool = True) -> LoopResult:
    """R updates, R+1 scored rounds. `train` holds TrainConfig fields (lora_rank, learning_rate, ...)."""
    from finetune.generate import generate_into, load_pipeline
    from finetune.lora import WEIGHT_NAME, load_lora_into
    from finetune.trainer import RewardWeightedTrainer
    from finetune.data import read_labels, read_real

    sampling = sampling or SamplingConfig()
    train = dict(train or {})
    train.setdefault("lora_rank", 8)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(cfg.prompts)
    # Check the training settings before hours of generation (TrainConfig validates on creation).
    TrainConfig(model=cfg.model, data="-", out="-", max_steps=cfg.steps_per_round, **train)
    pipe = pipe or load_pipeline(cfg.model)
    meta = {"model": str(Path(cfg.model).resolve())}
    rows: list[dict[str, Any]] = []
    prev_lora: Path | None = None
    lora_applied = False
    for r in range(cfg.rounds + 1):
        rd = out / f"round-{r:03d}"
        stats_path, lora_dir = rd / "stats.json", rd / "train" / "lora"
        lora_done = (lora_dir / WEIGHT_NAME).is_file()
        if stats_path.is_file() and (r == cfg.rounds or lora_done):  # finished in an earlier run
            rows.append(json.loads(stats_path.read_text()))
            prev_lora = lora_dir if lora_done else prev_lora
            continue
        if prev_lora is not None and not lora_applied:
            load_lora_into(pipe.transformer, prev_lora)  # resume: the model as the last finished round left it
        lora_applied = True
        t0 = time.perf_counter()
        pipe.transformer.eval()
        manifest = generate_into(pipe, prompts, rd, per_prompt=cfg.per_prompt, sampling=sampling,
                                 meta={**meta, "round": r}, progress=progress)
        labels = rd / "labels.jsonl"
        labeler(manifest, labels)
        stats = round_stats(labels, r)
        stats["time_generate_score_s"] = round(time.perf_counter() - t0, 2)
        if stats["n"] == 0:
            raise RewardServiceUnavailable(f"round {r}: no video got a reward (see {labels})")
        if r < cfg.rounds:
            t1 = time.perf_counter()
            tcfg = TrainConfig(model=cfg.model, data=str(labels), out=str(rd / "train"), resume="latest",
                               max_steps=cfg.steps_per_round, progress=progress,
                               **{"seed": sampling.seed + r, **train})
            trainer = RewardWeightedTrainer(tcfg, pipe=pipe)
            trainer.set_data(read_labels(labels, tcfg.reward, tcfg.dimension_weights, tcfg.dimension_score),
                             read_real(tcfg.real) if tcfg.real else None)
            result = trainer.train()
            stats["train_loss"] = (sum(result.losses) / len(result.losses)) if result.losses else None
            stats["time_train_s"] = round(time.perf_counter() - t1, 2)
            prev_lora = lora_dir
        _atomic_write(stats_path, json.dumps(stats, indent=1))
        rows.append(stats)
        _write_log(out, rows)
        log.info("round %d: mean reward %.4f over %d videos", r, stats["mean_reward"], stats["n"])
    _write_log(out, rows)
    return LoopResult(rows, prev_lora, out / "loop_log.jsonl", out / "rewards.png")


def _write_log(out: Path, rows: list[dict[str, Any]]) -> None:
    _atomic_write(out / "loop_log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    plot_rewards(rows, out / "rewards.png")


def run_loop_cli(cfg: LoopConfig, args: argparse.Namespace) -> int:
    if not cfg.server:
        raise ConfigError("--server URL is required (the scoring service)", param="server")
    servers = [s.strip() for s in cfg.server.split(",") if s.strip()]
    train = {k.removeprefix("train_"): v for k, v in vars(args).items() if k.startswith("train_") and v is not None}
    train["real"] = args.real
    train["real_weight"] = args.real_weight
    sampling = SamplingConfig(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                              seed=args.seed)
    labeler = ServiceLabeler(servers, api_key=cfg.api_key or os.environ.get("LIFT_API_KEY"),
                             attempts=cfg.score_retries, backoff_s=cfg.score_backoff_s)
    result = run_loop(cfg, labeler, sampling=sampling, train=train)
    for row in result.rounds:
        print(f"round {row['round']}: mean reward {row['mean_reward']:.4f} (n={row['n']}, errors={row['errors']})")
    print(f"log: {result.log}\nplot: {result.plot}\nlora: {result.lora}")
    return 0
