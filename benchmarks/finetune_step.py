"""Step time: LiFT's reward-weighted step vs a plain supervised step on the same batch.

Both run the trainer's own `micro_step` (forward, backward, clipping, AdamW, lr schedule) on the same
latents, text embeddings, noise and timesteps; the only difference is the per-sample weights of Eq. 3.
Steps alternate (W P P W W P ...) so drift in machine load hits both alike; the table reports medians of
wall time and of this process's CPU time. On a shared machine (other jobs on the same cores) wall time
swings by +-10 % from step to step; with one torch thread, CPU time is the stable measure, and the last
line uses it: `overhead=<median CPU weighted / median CPU plain - 1>`.

    .venv/bin/python benchmarks/finetune_step.py [--reps 60] [--batch 4] [--layers 2] [--hw 64] [--frames 13]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=60, help="Timed steps of each kind.")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2, help="Transformer blocks (CogVideoX-2B has 30).")
    ap.add_argument("--hw", type=int, default=64, help="Training height = width in px.")
    ap.add_argument("--frames", type=int, default=13, help="Training frames (4k+1).")
    ap.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tune of the transformer.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    args = ap.parse_args()

    import torch
    from diffusers import CogVideoXTransformer3DModel

    from finetune.config import TrainConfig
    from finetune.generate import load_pipeline
    from finetune.tiny_generator import build_tiny_generator
    from finetune.trainer import Batch, RewardWeightedTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as td:
        model = build_tiny_generator(Path(td) / "gen")
        pipe = load_pipeline(model)
        # A bigger CogVideoX-shaped transformer than the test model, so the step is not all Python overhead.
        torch.manual_seed(0)
        pipe.transformer = CogVideoXTransformer3DModel(
            num_attention_heads=8, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=64,
            text_embed_dim=32, num_layers=args.layers, sample_width=args.hw // 8, sample_height=args.hw // 8,
            sample_frames=args.frames, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16)
        mode = {"lora_rank": args.lora_rank} if args.lora_rank else {"full": True}
        cfg = TrainConfig(model=str(model), data="-", out=str(Path(td) / "out"), learning_rate=1e-5, progress=False,
                          num_frames=args.frames, height=args.hw, width=args.hw, **mode)
        trainer = RewardWeightedTrainer(cfg, pipe=pipe)
        g = torch.Generator().manual_seed(0)
        lat_frames, lat_hw = (args.frames - 1) // 4 + 1, args.hw // 8
        latents = torch.randn(args.batch, lat_frames, 4, lat_hw, lat_hw, generator=g)
        with torch.no_grad():
            embeds = pipe.encode_prompt(["a red car at night"] * args.batch, do_classifier_free_guidance=False,
                                        max_sequence_length=16)[0]
        weighted = Batch(latents, embeds, torch.linspace(0.05, 0.9, args.batch), args.batch)
        plain = Batch(latents, embeds, None, args.batch)
        times: dict[str, list[float]] = {"weighted": [], "plain": []}
        cpu: dict[str, list[float]] = {"weighted": [], "plain": []}
        order = ["weighted", "plain", "plain", "weighted"]
        for i in range(args.warmup * 2 + args.reps * 2):
            kind = order[i % 4]
            batch = weighted if kind == "weighted" else plain
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.micro_step(batch, micro=0)  # micro=0: the same noise and timesteps every step
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup * 2:
                times[kind].append(dt)
                cpu[kind].append(dc)
        n_params = sum(p.numel() for p in trainer.params)

    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"device=cpu threads={torch.get_num_threads()} trainable={n_params:,} batch={args.batch} "
          f"latents={tuple(latents.shape)} layers={args.layers} reps={args.reps}")
    print(f"{'step':<10} {'wall med ms':>12} {'wall p10':>9} {'wall p90':>9} {'cpu med ms':>11} {'cpu p10':>8} {'cpu p90':>8}")
    for k in ("plain", "weighted"):
        v, c = sorted(times[k]), sorted(cpu[k])
        print(f"{k:<10} {med[k] * 1e3:>12.2f} {v[len(v) // 10] * 1e3:>9.2f} {v[(len(v) * 9) // 10] * 1e3:>9.2f} "
              f"{cmed[k] * 1e3:>11.2f} {c[len(c) // 10] * 1e3:>8.2f} {c[(len(c) * 9) // 10] * 1e3:>8.2f}")
    print(f"wall_overhead={med['weighted'] / med['plain'] - 1:.4f}")
    print(f"overhead={cmed['weighted'] / cmed['plain'] - 1:.4f}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
