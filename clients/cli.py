"""`lift`: one command line for the whole stack.

Each package registers its own subcommands (`service.cli`, `clients.commands`, `finetune.cli`); those
modules import nothing heavy at top level, so `lift --help` and the client commands stay torch-free.
Errors the project raises on purpose end the process with one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers) -> None`. Missing ones (a client-only install) are skipped.
COMMAND_MODULES = ("service.cli", "clients.commands", "finetune.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lift", description="LiFT reward stack: serve a video critic, score, label, fine-tune.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="engine logs (vLLM, transformers) at INFO instead of WARNING; they always go to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a package whose optional dependencies are not installed
            if exc.name and exc.name.split(".")[0] in ("service", "finetune", "clients") and exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def _route_label_merge(argv: list[str]) -> list[str]:
    """`lift [-v] label merge ...` -> the `label-merge` subcommand (see clients.commands.MERGE_COMMAND).
    A manifest that is really named `merge` is still reachable as `./merge`."""
    for i, tok in enumerate(argv):
        if tok.startswith("-"):
            continue
        if tok == "label" and argv[i + 1 : i + 2] == ["merge"]:
            return [*argv[:i], "label-merge", *argv[i + 2 :]]
        break
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_route_label_merge(list(sys.argv[1:] if argv is None else argv)))
    from clients.console import route_engine_logs

    route_engine_logs(verbose=bool(getattr(args, "verbose", False)))  # before anything imports vllm
    from clients.processes import Terminated, exit_on_sigterm
    from service.errors import LiftError

    command = getattr(args, "command_name", None) or ("label merge" if args.command == "label-merge" else args.command)
    exit_on_sigterm()  # SIGTERM unwinds like Ctrl-C: what the command started (an engine, a server) is stopped
    try:
        result = args.func(args)
    except LiftError as exc:
        print(f"lift {command}: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lift {command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"lift {command}: terminated", file=sys.stderr)
        return int(exc.code or 143)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
