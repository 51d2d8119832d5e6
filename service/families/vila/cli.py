"""`lift convert-vila`.

Imports nothing heavy at module level: `lift --help` must stay fast and torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    c = subparsers.add_parser(
        "convert-vila",
        help="convert a VILA-1.5 checkpoint (+ LiFT-Critic LoRA, merged) into a checkpoint `lift serve` loads",
        description="Read VILA-1.5's release layout (config.json, llm/, vision_tower/, mm_projector/) and, with "
        "--lora, LiFT-Critic's LoRA release (adapter_config.json, adapter_model.safetensors, "
        "non_lora_trainables.bin); merge the LoRA into the language model (scale alpha/r) shard by shard, and "
        "write one checkpoint (safetensors, config, tokenizer, processor) that both the vLLM and the "
        "transformers engine load. A SentencePiece llm/tokenizer.model (as VILA1.5-13b/-40b ship) becomes a fast "
        "tokenizer that must give the ids VILA's slow tokenizer gives on every piece of LiFT's prompts and "
        "answers; a base it cannot reproduce is refused, naming the piece.",
    )
    c.add_argument("--base", type=Path, required=True, metavar="VILA_DIR", help="VILA-1.5 folder (e.g. VILA1.5-13b)")
    c.add_argument("--lora", type=Path, default=None, metavar="LORA_DIR", help="LiFT-Critic LoRA release folder")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="output checkpoint folder")
    c.add_argument("--chat-template", choices=("vicuna_v1", "hermes-2"), default=None,
                   help="override the conversation template (by default it is chosen from the checkpoint: hermes-2 "
                   "for a ChatML tokenizer or an InternViT tower, as VILA1.5-40b, else vicuna_v1)")
    c.set_defaults(func=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    from service.families.vila.convert import convert_vila

    report = convert_vila(args.base, args.out, args.lora, chat_template=args.chat_template,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(report.out_dir)
    return 0
