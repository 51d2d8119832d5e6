"""`lift serve` and `lift make-tiny-critic` (service side of the `lift` CLI).

Nothing heavy at import time: torch, vllm and the app are imported inside the handlers.
(`lift score` lives in clients.commands: it scores through a server or, with --model, in-process.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

FATAL_DRAIN_S = 5.0  # after the engine is lost: how long in-flight requests get to receive their 503
# ... and before that, how long the server keeps answering (/health 503 with the cause, scores 503 +
# Retry-After) so that probes and clients see why, rather than a refused connection
FATAL_LINGER_S = 2.0


CRITIC_CHOICES = ("lift", "cosmos-reason1", "videoscore2", "unifiedreward", "videoalign")  # service.critics.CRITIC_NAMES


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a critic over HTTP (POST /v1/score, /v1/score/batch, /health, /ready, /metrics, /docs)",
        description="Serve a LiFT critic behind the scoring API. Settings come from flags and LIFT_* "
        "environment variables (LIFT_MEDIA_ROOT, LIFT_MAX_VIDEO_BYTES, LIFT_MAX_INFLIGHT, LIFT_MAX_QUEUE, "
        "LIFT_REQUEST_TIMEOUT_S, LIFT_API_KEYS, LIFT_URL_ALLOWLIST, LIFT_ALLOW_PRIVATE_URLS, ...); flags win. "
        "The server answers /health at once and /ready (503) until the engine has loaded. SIGTERM drains "
        "in-flight requests and exits 0.",
    )
    p.add_argument("--model", type=Path, default=None, help="critic checkpoint folder (or LIFT_MODEL)")
    p.add_argument("--engine", choices=("vllm", "transformers"), default=None, help="inference engine (default vllm)")
    p.add_argument("--critic", action="append", default=None, metavar="NAME[=DIR]",
                   help="what the checkpoint is: its prompts and how its answers are read (" + ", ".join(CRITIC_CHOICES)
                        + "; default lift; or LIFT_CRITIC). Repeated as NAME=DIR: several critics in one deployment "
                        "(LIFT_CRITICS), requests pick one by `model`")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="bind port (default 8000)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="serve the tiny random demo critic, built into ~/.cache/lift-reward/demo-critic on first use")
    p.add_argument("--media-root", type=Path, default=None, help="folder video.path may read from (default: paths off)")
    p.add_argument("--adapter", action="append", choices=("flow-factory", "cosmos-rl", "unirl"), default=None,
                   dest="adapters", help="also serve a trainer's reward route set (repeatable; or LIFT_ADAPTERS): "
                   "flow-factory = POST /compute, cosmos-rl = POST /api/reward/enqueue + /api/reward/pull, "
                   "unirl = POST /score + GET /rewards (and its roster on GET /health)")
    p.set_defaults(func=serve_command)

    t = subparsers.add_parser(
        "make-tiny-critic",
        help="build a tiny random critic checkpoint (for tests and demos; no download)",
        description="Build a tiny random critic of the given family into DIR, offline, in seconds, with the real "
        "release's tensor names and layout at tiny sizes. qwen2_vl: a checkpoint both engines load. vila: "
        "VILA-1.5's release layout (13B-shaped with --vision siglip, 40B-shaped with --vision internvit), "
        "for `lift convert-vila`.",
    )
    t.add_argument("dir", type=Path, help="output folder")
    t.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "vila"), help="critic family")
    t.add_argument("--critic", choices=CRITIC_CHOICES, default="lift",
                   help="which critic the tiny model stands for: lift (the family's LiFT-Critic layout) or another "
                        "critic's (a Qwen2.5-VL in the real release's tokenizer layout; serve it with the same --critic)")
    t.add_argument("--vision", choices=("siglip", "internvit"), default=None,
                   help="(vila) vision tower: siglip = VILA1.5-13b-shaped (default), internvit = VILA1.5-40b-shaped")
    t.add_argument("--with-lora", action="store_true",
                   help="(vila) also write a LoRA in LiFT-Critic's release layout into DIR/lora")
    t.add_argument("--llm-tokenizer", choices=("sentencepiece", "bpe"), default=None,
                   help="(vila) llm/'s tokenizer: sentencepiece = tokenizer.model only, as the real VILA1.5-13b/-40b "
                   "releases (Llama-2-style for siglip, Yi-style for internvit; the default), bpe = a tokenizer.json")
    t.add_argument("--non-lora-trainables", choices=("empty", "projector"), default=None,
                   help="(vila, with --with-lora) what lora/non_lora_trainables.bin holds: empty = an empty dict, as "
                   "LiFT's releases (projector frozen; the default), projector = trained projector weights")
    t.add_argument("--seed", type=int, default=0, help="random seed for weights and tokenizer")
    t.add_argument("--preset", choices=("tiny", "realistic"), default="tiny",
                   help="tiny: seconds to build and run (default); realistic: LiFT-Critic-13B's token proportions "
                   "(8 frames x 196 visual tokens, LiFT's questions) on a small LLM, for benchmarks")
    t.set_defaults(func=make_tiny_critic_command)
    from service.families.vila.cli import register as register_vila  # convert-vila

    register_vila(subparsers)
    from service.families.videoalign.cli import register as register_videoalign  # convert-videoalign

    register_videoalign(subparsers)


def make_tiny_critic_command(args: argparse.Namespace) -> int:
    from service.errors import InvalidRequest
    from service.tiny_critics import build_tiny_critic

    vila_only = {"--vision": args.vision, "--with-lora": args.with_lora, "--llm-tokenizer": args.llm_tokenizer,
                 "--non-lora-trainables": args.non_lora_trainables}
    if args.family != "vila" and any(vila_only.values()):
        raise InvalidRequest(f"{', '.join(k for k, v in vila_only.items() if v)}: apply to --family vila only")
    if args.non_lora_trainables and not args.with_lora:
        raise InvalidRequest("--non-lora-trainables describes the LoRA release: add --with-lora")
    if args.preset != "tiny" and args.vision == "internvit":
        raise InvalidRequest("--preset realistic is 13B-shaped: use --vision siglip (the default)")
    if args.critic == "videoalign":  # a release in VideoAlign's layout, to be converted
        if args.family != "qwen2_vl" or any(vila_only.values()) or args.preset != "tiny":
            raise InvalidRequest("--critic videoalign is a tiny Qwen2-VL release: leave --family and --preset")
        from service.tiny_critics.videoalign import build_tiny_videoalign_release

        release = build_tiny_videoalign_release(args.dir, seed=args.seed)
        print(release)
        print(f"VideoAlign's release layout; to serve it: lift convert-videoalign --release {release} --out OUT && "
              f"lift serve --critic videoalign --model OUT", file=sys.stderr)
        return 0
    if args.critic != "lift":
        if args.family != "qwen2_vl" or any(vila_only.values()):
            raise InvalidRequest(f"--critic {args.critic} is a Qwen2.5-VL model: leave --family at qwen2_vl")
        from service.tiny_critics.qwen2_5_vl import build_tiny_qwen2_5_vl

        print(build_tiny_qwen2_5_vl(args.dir, seed=args.seed, preset=args.preset, critic=args.critic))
        print(f"to serve it: lift serve --critic {args.critic} --model {args.dir}", file=sys.stderr)
        return 0
    if args.family == "vila":
        from service.tiny_critics.vila import build_tiny_vila

        out = build_tiny_vila(args.dir, seed=args.seed, with_lora=args.with_lora, vision=args.vision or "siglip",
                              preset=args.preset, tokenizer=args.llm_tokenizer or "sentencepiece",
                              non_lora=args.non_lora_trainables or "empty")
    else:
        out = build_tiny_critic(args.dir, family=args.family, seed=args.seed, preset=args.preset)
    print(out)
    if args.family == "vila":
        lora = f" --lora {out / 'lora'}" if args.with_lora else ""
        print(f"VILA-1.5 layout; to serve it: lift convert-vila --base {out}{lora} --out OUT && lift serve --model OUT",
              file=sys.stderr)
    return 0


def _settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from service.app.settings import ServiceSettings
    from service.errors import InvalidRequest

    flags = {k: getattr(args, k, None) for k in ("model", "engine", "host", "port", "demo", "media_root", "adapters")}
    named = getattr(args, "critic", None) or []
    pairs = [c for c in named if "=" in c]
    if pairs and len(pairs) != len(named):
        raise InvalidRequest("--critic: give one NAME (with --model) or NAME=DIR pairs, not both")
    if pairs:
        flags["critics"] = ",".join(pairs)
    elif len(named) > 1:
        raise InvalidRequest("--critic NAME is given once; several critics are NAME=DIR pairs")
    elif named:
        if named[0] not in CRITIC_CHOICES:
            raise InvalidRequest(f"--critic: unknown critic {named[0]!r}; choose from {', '.join(CRITIC_CHOICES)}")
        flags["critic"] = named[0]
    try:
        return ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "settings"
        raise InvalidRequest(f"{where}: {e['msg']}") from None


def ensure_demo_critic(folder: Path) -> Path:
    """Build the demo critic once; later starts reuse it."""
    if (folder / "config.json").is_file():
        return folder
    from service.tiny_critics import build_tiny_critic

    print(f"lift serve: building the demo critic into {folder} (once)", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(build_tiny_critic(folder, family="qwen2_vl", seed=0))


def warn_about_leftover_engines() -> None:
    """One line on stderr when engine processes of a dead earlier replica still hold memory on this host (an
    older version, or a vLLM started without our lifeline, leaves them): the usual cause of a replica that then
    cannot load. Not ours to kill: the line says what they are."""
    from service.engines.lifeline import describe_leftovers, leftover_engine_processes

    if leftovers := leftover_engine_processes():
        print(f"lift serve: warning: {describe_leftovers(leftovers)}", file=sys.stderr, flush=True)


def build_critics(settings: Any) -> Any:
    """The deployment's critic (LIFT_MODEL + LIFT_CRITIC), or several (LIFT_CRITICS) as one CriticSet, GPU memory
    split equally among them."""
    from service.critic import Critic

    dirs = settings.critic_dirs()
    if not dirs:
        return Critic.from_pretrained(settings.model, engine=settings.engine, scoring=settings.scoring,
                                      critic=settings.critic, critic_variant=settings.critic_variant,
                                      parse_failure_value=settings.parse_failure_value, **settings.engine_options())
    from service.critic_set import CriticSet

    options = settings.engine_options()
    if settings.engine == "vllm" and options.get("gpu_memory_utilization") is None:
        from service.engines.vllm_engine import _is_cpu

        if not _is_cpu():  # vLLM's default share (0.9) is for one engine per GPU
            options["gpu_memory_utilization"] = 0.9
    if options.get("gpu_memory_utilization") is not None:
        options["gpu_memory_utilization"] = options["gpu_memory_utilization"] / len(dirs)
    return CriticSet([Critic.from_pretrained(folder, engine=settings.engine, scoring=settings.scoring, critic=name,
                                             model_name=name, parse_failure_value=settings.parse_failure_value,
                                             **options) for name, folder in dirs.items()])


def serve_command(args: argparse.Namespace) -> int:
    from service.app.logs import configure_logging
    from service.errors import InvalidRequest

    settings = _settings_from(args)
    if settings.demo:
        settings.model = ensure_demo_critic(settings.demo_dir)
    critic_dirs = settings.critic_dirs()
    if critic_dirs:
        if settings.model is not None:
            raise InvalidRequest("--critic NAME=DIR pairs name every checkpoint: leave out --model")
        for name, folder in critic_dirs.items():
            if not folder.is_dir():
                raise InvalidRequest(f"--critic {name}={folder}: not a folder")
    elif settings.model is None:
        raise InvalidRequest("give --model DIR (or LIFT_MODEL), or --demo, or --critic NAME=DIR pairs")
    elif not settings.model.is_dir():
        raise InvalidRequest(f"--model {settings.model} is not a folder")
    configure_logging(settings.log_level)
    print(json.dumps({"msg": "lift serve settings", **settings.public_view()}), file=sys.stderr, flush=True)
    warn_about_leftover_engines()

    from service.app import create_app
    from service.app.server import GracefulServer, uvicorn_config

    critic = build_critics(settings)
    failed: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        # A server without an engine is no use: stop soon, after a short linger (answering 503s that say why)
        # and a short drain, so that the supervisor (compose restart:, Kubernetes) restarts us in seconds.
        failed.append(exc)

        def stop() -> None:
            server.config.timeout_graceful_shutdown = min(settings.graceful_timeout_s, FATAL_DRAIN_S)
            server.should_exit = True

        try:
            asyncio.get_running_loop().call_later(FATAL_LINGER_S, stop)
        except RuntimeError:  # not called from the server's loop
            stop()

    app = create_app(settings, critic, on_fatal=on_fatal)
    server = GracefulServer(uvicorn_config(app, settings))
    server.run()
    if failed:
        from service.errors import EngineDead, LiftError

        exc = failed[0]
        what = "the engine died" if isinstance(exc, EngineDead) else "the engine failed to start"
        message = exc.message if isinstance(exc, LiftError) else f"{type(exc).__name__}: {exc}"
        print(f"lift serve: error: {what}: {message}", file=sys.stderr, flush=True)
        return 1
    return 0
