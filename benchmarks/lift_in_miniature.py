"""The whole LiFT method in miniature, on a CPU: rate generated videos, train the critic, serve it,
fine-tune the generator on its rewards, and judge the generator by the raters' own (hidden) rules.

1. generator: `build_tiny_generator` at miniature size, pre-trained on synthetic captioned clips
   (`finetune.miniature.pretrain`): a coloured scene with a gliding square, imperfect on purpose (wrong
   colour, a light fading during the clip, an underexposed picture), so its samples differ in what the rules judge;
2. ratings: `lift finetune generate` samples, rated by hidden rules (`finetune.miniature.rules`, one per
   LiFT dimension, Good/Normal/Bad + reason), written in LiFT's release format;
3. `lift critic train` on those ratings, `lift critic eval` on held-out rated samples (through the server);
4. `lift serve` of the trained critic on the vLLM engine, `lift label` of a fresh batch of samples;
5. `lift finetune loop` against the served critic (LiFT Eq. 3, rewards over HTTP), several rounds, for 3
   seeds; the flat-weight control runs the same loop (same critic, same samples at round 0) with every
   reward of a round replaced by its mean (`finetune.miniature.control`);
6. judge: held-out prompts (subjects never fine-tuned on), the same sampling seeds for every model, rated
   by the hidden rules (not the critic): rate of Good and mean rule score per dimension, before / after /
   control, for each seed.

    .venv/bin/python benchmarks/lift_in_miniature.py [--out DIR] [--quick]

Stages whose outputs exist are reused (delete OUT to start over). Writes OUT/results.md, results.json,
plots/ (rule score and reward per round, the critic's confusion matrix) and frames/ (before/after).
Every `lift serve` started here is stopped at the end, pass or fail. Last line:
`improved_dimensions=K/3 critic_accuracy=A` (K: dimensions whose held-out rule score is above the base
generator's and above the control's on every seed; A: the critic's mean held-out accuracy, %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
       "TOKENIZERS_PARALLELISM": "false",
       # the critic is float32; vLLM's "auto" would run it in bfloat16 on CPU
       "LIFT_DTYPE": "float32"}
os.environ.update(ENV)
from benchmarks.lift_servers import lift_serve  # noqa: E402

DIM_SHORT = {"semantic_consistency": "semantic", "motion_smoothness": "motion", "video_fidelity": "fidelity"}


@dataclass
class Settings:
    """Sizes of every stage; `--quick` shrinks them for the test suite."""

    vae_steps: int = 400
    vae_batch: int = 8
    vae_lr: float = 3e-3
    pretrain_clips: int = 2048
    transformer_steps: int = 1200
    transformer_batch: int = 32
    sample_steps: int = 10
    guidance: float = 3.0
    rate_per_prompt: int = 48  # rated videos per prompt for critic training (15 prompts)
    heldout_per_prompt: int = 4  # rated videos per prompt for critic eval
    fresh_per_prompt: int = 2  # fresh batch for `lift label`
    critic_steps: int = 3000
    critic_batch: int = 8
    critic_lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 3
    loop_per_prompt: int = 12  # over the 9 fine-tuning prompts
    steps_per_round: int = 120
    loop_batch: int = 8
    loop_lr: float = 2e-3
    loop_rank: int = 8
    judge_per_prompt: int = 30  # over the 6 held-out prompts (180 videos per model: sampling is cheap)
    # LiFT Eq. 3's lambda term: "real" videos (fresh clips from the pre-training data, fine-tuning subjects)
    # trained on beside the rewarded samples, in both arms; it keeps self-training from drifting
    real_clips: int = 512
    real_weight: float = 1.0
    real_batch: int = 8


QUICK = Settings(vae_steps=6, vae_batch=4, pretrain_clips=64, transformer_steps=30, transformer_batch=16,
                 sample_steps=2, guidance=3.0,
                 rate_per_prompt=1, heldout_per_prompt=1, fresh_per_prompt=1, critic_steps=4, critic_batch=4,
                 seeds=(0,), rounds=1, loop_per_prompt=1, steps_per_round=2, loop_batch=4, loop_rank=4,
                 judge_per_prompt=1, real_clips=8, real_batch=2)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def lift(*args: str) -> None:
    """A `lift` command through its Python entry point, as a user's script would call it."""
    from clients.cli import main

    t = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # the commands' own output is progress here; stdout is the tables
        code = main(list(args))
    say(f"lift {' '.join(args[:2])}: exit {code} in {time.time() - t:.0f}s")
    if code != 0:
        raise SystemExit(f"lift {' '.join(args)} exited {code}")


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(p + "\n" for p in prompts))
    return path


def generate(model: Path, prompts: Path, out: Path, *, per_prompt: int, seed: int, s: Settings,
             lora: Path | None = None) -> Path:
    manifest = out / "manifest.jsonl"
    expected = per_prompt * len([x for x in prompts.read_text().splitlines() if x.strip()])
    if manifest.is_file() and len(manifest.read_text().splitlines()) == expected:
        return manifest
    lift("finetune", "generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
         "--per-prompt", str(per_prompt), "--steps", str(s.sample_steps), "--guidance-scale", str(s.guidance),
         "--seed", str(seed), "--batch-size", "8", *(["--lora", str(lora)] if lora else []))
    return manifest


def write_real_clips(out: Path, n: int, seed: int) -> Path:
    """n fresh pre-training clips (fine-tuning subjects) as mp4 + JSONL {"video", "prompt"}: the loop's real
    data. Written once; reused when complete."""
    import numpy as np

    from finetune.critic.synthetic import write_mp4
    from finetune.miniature.clips import TRAIN_SUBJECTS, batch

    manifest = out / "real.jsonl"
    if manifest.is_file() and len(manifest.read_text().splitlines()) == n:
        return manifest
    (out / "videos").mkdir(parents=True, exist_ok=True)
    specs, frames = batch(np.random.default_rng(seed), n, TRAIN_SUBJECTS)
    rows = [json.dumps({"video": str(write_mp4(out / "videos" / f"real{i:05d}.mp4", f)), "prompt": spec.caption})
            for i, (spec, f) in enumerate(zip(specs, frames))]
    manifest.write_text("".join(r + "\n" for r in rows))
    return manifest


def rate(manifest: Path, ratings_path: Path, *, training: bool = False):
    """Rate a manifest's videos with the hidden rules and write them in LiFT's format. A training set also
    gets every video rated against a counterfactual caption (`rules.counterfactual`) and each dimension's
    rarer labels oversampled (`rules.balanced`). Returns the ratings of the videos' own captions."""
    from finetune.miniature.rules import counterfactual, rate_manifest, write_ratings

    ratings = rate_manifest(manifest)
    written = ratings + [counterfactual(r) for r in ratings] if training else ratings
    write_ratings(written, ratings_path, relative_to=manifest.parent / "videos", balance=training)
    return ratings


def summary_table(rows: dict[str, dict[str, Any]], title: str) -> list[str]:
    """rows: name -> rules.summarize() output."""
    out = [f"| {title} | " + " | ".join(f"{DIM_SHORT[d]} Good / Normal / Bad" for d in DIM_SHORT) + " |",
           "|---|" + "---:|" * len(DIM_SHORT)]
    for name, summ in rows.items():
        cells = [" / ".join(str(summ[d].counts[k]) for k in ("Good", "Normal", "Bad")) for d in DIM_SHORT]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def rule_scores_per_round(loop_dir: Path, rounds: int) -> list[dict[str, float]]:
    from finetune.miniature.rules import rate_manifest, summarize

    out = []
    for r in range(rounds + 1):
        summ = summarize(rate_manifest(loop_dir / f"round-{r:03d}" / "manifest.jsonl"))
        out.append({d: summ[d].mean_score for d in DIM_SHORT})
    return out


def reward_spread_per_round(loop_dir: Path, rounds: int) -> list[float]:
    """The sd of the critic's reward over each round's samples (before the control flattens it): a critic
    that gives every sample the same reward gives LiFT nothing to weight by."""
    from finetune.data import read_jsonl

    out = []
    for r in range(rounds + 1):
        rows = [x for x in read_jsonl(loop_dir / f"round-{r:03d}" / "labels.jsonl") if x.get("status") == "ok"]
        vals = [float(x.get("critic_reward", x.get("reward"))) for x in rows]
        out.append(statistics.pstdev(vals) if len(vals) > 1 else 0.0)
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.mean(xs), statistics.pstdev(xs) if len(xs) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/lift_in_miniature"))
    ap.add_argument("--quick", action="store_true", help="a few steps and videos per stage (the test suite's chain)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--critic-steps", type=int, default=None)
    ap.add_argument("--transformer-steps", type=int, default=None)
    ap.add_argument("--steps-per-round", type=int, default=None, help="LoRA steps per fine-tuning round")
    ap.add_argument("--loop-per-prompt", type=int, default=None, help="videos per fine-tuning prompt and round")
    ap.add_argument("--loop-lr", type=float, default=None, help="LoRA learning rate of the fine-tuning loop")
    ap.add_argument("--real-weight", type=float, default=None,
                    help="lambda of LiFT Eq. 3's real-data term in both arms (default 1; 0 = none)")
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance when sampling (default 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in this process (default 1: `lift serve` holds the other core of a 2-core "
                         "CPU, and on a busy CPU two threads ran the VAE 20x slower than one)")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    for name in ("rounds", "critic_steps", "transformer_steps", "guidance", "steps_per_round", "loop_lr",
                 "loop_per_prompt", "real_weight"):
        if getattr(args, name) is not None:
            s = replace(s, **{name: getattr(args, name)})
    if args.seeds:
        s = replace(s, seeds=tuple(args.seeds))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from finetune.miniature.clips import HELDOUT_SUBJECTS, TRAIN_SUBJECTS, prompts
    from finetune.miniature.pretrain import PretrainConfig, pretrain_generator
    from finetune.miniature.rules import mean_measurements, rate_manifest, summarize

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    t_start = time.time()
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        say(f"stage {name}: {timings[name]:.0f}s (total {time.time() - t_start:.0f}s)")

    # ---- 1. the generator ---------------------------------------------------------------------------
    t = time.time()
    pre = pretrain_generator(out / "generator", PretrainConfig(
        vae_steps=s.vae_steps, vae_batch=s.vae_batch, vae_lr=s.vae_lr, clips=s.pretrain_clips,
        transformer_steps=s.transformer_steps, transformer_batch=s.transformer_batch), progress=say)
    model = pre.model
    tick("1 pretrain generator", t)
    all_prompts = write_prompts(out / "prompts_all.txt", prompts(TRAIN_SUBJECTS + HELDOUT_SUBJECTS))
    train_prompts = write_prompts(out / "prompts_finetune.txt", prompts(TRAIN_SUBJECTS))
    heldout_prompts = write_prompts(out / "prompts_heldout.txt", prompts(HELDOUT_SUBJECTS))

    # ---- 2. "human" ratings of its samples ----------------------------------------------------------
    t = time.time()
    rated = generate(model, all_prompts, out / "rated_train", per_prompt=s.rate_per_prompt, seed=100_000, s=s)
    heldout = generate(model, all_prompts, out / "rated_heldout", per_prompt=s.heldout_per_prompt, seed=200_000, s=s)
    train_ratings = rate(rated, out / "rated_train" / "ratings.json", training=True)
    heldout_ratings = rate(heldout, out / "rated_heldout" / "ratings.json")
    tick("2 generate + rate", t)

    # ---- 3. critic training ---------------------------------------------------------------------------
    from finetune.critic.synthetic import make_learnable_base

    t = time.time()
    base_critic = out / "critic_base"
    if not (base_critic / "model.safetensors").is_file():
        make_learnable_base(base_critic, seed=0)
    critic = out / "critic"
    if not (critic / "lift_training.json").is_file():
        lift("critic", "train", "--data", str(out / "rated_train" / "ratings.json"),
             "--videos", str(out / "rated_train" / "videos"), "--base", str(base_critic), "--out", str(critic),
             "--max-steps", str(s.critic_steps), "--batch-size", str(s.critic_batch), "--lr", str(s.critic_lr),
             "--lora-rank", "16", "--lora-alpha", "32", "--lora-dropout", "0", "--warmup-ratio", "0.05",
             "--log-every", "100", "--save-steps", "0")
    tick("3 critic train", t)

    # ---- 4-5. serve the critic; eval, label, fine-tune against it ---------------------------------
    from finetune.config import LoopConfig, SamplingConfig
    from finetune.loop import ServiceLabeler, run_loop
    from finetune.miniature.control import FlatRewardLabeler

    t = time.time()
    real = write_real_clips(out / "real", s.real_clips, seed=400_000) if s.real_weight > 0 else None
    tick("4a real clips (Eq. 3's lambda term)", t)
    loops: dict[str, Path] = {}
    t = time.time()
    with lift_serve(critic, engine="vllm", log_dir=out, env=ENV) as (url,):
        tick("4 lift serve ready", t)
        t = time.time()
        if not (out / "critic_eval" / "report.json").is_file():
            lift("critic", "eval", "--data", str(out / "rated_heldout" / "ratings.json"),
                 "--videos", str(out / "rated_heldout" / "videos"), "--server", url,
                 "--name", "trained critic, lift serve (vLLM)", "--max-reason-tokens", "8",
                 "--out", str(out / "critic_eval"))
        tick("3b critic eval (served)", t)
        t = time.time()
        fresh = generate(model, all_prompts, out / "fresh", per_prompt=s.fresh_per_prompt, seed=300_000, s=s)
        fresh_labels = out / "fresh" / "labels.jsonl"
        lift("label", str(fresh), "--out", str(fresh_labels), "--server", url, "--no-progress",
             "--max-reason-tokens", "8", "--summary-json", str(out / "fresh" / "summary.json"))
        tick("4b lift label", t)
        for seed in s.seeds:
            t = time.time()
            run = out / "loops" / f"lift-s{seed}"
            loop_args = ["--model", str(model), "--prompts", str(train_prompts), "--out", str(run),
                         "--rounds", str(s.rounds), "--per-prompt", str(s.loop_per_prompt),
                         "--steps-per-round", str(s.steps_per_round), "--steps", str(s.sample_steps),
                         "--guidance-scale", str(s.guidance), "--seed", str(1000 * seed)]
            train_flags = ["--train-lora-rank", str(s.loop_rank), "--train-learning-rate", str(s.loop_lr),
                           "--train-batch-size", str(s.loop_batch), "--train-max-grad-norm", "1.0"]
            if real is not None:
                train_flags += ["--real", str(real), "--real-weight", str(s.real_weight),
                                "--train-real-batch-size", str(s.real_batch)]
            if not (run / "loop_log.jsonl").is_file() or len((run / "loop_log.jsonl").read_text().splitlines()) \
                    < s.rounds + 1:
                lift("finetune", "loop", *loop_args, "--server", url, *train_flags)
            loops[f"lift-s{seed}"] = run
            tick(f"5 loop LiFT seed {seed}", t)
            t = time.time()
            ctrl = out / "loops" / f"flat-s{seed}"
            cfg = LoopConfig(model=str(model), prompts=str(train_prompts), out=str(ctrl), rounds=s.rounds,
                             per_prompt=s.loop_per_prompt, steps_per_round=s.steps_per_round, server=url)
            run_loop(cfg, FlatRewardLabeler(ServiceLabeler([url], progress=False)),
                     sampling=SamplingConfig(num_inference_steps=s.sample_steps, guidance_scale=s.guidance,
                                             seed=1000 * seed),
                     train={"lora_rank": s.loop_rank, "learning_rate": s.loop_lr, "batch_size": s.loop_batch,
                            "max_grad_norm": 1.0, "real": str(real) if real else None,
                            "real_weight": s.real_weight, "real_batch_size": s.real_batch}, progress=False)
            loops[f"flat-s{seed}"] = ctrl
            tick(f"5 loop flat control seed {seed}", t)
    say("lift serve stopped")

    # ---- 6. judge by the hidden rules on held-out prompts ---------------------------------------
    t = time.time()
    judged: dict[str, Any] = {}
    judge_dirs: dict[str, Path] = {"base": out / "judge" / "base"}
    generate(model, heldout_prompts, judge_dirs["base"], per_prompt=s.judge_per_prompt, seed=900_000, s=s)
    for name, run in loops.items():
        lora = run / f"round-{s.rounds - 1:03d}" / "train" / "lora"
        judge_dirs[name] = out / "judge" / name
        generate(model, heldout_prompts, judge_dirs[name], per_prompt=s.judge_per_prompt, seed=900_000, s=s,
                 lora=lora)
    for name, d in judge_dirs.items():
        ratings = rate_manifest(d / "manifest.jsonl")
        judged[name] = {"summary": summarize(ratings), "measurements": mean_measurements(ratings)}
    tick("6 judge", t)

    # ---- results ---------------------------------------------------------------------------------------
    return report(out, s, pre, train_ratings, heldout_ratings, loops, judged, judge_dirs, timings, t_start)


def report(out: Path, s: Settings, pre, train_ratings, heldout_ratings, loops: dict[str, Path],
           judged: dict[str, Any], judge_dirs: dict[str, Path], timings: dict[str, float], t_start: float) -> int:
    from finetune.critic.metrics import DIMENSION_TITLES
    from finetune.miniature.rules import summarize
    from finetune.miniature.plots import plot_frames, plot_per_round

    dims = list(DIM_SHORT)
    lines: list[str] = ["# LiFT in miniature (CPU)", ""]
    base_ratings_summary = {"critic training set": summarize(train_ratings), "critic held-out set": summarize(heldout_ratings)}
    lines += ["## 1-2. The pre-trained generator's samples, rated by the hidden rules", "",
              f"pre-training: VAE {s.vae_steps} steps (final loss {statistics.mean(pre.vae_losses[-20:]):.4f}), "
              f"transformer {s.transformer_steps} steps (final loss {statistics.mean(pre.transformer_losses[-50:]):.4f}), "
              f"{pre.seconds:.0f}s; sampling {s.sample_steps} steps, guidance {s.guidance:g}", "",
              "VAE check, rule labels of its reconstructions of fresh clips = the clips' own: "
              + ", ".join(f"{DIM_SHORT[d]} {100 * v:.0f} %" for d, v in pre.reconstruction_agreement.items()), "",
              *summary_table(base_ratings_summary, "rated set"), ""]

    # critic
    report_json = json.loads((out / "critic_eval" / "report.json").read_text())
    heldout_summary = base_ratings_summary["critic held-out set"]
    lines += ["## 3. Critic (trained on the rated samples) vs the hidden rules, held-out samples", "",
              "| | " + " | ".join(DIMENSION_TITLES[d] for d in dims) + " | mean |", "|---|" + "---:|" * 4]
    acc = [100 * report_json["dimensions"][d]["accuracy"] for d in dims]
    majority = [100 * max(heldout_summary[d].counts.values()) / max(1, heldout_summary[d].n) for d in dims]
    lines.append("| accuracy, `lift serve` (vLLM) over HTTP | " + " | ".join(f"{a:.1f}" for a in acc)
                 + f" | {statistics.mean(acc):.1f} |")
    lines.append("| chance: always the most frequent label | " + " | ".join(f"{m:.1f}" for m in majority)
                 + f" | {statistics.mean(majority):.1f} |")
    aucs = [report_json["dimensions"][d].get("auc") for d in dims]
    lines.append("| AUC of expected_score vs the rule's label order (0.5 = no ranking) | "
                 + " | ".join("-" if a is None else f"{a:.3f}" for a in aucs) + " | |")
    critic_accuracy = 100 * report_json["mean_accuracy"]
    lines.append("")
    if (out / "critic_eval" / "confusion.png").is_file():
        shutil.copy(out / "critic_eval" / "confusion.png", out / "plots" / "critic_confusion.png")

    # lift label on the fresh batch: does the served critic agree with the rules there too?
    from finetune.data import read_jsonl
    from finetune.miniature.rules import rate_video

    fresh_rows = [r for r in read_jsonl(out / "fresh" / "labels.jsonl") if r.get("status") == "ok"]
    agree = {d: 0 for d in dims}
    for r in fresh_rows:
        rating = rate_video(r["video"], r["prompt"])
        for d in dims:
            agree[d] += int(r["dimensions"][d]["label"] == rating.dimensions[d].label)
    n_fresh = max(1, len(fresh_rows))
    lines += ["## 4. `lift label` of a fresh batch through the served critic", "",
              f"{len(fresh_rows)} videos labelled, mean reward {statistics.mean(r['reward'] for r in fresh_rows):.3f}; "
              "critic label = rule label: " + ", ".join(f"{DIM_SHORT[d]} {100 * agree[d] / n_fresh:.0f} %" for d in dims), ""]

    # loops
    logs = {name: [json.loads(x) for x in (run / "loop_log.jsonl").read_text().splitlines() if x.strip()]
            for name, run in loops.items()}
    rule_rounds = {name: rule_scores_per_round(run, s.rounds) for name, run in loops.items()}
    spreads = {name: reward_spread_per_round(run, s.rounds) for name, run in loops.items()}
    for name, sp in spreads.items():
        say(f"{name}: critic reward sd per round " + " ".join(f"{x:.3f}" for x in sp))
    lines += ["## 5. `lift finetune loop` against the served critic (fine-tuning prompts)", "",
              f"{s.rounds} rounds x {s.loop_per_prompt * 9} videos, {s.steps_per_round} LoRA steps per round "
              f"(r={s.loop_rank}, lr {s.loop_lr:g}, batch {s.loop_batch}); real-data term (Eq. 3's lambda) "
              + (f"{s.real_weight:g} on {s.real_clips} pre-training clips, {s.real_batch} a step"
                 if s.real_weight > 0 else "off")
              + "; flat = every reward of a round set to its mean (same critic, same seeds, same real data)", "",
              "| run | critic reward per round (mean) | its sd over the round's samples | rule score per round "
              "(semantic / motion / fidelity) |", "|---|---|---|---|"]
    for name in logs:
        rew = " → ".join(f"{r['mean_reward']:.3f}" for r in logs[name])
        sd = " → ".join(f"{x:.3f}" for x in spreads[name])
        rules_txt = " → ".join("/".join(f"{x[d]:.2f}" for d in dims) for x in rule_rounds[name])
        lines.append(f"| {name} | {rew} | {sd} | {rules_txt} |")
    lines.append("")
    plot_per_round(logs, rule_rounds, out / "plots")

    # judge
    base = judged["base"]["summary"]
    lines += ["## 6. Held-out prompts judged by the hidden rules (mean rule score; Good rate in brackets)", "",
              f"{len(judge_dirs)} models x {s.judge_per_prompt * 6} videos (6 held-out prompts, the same seeds for "
              "every model)", "",
              "| dimension | before | LiFT (mean ± sd over seeds) | flat control (mean ± sd) | per seed: LiFT / flat | improved |",
              "|---|---:|---:|---:|---|---|"]
    improved = 0
    dim_results = {}
    for d in dims:
        lift_scores = [judged[f"lift-s{k}"]["summary"][d].mean_score for k in s.seeds]
        flat_scores = [judged[f"flat-s{k}"]["summary"][d].mean_score for k in s.seeds]
        lift_good = [judged[f"lift-s{k}"]["summary"][d].good_rate for k in s.seeds]
        flat_good = [judged[f"flat-s{k}"]["summary"][d].good_rate for k in s.seeds]
        b = base[d].mean_score
        ok = all(ls > b and ls > fs for ls, fs in zip(lift_scores, flat_scores))
        improved += ok
        lm, lsd = mean_std(lift_scores)
        fm, fsd = mean_std(flat_scores)
        per_seed = ", ".join(f"{a:.3f} / {c:.3f}" for a, c in zip(lift_scores, flat_scores))
        lines.append(f"| {DIMENSION_TITLES[d]} | {b:.3f} ({100 * base[d].good_rate:.0f} %) | {lm:.3f} ± {lsd:.3f} "
                     f"({100 * statistics.mean(lift_good):.0f} %) | {fm:.3f} ± {fsd:.3f} "
                     f"({100 * statistics.mean(flat_good):.0f} %) | {per_seed} | {'yes' if ok else 'no'} |")
        dim_results[d] = {"before": b, "lift": lift_scores, "flat": flat_scores, "lift_good": lift_good,
                          "flat_good": flat_good, "before_good": base[d].good_rate, "improved": ok,
                          "worse_than_control_beyond_spread": lm < fm - max(fsd, lsd)}
    meas = ["| model | named-colour share | light drift | exposure |", "|---|---:|---:|---:|"]
    for name, j in judged.items():
        m = j["measurements"]
        meas.append(f"| {name} | {m['named_colour_share']:.3f} | {m['light_drift']:.3f} | {m['exposure']:.2f} |")
    lines += ["", "Raw measurements behind the rules (held-out prompts):", "", *meas, ""]
    plot_frames(judge_dirs, out / "frames", s.seeds[0])
    total = time.time() - t_start
    lines += ["timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {total:.0f}", ""]
    last = f"improved_dimensions={improved}/3 critic_accuracy={critic_accuracy:.1f}"
    lines.append(last)
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "settings": s.__dict__, "critic_report": report_json, "dimensions": dim_results,
        "judged": {k: {"summary": {d: v.to_json() for d, v in j["summary"].items()},
                       "measurements": dict(j["measurements"])} for k, j in judged.items()},
        "loops": logs, "rule_rounds": rule_rounds, "reward_sd_per_round": spreads, "timings": timings, "total_s": total,
        "improved_dimensions": improved, "critic_accuracy": critic_accuracy}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
