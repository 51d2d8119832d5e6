"""`lift make-tiny-generator` and `lift finetune {generate,train,loop}` (plus `lift critic ...` when present).

Nothing heavy at import time: torch and diffusers load inside the handlers, so `lift --help` stays fast.
Critic training registers its own commands from `finetune.critic.cli` when that module exists.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from finetune.config import GenerateConfig, LoopConfig, TrainConfig, add_arguments, from_args


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_make_tiny_generator(args: argparse.Namespace) -> int:
    from finetune.tiny_generator import build_tiny_generator

    out = build_tiny_generator(args.out_dir, seed=args.seed, rotary=args.rotary)
    print(out)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from finetune.generate import run_generate

    cfg = from_args(GenerateConfig, args)
    _logging()
    print(run_generate(cfg))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from finetune.trainer import run_train

    cfg = from_args(TrainConfig, args)
    _logging()
    result = run_train(cfg)
    print(result.output)
    return 0


def cmd_loop(args: argparse.Namespace) -> int:
    from finetune.loop import run_loop_cli

    loop_cfg = from_args(LoopConfig, args)
    _logging()
    return run_loop_cli(loop_cfg, args)


def register(subparsers) -> None:
    p = subparsers.add_parser("make-tiny-generator", help="Build a tiny random CogVideoX pipeline offline (for tests).",
                              description="Write a tiny, randomly initialised CogVideoX pipeline (32x32 px, 9 frames) "
                                          "that CogVideoXPipeline.from_pretrained loads. No network needed.")
    p.add_argument("out_dir", help="Folder to write the pipeline to.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    p.add_argument("--rotary", action="store_true", help="CogVideoX-5b layout (rotary positions) instead of 2b's.")
    p.set_defaults(func=cmd_make_tiny_generator)

    ft = subparsers.add_parser("finetune", help="Generate CogVideoX samples and fine-tune on critic rewards (LiFT).",
                               description="Reward-weighted fine-tuning of CogVideoX (LiFT Eq. 3).")
    sub = ft.add_subparsers(dest="finetune_command", required=True, metavar="STEP")

    g = sub.add_parser("generate", help="Sample videos into mp4 files and a labeling manifest (resumable).",
                       description="Sample K videos per prompt; writes OUT/videos/*.mp4 and OUT/manifest.jsonl "
                                   "({id, video, prompt, seed, sampling}). Re-running skips finished ids.")
    add_arguments(g, GenerateConfig, required=("model", "prompts", "out"))
    g.add_argument("--steps", dest="num_inference_steps", type=int, default=50, help="Alias of --num-inference-steps.")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="Reward-weighted likelihood training on labelled samples (LiFT Eq. 3).",
                       description="L = E_syn[w * l] + lambda * E_real[l], l = CogVideoX's diffusion loss per sample. "
                                   "Run under `accelerate launch --config_file finetune/configs/...` for several GPUs.")
    add_arguments(t, TrainConfig, required=("model", "data", "out"))
    t.set_defaults(func=cmd_train)

    lp = sub.add_parser("loop", help="Online rounds: generate -> score via the service -> update -> generate.",
                        description="Each round generates with the current model, scores through the service, "
                                    "updates a LoRA; writes OUT/loop_log.jsonl and OUT/rewards.png. Resumable.")
    add_arguments(lp, LoopConfig, required=("model", "prompts", "out"))
    add_arguments(lp, TrainConfig, prefix="train-", skip=(
        "model", "data", "out", "resume", "max_steps", "progress", "init_lora", "full", "real", "real_weight",
        "checkpointing_steps", "checkpoints_total_limit", "num_frames", "height", "width", "seed"))
    lp.add_argument("--real", default=None, help="Real videos JSONL for the lambda term of every update.")
    lp.add_argument("--real-weight", type=float, default=1.0, help="lambda in Eq. 3.")
    lp.add_argument("--steps", dest="num_inference_steps", type=int, default=50, help="Denoising steps when sampling.")
    lp.add_argument("--guidance-scale", type=float, default=6.0, help="Guidance scale when sampling.")
    lp.add_argument("--seed", type=int, default=0, help="Base seed (sampling and training).")
    lp.set_defaults(func=cmd_loop)

    # Critic training (another module) adds `lift critic ...` when it is there.
    try:
        critic_cli = importlib.import_module("finetune.critic.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("finetune.critic", "finetune.critic.cli"):
            raise
    else:
        critic_cli.register(subparsers)
