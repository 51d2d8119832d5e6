"""`lift critic train` and `lift critic eval`: critic training from human ratings and its evaluation.

Nothing heavy at import time: torch, transformers, peft and accelerate load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from service.errors import InvalidRequest

# CLI flag -> CriticTrainConfig field, for the flags whose names differ from the fields.
_TRAIN_FLAG_NAMES = {"learning_rate": "lr"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from finetune.critic.train import CriticTrainConfig, train_critic

    values = {f.name: getattr(args, f.name) for f in fields(CriticTrainConfig) if hasattr(args, f.name)}
    cfg = CriticTrainConfig(**values)
    result = train_critic(cfg, progress=_say)
    print(result.out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from finetune.critic.data import scan_rated_data
    from finetune.critic.evaluate import evaluate_model, evaluate_server, write_report
    from finetune.critic.metrics import agreement_markdown, table2_markdown

    if bool(args.model) == bool(args.server):
        raise InvalidRequest("give exactly one of --model DIR or --server URL")
    # With --server the videos are uploaded from here, so they must exist here as well.
    report = scan_rated_data(args.data, args.videos)
    if report.problems and not args.skip_bad_data:
        report.raise_for_problems()
    for problem in report.problems:
        _say(f"skipping {args.data}: {problem}")
    examples = report.examples
    if args.model:
        def progress(done: int, total: int) -> None:
            if done == total or done % max(1, total // 20) == 0:
                _say(f"scored {done}/{total} videos")

        from clients.console import stdout_to_stderr

        engine_options = {"dtype": args.dtype} if args.dtype else {}
        with stdout_to_stderr():  # the engine's own output stays off the report printed on stdout
            result, judgements = evaluate_model(examples, args.model, engine=args.engine, name=args.name,
                                                concurrency=args.concurrency, num_frames=args.num_frames,
                                                max_reason_tokens=args.max_reason_tokens, progress=progress,
                                                **engine_options)
    else:
        result, judgements = evaluate_server(examples, args.server, api_key=args.api_key, name=args.name,
                                             batch_size=args.batch_size, num_frames=args.num_frames,
                                             max_reason_tokens=args.max_reason_tokens)
    print(table2_markdown([result]))
    print()
    print(agreement_markdown(result))
    if args.out:
        paths = write_report(result, judgements, args.out)
        _say("wrote " + ", ".join(str(p) for p in paths.values()))
    if result.failures:
        _say(f"{len(result.failures)} video(s) could not be scored (listed in the report)")
    return 0


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from finetune.critic.train import CriticTrainConfig

    req = p.add_argument_group("required")
    req.add_argument("--data", type=Path, required=True, help="Rated data: LiFT's JSON list or the plain JSONL.")
    req.add_argument("--base", type=Path, required=True, help="Base critic checkpoint folder.")
    req.add_argument("--out", type=Path, required=True, help="Output folder (merged critic + checkpoints/).")
    p.add_argument("--videos", type=Path, default=None, help="Folder that relative video paths are under.")
    skip = {"data", "base", "out", "videos"}
    for f in fields(CriticTrainConfig):
        if f.name in skip:
            continue
        flag = "--" + _TRAIN_FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
        p.add_argument(flag, dest=f.name, type=kind, default=f.default,
                       help=f"{help_text} (default: {f.default})")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    critic = subparsers.add_parser(
        "critic", help="Train a critic on human ratings (LiFT-HRA) and evaluate critics against them.",
        description="Critic training from rated videos (SFT with LoRA, as LiFT trained LiFT-Critic) and evaluation.")
    sub = critic.add_subparsers(dest="critic_command", required=True, metavar="STEP")

    t = sub.add_parser(
        "train", help="Fine-tune a critic to answer the rubric's questions like the raters (LoRA SFT).",
        description="Supervised fine-tuning on rated videos: LoRA on the language model, vision tower and "
                    "projector frozen (unless --train-vision-tower/--train-projector), loss on the answer "
                    "'<Label>. <reason>' only, frames sampled as the service samples them. Writes OUT with "
                    "the LoRA merged (`lift serve --model OUT` loads it) and resumable checkpoints under "
                    "OUT/checkpoints. Several GPUs: `accelerate launch --config_file "
                    "finetune/critic/configs/multi_gpu.yaml -m clients.cli critic train ...`.")
    _add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval", help="Per-dimension accuracy of a critic against human labels (LiFT Table 2 layout).",
        description="Scores every rated (video, caption) once with a checkpoint (--model) or a running service "
                    "(--server) and prints accuracy per dimension, the agreement of expected_score with the "
                    "label order (Spearman, AUC); --out adds report.json/.md, confusion.png, judgements.jsonl.")
    e.add_argument("--data", type=Path, required=True, help="Rated data: LiFT's JSON list or the plain JSONL.")
    e.add_argument("--videos", type=Path, default=None, help="Folder that relative video paths are under.")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="Critic checkpoint folder to load here.")
    src.add_argument("--server", action="append", help="URL of a running `lift serve` (repeat for replicas).")
    e.add_argument("--engine", choices=("vllm", "transformers"), default="vllm", help="Engine for --model.")
    e.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="Weights dtype for --model (default: the engine's own default).")
    e.add_argument("--api-key", default=None, help="API key for --server.")
    e.add_argument("--name", default=None, help="Row name in the table (default: model folder or URL).")
    e.add_argument("--num-frames", type=int, default=None, help="Frames per video (default: the critic's, 8).")
    e.add_argument("--max-reason-tokens", type=int, default=None,
                   help="Bound on each rationale's tokens (default 32; reasons do not count in the metrics).")
    e.add_argument("--concurrency", type=int, default=4, help="Videos in flight with --model.")
    e.add_argument("--batch-size", type=int, default=8, help="Videos per batch request with --server.")
    e.add_argument("--out", type=Path, default=None, help="Folder for report.json, report.md, confusion.png.")
    e.add_argument("--skip-bad-data", action="store_true", help="Evaluate the valid records, report the rest.")
    e.set_defaults(func=cmd_eval)
