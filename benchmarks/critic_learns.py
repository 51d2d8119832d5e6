"""Does critic training teach the critic? A CPU-sized check, end to end through the real pieces.

1. rated videos made by learnable rules (`finetune.critic.synthetic`): semantic consistency Good when the
   caption names the scene's dominant colour; motion Bad for frame-jittered clips; fidelity Bad for
   noise-corrupted ones (each dimension half Good, half Bad: chance = 50 %);
2. `lift critic train` on the tiny Qwen2-VL critic (`make_learnable_base`);
3. `lift critic eval` on held-out videos: the untrained base and the trained critic on the transformers
   engine, and the trained critic served by `lift serve --engine vllm`, reached over HTTP with
   RewardClient (`--server`): the served critic must match the transformers engine.

    .venv/bin/python benchmarks/critic_learns.py [--out DIR] [--train-videos 384] [--test-videos 48] \
        [--steps 2400] [--lr 1e-3] [--recipes lift[,unfrozen]]

Stages whose outputs exist are reused (delete OUT to start over). Writes OUT/results.md and results.json.

Measured on the 2-core CPU (Nov 2026, quiet machine): 384 training videos (1152 rated examples), 48 held out,
LiFT's recipe (LoRA r=16 alpha=32 on the language model, vision tower + projector frozen), batch 8, lr 1e-3,
2400 steps (338 s). Held-out accuracy, chance 50 %:
| critic | semantic | motion | fidelity |
|---|---:|---:|---:|
| base (untrained) | 50.0 | 50.0 | 62.5 |
| trained, transformers engine | 100.0 | 93.8 | 100.0 |
| trained, `lift serve` on vLLM over HTTP | 100.0 | 93.8 | 100.0 |
AUC of expected_score vs the labels 1.000 / 0.981 / 1.000; vLLM vs transformers: 144/144 identical labels, max
|expected_score difference| 8e-06. Whole run about 8 minutes.
What did not work, kept for whoever tunes this next: lr 3e-3 is unstable here (the label-token loss sits at
chance for thousands of steps; only fidelity is learnt); unfreezing the vision tower (--vision-lr 3e-4) learns
semantics and motion but loses fidelity (the trained tower becomes blind to pixel noise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false",
       # the checkpoint is float32; vLLM's "auto" would run it in bfloat16 on CPU, and parity is about the
       # engines, not about rounding
       "LIFT_DTYPE": "float32"}
os.environ.update(ENV)
from benchmarks.lift_servers import lift_serve  # noqa: E402


def lift(*args: str) -> None:
    from clients.cli import main

    t = time.time()
    code = main(list(args))
    print(f"[lift {' '.join(args[:2])}] exit {code} in {time.time() - t:.0f}s", flush=True)
    if code != 0:
        raise SystemExit(code)


RECIPES: dict[str, tuple[str, list[str]]] = {
    # name: (row title, extra `lift critic train` flags)
    "lift": ("LoRA on the LM, vision frozen (LiFT's recipe)", []),
    "unfrozen": ("LoRA on the LM + vision tower and projector", ["--train-vision-tower", "--train-projector"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/critic_learns"))
    ap.add_argument("--train-videos", type=int, default=384)
    ap.add_argument("--test-videos", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vision-lr", type=float, default=3e-4, help="for the unfrozen recipe")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--recipes", default="lift",
                    help=f"comma-separated, from {', '.join(RECIPES)}; the last one is also served on vLLM")
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes or any(r not in RECIPES for r in recipes):
        ap.error(f"--recipes: choose from {', '.join(RECIPES)}")

    from finetune.critic.synthetic import make_learnable_base, make_rated_dataset

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = out / "base"
    if not (base / "model.safetensors").is_file():
        make_learnable_base(base, seed=0)
    train = out / "train"
    test = out / "heldout"
    if not (train / "rated.json").is_file():
        make_rated_dataset(train, args.train_videos, seed=1, prefix="train")
    if not (test / "rated.jsonl").is_file():
        make_rated_dataset(test, args.test_videos, seed=2, prefix="test")
    print(f"data ready: {args.train_videos} training videos, {args.test_videos} held-out ({time.time() - t0:.0f}s)")

    timings: dict[str, float] = {}
    common = ["--data", str(test / "rated.jsonl"), "--videos", str(test / "videos"), "--max-reason-tokens", "8"]
    evals = [("base (untrained)", base, out / "eval_base")]
    for recipe in recipes:
        title, flags = RECIPES[recipe]
        critic = out / f"critic_{recipe}"
        if recipe == "unfrozen":
            flags = [*flags, "--vision-lr", str(args.vision_lr)]
        if not (critic / "lift_training.json").is_file():
            t = time.time()
            lift("critic", "train", "--data", str(train / "rated.json"), "--videos", str(train / "videos"),
                 "--base", str(base), "--out", str(critic), "--max-steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lora-rank", str(args.lora_rank),
                 "--lora-alpha", str(2 * args.lora_rank), "--lora-dropout", "0", "--warmup-ratio", "0.05",
                 "--log-every", "100", "--save-steps", "500", *flags)
            timings[f"train {recipe} s"] = time.time() - t
        evals.append((f"{title}, transformers", critic, out / f"eval_{recipe}_tf"))
    for name, model, folder in evals:
        if not (folder / "report.json").is_file():
            t = time.time()
            lift("critic", "eval", *common, "--model", str(model), "--engine", "transformers", "--name", name,
                 "--out", str(folder))
            timings[f"eval {folder.name} s"] = time.time() - t
    served_critic = out / f"critic_{recipes[-1]}"
    served_folder = out / f"eval_{recipes[-1]}_vllm_served"
    if not args.skip_vllm and not (served_folder / "report.json").is_file():
        t = time.time()
        with lift_serve(served_critic, engine="vllm", log_dir=out, env=ENV) as (url,):
            timings["vllm serve start s"] = time.time() - t
            t = time.time()
            lift("critic", "eval", *common, "--server", url,
                 "--name", f"{RECIPES[recipes[-1]][0]}, `lift serve` on vLLM", "--out", str(served_folder))
            timings["eval served vLLM s"] = time.time() - t

    # ---- results ------------------------------------------------------------------------------
    from finetune.critic.metrics import DIMENSION_TITLES
    from service.rubric import DIMENSION_NAMES

    reports = {}
    for folder in [f for _, _, f in evals] + [served_folder]:
        if (folder / "report.json").is_file():
            reports[folder.name] = json.loads((folder / "report.json").read_text())
    lines = ["| Critic | " + " | ".join(DIMENSION_TITLES[d] for d in DIMENSION_NAMES) + " | Average |",
             "|---|" + "---:|" * (len(DIMENSION_NAMES) + 1)]
    for r in reports.values():
        cells = [f"{100 * r['dimensions'][d]['accuracy']:.1f}" for d in DIMENSION_NAMES]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {100 * r['mean_accuracy']:.1f} |")
    agree = ["| Critic | " + " | ".join(f"{DIMENSION_TITLES[d]} Spearman / AUC" for d in DIMENSION_NAMES) + " |",
             "|---|" + "---:|" * len(DIMENSION_NAMES)]
    for r in reports.values():
        cells = []
        for d in DIMENSION_NAMES:
            x = r["dimensions"][d]
            cells.append(" / ".join("-" if x[k] is None else f"{x[k]:.3f}" for k in ("spearman", "auc")))
        agree.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    parity = ""
    tf_folder = out / f"eval_{recipes[-1]}_tf"
    if tf_folder.name in reports and served_folder.name in reports:
        a = [json.loads(s) for s in (tf_folder / "judgements.jsonl").read_text().splitlines()]
        b = [json.loads(s) for s in (served_folder / "judgements.jsonl").read_text().splitlines()]
        same = sum(x["predicted"] == y["predicted"] for x, y in zip(a, b, strict=True))
        diff = max(abs(x["expected_score"] - y["expected_score"]) for x, y in zip(a, b, strict=True))
        parity = (f"transformers engine vs `lift serve` on vLLM, same {len(a)} held-out judgements: "
                  f"{same}/{len(a)} identical labels, max |expected_score difference| {diff:.2e}")
    training = {}
    train_lines = []
    for recipe in recipes:
        record = json.loads((out / f"critic_{recipe}" / "lift_training.json").read_text())
        training[recipe] = record
        last = record["losses"][-50:]
        train_lines.append(f"- {RECIPES[recipe][0]}: {record['steps']} steps of batch {args.batch_size}, "
                           f"{record['trainable_parameters']:,} trained parameters, final loss "
                           f"{sum(last) / len(last):.4f}, {record['seconds']:.0f}s")
    text = "\n".join([
        "# Critic training learns (tiny Qwen2-VL critic, CPU)", "",
        f"training: {training[recipes[-1]]['examples']} rated examples ({args.train_videos} videos x 3 dimensions),"
        f" LoRA r={args.lora_rank} alpha={2 * args.lora_rank} at lr {args.lr:g}"
        + (f"; vision tower and projector at lr {args.vision_lr:g}" if "unfrozen" in recipes else ""),
        *train_lines,
        f"held out: {args.test_videos} videos x 3 dimensions; chance = 50.0 per dimension", "",
        "## Accuracy on held-out videos (%)", "", *lines, "",
        "## Agreement of expected_score with the labels", "", *agree, "", parity, "",
        "timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""])
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"reports": reports, "parity": parity, "timings": timings,
                                                  "training": training}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
