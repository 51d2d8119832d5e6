"""`lift convert-videoalign`.

Imports nothing heavy at module level: `lift --help` must stay fast and torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    c = subparsers.add_parser(
        "convert-videoalign",
        help="convert a VideoReward (VideoAlign) release into a checkpoint `lift serve --critic videoalign` loads",
        description="Read VideoAlign's release layout (model_config.json, checkpoint-<N>/model.pth with its LoRA "
        "and non-LoRA weights, checkpoint-<N>/tokenizer/ with the three reward tokens) and its Qwen2-VL base "
        "(config and processor), merge the LoRA, and write a Qwen2-VL checkpoint both engines load, the reward "
        "head beside it (rm_head.safetensors) and lift_critic.json. A release the videoalign critic would read "
        "wrongly (another prompt template, dimensions, frames, head or normalisation; no head; no reward tokens) "
        "is refused with the reason.",
    )
    c.add_argument("--release", type=Path, required=True, metavar="DIR", help="the release folder (VideoReward)")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="output checkpoint folder")
    c.add_argument("--base", type=Path, default=None, metavar="DIR",
                   help="the Qwen2-VL-2B-Instruct folder (default: model_config.json's model_name_or_path, when it "
                        "is a local folder)")
    c.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="weights' dtype in the output (auto: the release's)")
    c.set_defaults(func=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    from service.families.videoalign.convert import convert_videoalign

    report = convert_videoalign(args.release, args.out, args.base, dtype=args.dtype,
                                progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(report.out_dir)
    print(f"to serve it: lift serve --critic videoalign --model {report.out_dir}", file=sys.stderr)
    return 0
