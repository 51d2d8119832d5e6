"""Does reward-weighted fine-tuning learn? The online loop with a reward that is a known function of the video.

Reward: mean brightness of the mp4 (decoded from disk, as the service would see it), squashed with a
sigmoid around the base model's median brightness so it spans (0, 1) like LiFT's rewards:
    r(video) = sigmoid((brightness(video) - b0) / tau),  b0 = median brightness of round 0 (fixed after).
The loop runs `rounds` updates (LoRA, Eq. 3 with the raw reward as weight) on the tiny random CogVideoX,
for several seeds (sampling noise, LoRA init, data order, diffusion noise). Every round re-samples the
same seeds, so a change in mean reward is the model's doing. Table: mean reward per round and seed;
last line: `rise=<mean over seeds of (last round - round 0)>` and how many seeds rose.

    .venv/bin/python benchmarks/finetune_learns.py [--seeds 0 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["a red car at night", "a monkey dance in the sun", "a bird flies over the river", "a dog runs in the city"]


class Brightness:
    """The known reward: a sigmoid of mean pixel brightness, centred on the first batch it sees."""

    def __init__(self, tau: float) -> None:
        self.tau, self.center = tau, None
        self.__name__ = "brightness"

    def __call__(self, videos, prompts):
        from finetune.video_io import read_frames

        b = [float(read_frames(v).mean() / 255.0) for v in videos]
        if self.center is None:
            self.center = statistics.median(b)
        return [1.0 / (1.0 + math.exp(-(x - self.center) / self.tau)) for x in b]


def _mean_reward(scorer: Brightness, manifest: Path) -> float:
    import json

    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    values = scorer([r["video"] for r in rows], [r["prompt"] for r in rows])
    return sum(values) / len(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--steps-per-round", type=int, default=20)
    ap.add_argument("--learning-rate", type=float, default=3e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--inference-steps", type=int, default=4)
    ap.add_argument("--guidance-scale", type=float, default=1.0)
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--control", action="store_true",
                    help="Also run each seed with a constant reward (plain SFT on own samples, same mean weight): "
                         "the difference isolates what the reward weighting does from the drift of self-training.")
    args = ap.parse_args()

    import torch

    from finetune.config import LoopConfig, SamplingConfig
    from finetune.loop import FunctionLabeler, run_loop
    from finetune.tiny_generator import build_tiny_generator

    torch.set_num_threads(args.threads)
    table: dict[int, list[float]] = {}
    control: dict[int, list[float]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        model = build_tiny_generator(Path(td) / "gen")
        (Path(td) / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        for seed in args.seeds:
            cfg = LoopConfig(model=str(model), prompts=str(Path(td) / "prompts.txt"), out=str(Path(td) / f"s{seed}"),
                             rounds=args.rounds, per_prompt=args.per_prompt, steps_per_round=args.steps_per_round)
            sampling = SamplingConfig(num_inference_steps=args.inference_steps, guidance_scale=args.guidance_scale,
                                      seed=seed)
            train = {"lora_rank": args.lora_rank, "learning_rate": args.learning_rate, "batch_size": 4}
            scorer = Brightness(args.tau)
            result = run_loop(cfg, FunctionLabeler(scorer), sampling=sampling, train=train, progress=False)
            table[seed] = [r["mean_reward"] for r in result.rounds]
            print(f"seed {seed}: {[round(x, 3) for x in table[seed]]}", file=sys.stderr)
            if args.control:
                # Same loop, every sample weighted 0.5 (the reward's centre); measured with the same reward.
                ccfg = LoopConfig(**{**cfg.__dict__, "out": str(Path(td) / f"c{seed}")})
                flat = lambda videos, prompts: [0.5] * len(videos)  # noqa: E731
                res_c = run_loop(ccfg, FunctionLabeler(flat), sampling=sampling, train=train, progress=False)
                manifests = [Path(ccfg.out) / f"round-{r:03d}" / "manifest.jsonl" for r in range(args.rounds + 1)]
                control[seed] = [_mean_reward(scorer, m) for m in manifests]
                assert len(res_c.rounds) == args.rounds + 1
                print(f"control {seed}: {[round(x, 3) for x in control[seed]]}", file=sys.stderr)

    n = len(PROMPTS) * args.per_prompt
    print(f"tiny CogVideoX, {n} videos/round, {args.steps_per_round} LoRA steps/round (r={args.lora_rank}, "
          f"lr={args.learning_rate}), sampling {args.inference_steps} steps, guidance {args.guidance_scale}; "
          f"{time.perf_counter() - t0:.0f}s")
    print("run            seed  " + "  ".join(f"round {r:<3}" for r in range(args.rounds + 1)) + "  last-0")
    rises, gaps = [], []
    for seed, row in table.items():
        rises.append(row[-1] - row[0])
        print(f"{'LiFT weights':<14} {seed:<5} " + "  ".join(f"{x:>9.3f}" for x in row) + f"  {rises[-1]:+.3f}")
        if seed in control:
            c = control[seed]
            gaps.append(row[-1] - c[-1])
            print(f"{'flat weights':<14} {seed:<5} " + "  ".join(f"{x:>9.3f}" for x in c) + f"  {c[-1] - c[0]:+.3f}")
    if gaps:
        print(f"lift_minus_flat_last_round={statistics.mean(gaps):+.4f} seeds_above_control={sum(g > 0 for g in gaps)}/{len(gaps)}")
    print(f"rise={statistics.mean(rises):+.4f} seeds_rising={sum(r > 0 for r in rises)}/{len(rises)}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
