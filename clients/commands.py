"""`lift score`, `lift label` and `lift label merge`: the client-side subcommands of the `lift` CLI.

Nothing heavy at import time: `lift score --server` and `lift label` run on a client-only install.
`lift score --model DIR` scores in-process and only then imports the service (torch, vllm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, MediaNotFound

from .shards import shard_arg

ENV_SERVER = "LIFT_SERVER"  # comma-separated base URLs, a default for --server
ENV_API_KEY = "LIFT_API_KEY"


def register(subparsers: Any) -> None:
    _register_score(subparsers)
    _register_label(subparsers)
    _register_label_merge(subparsers)
    _register_critics(subparsers)


# ---- shared options ---------------------------------------------------------------------------
def _add_score_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring options")
    g.add_argument("--num-frames", type=int, default=None, help="frames sampled per video (service default: 8)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default); >0 samples")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--max-reason-tokens", type=int, default=None, help="cap on each rationale's tokens (faster)")
    g.add_argument("--no-rationale", dest="rationale", action="store_false", default=None,
                   help="reward-only: labels, probabilities and rewards without generating reasons (faster)")
    g.add_argument("--scoring", choices=("label", "lift"), default=None,
                   help="label = the most probable label, then a reason (service default); lift = as LiFT's scripts "
                        "did: the whole answer sampled at T=0.2, 'Normal' anywhere -> Normal, else 'Bad' -> Bad, "
                        "else Good")


def _add_server_options(p: argparse.ArgumentParser, required_hint: str) -> None:
    p.add_argument("--server", action="append", default=None, metavar="URL",
                   help=f"scoring service base URL; repeat for several replicas ({required_hint}; "
                        f"default: ${ENV_SERVER}, comma-separated)")
    p.add_argument("--api-key", default=os.environ.get(ENV_API_KEY), help=f"Bearer token (default: ${ENV_API_KEY})")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default 120)")


def _servers(args: argparse.Namespace) -> list[str]:
    urls = list(args.server or [])
    if not urls and os.environ.get(ENV_SERVER):
        urls = [u for u in os.environ[ENV_SERVER].split(",") if u.strip()]
    out: list[str] = []
    for u in urls:
        out.extend(x for x in u.split(",") if x.strip())
    return out


def _options(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from service.protocol import ScoreOptions

    raw = {"num_frames": args.num_frames, "temperature": args.temperature, "seed": args.seed,
           "max_reason_tokens": args.max_reason_tokens, "scoring": args.scoring, "rationale": args.rationale}
    raw = {k: v for k, v in raw.items() if v is not None}
    if not raw:
        return None
    try:
        return ScoreOptions(**raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise InvalidRequest(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}") from None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# ---- lift score --------------------------------------------------------------------------------
def _register_score(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="score one video against its prompt (remote --server or local --model)",
        description="Score one video with the LiFT critic and print the score response as JSON: reward, "
        "expected_reward and per-dimension label, score, probabilities and rationale. With --server the "
        "video is sent to a running scoring service (its bytes uploaded; an http(s) URL is passed for the "
        "server to fetch; --server-path names a file under the server's media root). With --model the "
        "critic is loaded in this process (needs the service extra). Same JSON either way.",
    )
    p.add_argument("video", help="video file, http(s) URL, or (with --server-path) a path on the server")
    p.add_argument("--prompt", required=True, help="the caption the video was generated from")
    _add_server_options(p, "or --model")
    p.add_argument("--model", type=Path, default=None, help="critic checkpoint folder: score locally")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm", help="local engine (with --model)")
    p.add_argument("--critic", choices=("lift", "cosmos-reason1", "videoscore2", "unifiedreward", "videoalign"),
                   default="lift",
                   help="what the --model checkpoint is (service.critics; default lift; a server says its own)")
    p.add_argument("--server-path", action="store_true", help="VIDEO is a path on the server (under LIFT_MEDIA_ROOT)")
    _add_score_options(p)
    p.set_defaults(func=score_command)


def score_command(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise InvalidRequest("--prompt is empty")
    options = _options(args)
    servers = _servers(args)
    if args.model is not None and args.server:
        raise InvalidRequest("give --server or --model, not both")
    if args.model is not None:
        from .console import stdout_to_stderr

        with stdout_to_stderr():  # the engine's own output must not end up in the JSON on stdout
            resp = _score_local(args, options)
    elif servers:
        resp = _score_remote(args, servers, options)
    else:
        raise InvalidRequest(f"say where to score: --server URL (or ${ENV_SERVER}) or --model DIR")
    _print_json(resp.model_dump(mode="json", exclude_none=True))
    return 0


def _score_remote(args: argparse.Namespace, servers: list[str], options: Any) -> Any:
    from .client import RewardClient
    from .video import ServerPath

    video: Any = ServerPath(args.video) if args.server_path else args.video
    with RewardClient(servers, api_key=args.api_key, timeout=args.timeout) as client:
        return client.score(video, args.prompt, options=options)


def _score_local(args: argparse.Namespace, options: Any) -> Any:
    from .video import is_url

    if args.server_path or is_url(args.video):
        raise InvalidRequest("local scoring (--model) needs a local video file")
    video = Path(args.video)
    if not video.is_file():
        raise MediaNotFound(f"video file not found: {video}", param="video")
    if not args.model.is_dir():
        raise MediaNotFound(f"model folder not found: {args.model}", param="model")
    from service.critic import Critic  # heavy (torch, vllm): only when asked to score locally

    async def run() -> Any:
        critic = Critic.from_pretrained(str(args.model), engine=args.engine, critic=args.critic)
        # decode before loading the engine: a broken video fails in a second, not after a model load
        frames = critic.decode(video, options.num_frames if options else None)
        await critic.start()
        try:
            return await critic.score(frames, args.prompt, options)
        finally:
            await critic.stop()

    return asyncio.run(run())


# ---- lift label --------------------------------------------------------------------------------
def _register_label(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="label a manifest of videos with rewards through the scoring service (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Label every video of a manifest with the critic's reward, through one or more replicas.

Manifest: JSONL, one {"id"?, "video", "prompt"} per line. "video" is a local path (its bytes are uploaded;
relative paths are looked up next to the manifest, then in the working directory) or an http(s) URL
(passed to the server). Without "id" an item's id is "h" + sha256(video + "\\n" + prompt)[:16], stable
when lines are added, removed or reordered.

Output: one JSON line per id, appended as results arrive ({"id", "video", "prompt", "status": "ok",
"reward", "expected_reward", "dimensions", ...} or {"status": "error", "error": {code, message}}).
Re-running the same command resumes: done ids are skipped, a torn last line (killed run) is redone.
--retry-errors redoes the error lines. --format parquet keeps the JSONL journal at OUT.journal.jsonl
(it is what resumes) and writes OUT as Parquet at the end.

Many machines: --shard K/N labels only the items whose id hashes to K of N (sha256 of the id, so every
process computes the same split; K from 0 to N-1, e.g. $JOB_COMPLETION_INDEX), into its own --out, and
resumes like any run. `lift label merge PART.jsonl... --out MERGED.jsonl` joins the parts afterwards
(`lift label merge --help`).""",
        epilog="exit codes: 0 all labeled; 1 finished, some items are error lines (0 with --allow-item-errors); "
        "2 bad arguments/input (a bad --shard, another shard's --out, an --out another run is writing); "
        "3 stopped early because no replica was reachable (re-run to resume)",
    )
    p.add_argument("manifest", type=Path, help="JSONL manifest")
    p.add_argument("--out", type=Path, required=True, help="labels file (JSONL, or Parquet with --format parquet)")
    _add_server_options(p, "required")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight over all replicas (default 8)")
    p.add_argument("--retry-errors", action="store_true", help="redo items recorded as errors")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="output format (default jsonl)")
    p.add_argument("--export-lift", type=Path, default=None, metavar="FILE.json",
                   help="also write LiFT's training format [{video, caption, score}] (score = reward)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="histograms of rewards per dimension")
    p.add_argument("--summary-json", type=Path, default=None, metavar="FILE", help="write the summary as JSON too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="K/N",
                   help="label only shard K of N (0-based; by a hash of each item id) into this --out")
    p.add_argument("--allow-item-errors", action="store_true",
                   help="exit 0 when the run finished even if some items are error lines (for batch jobs "
                        "that retry a non-zero exit: retrying cannot fix a broken video)")
    p.add_argument("--rule-agreement", action="store_true",
                   help="the summary also says how often the two scoring rules (label, LiFT's substring) read an "
                        "answer differently")
    _add_score_options(p)
    p.set_defaults(func=label_command)


def label_command(args: argparse.Namespace) -> int:
    from .labeler import LabelConfig, label

    servers = _servers(args)
    if not servers:
        raise InvalidRequest(f"--server URL is required (or set ${ENV_SERVER})")
    config = LabelConfig(
        manifest=args.manifest, out=args.out, servers=servers, concurrency=args.concurrency,
        retry_errors=args.retry_errors, format=args.format, export_lift=args.export_lift, plot=args.plot,
        api_key=args.api_key, options=_options(args), timeout_s=args.timeout, progress=not args.no_progress,
        shard=args.shard, allow_item_errors=args.allow_item_errors, rule_agreement=args.rule_agreement,
    )
    result = asyncio.run(label(config))
    if result.repaired_bytes:
        print(f"lift label: cut a torn last line ({result.repaired_bytes} bytes) from {config.journal_path}; "
              "its item was redone", file=sys.stderr)
    print(result.summary.format())
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(result.summary.as_dict(), indent=2) + "\n")
    if result.aborted:
        print(f"lift label: stopped early: {result.aborted}\nre-run the same command to resume", file=sys.stderr)
    return result.exit_code



# ---- lift label merge --------------------------------------------------------------------------
# argparse cannot hang a subcommand under `label`, whose first argument is a manifest path, so
# `clients.cli` sends `lift label merge ...` here (MERGE_COMMAND) before parsing.
MERGE_COMMAND = "label-merge"


def _register_label_merge(sub: Any) -> None:
    p = sub.add_parser(
        MERGE_COMMAND,
        prog="lift label merge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Join the labels files of `lift label --shard K/N` runs into one file with each id exactly once.

Each id seen more than once: the same result twice is kept once (numbers equal within --tolerance,
request_id aside); an ok line beats an error line; two different ok results are a conflict. Conflicts are
all reported and, by default, nothing is written (exit 3): an ambiguous labels file should not reach
training. --on-conflict first|last keeps the line of the first|last PART given instead.
--manifest reports the manifest's ids that no part has. A torn last line (a shard killed and not resumed)
is skipped and reported. Error lines are kept, as lift label keeps them. Lines labeled by different critics
or rubrics (their provenance digests) are refused (exit 2) unless --allow-mixed-provenance.

stdout: one JSON report (ids, ok, errors, missing, duplicates, conflicts with examples, parts); the
problems, one line each, go to stderr.""",
        epilog="exit codes: 0 merged, every id ok, nothing missing; 1 merged, but some ids are error lines, "
        "missing from every part, or a part has a torn last line; 2 bad arguments/input; 3 conflicts, "
        "nothing written",
    )
    p.add_argument("parts", nargs="+", type=Path, metavar="PART.jsonl", help="labels files of the shards")
    p.add_argument("--out", type=Path, required=True, help="the merged labels file (JSONL)")
    p.add_argument("--manifest", type=Path, default=None, help="report the manifest's ids that no part has")
    p.add_argument("--on-conflict", choices=("fail", "first", "last"), default="fail",
                   help="two different results for one id: fail (default: report, write nothing, exit 3), "
                        "or keep the first / last part's line")
    p.add_argument("--tolerance", type=float, default=1e-6,
                   help="numbers closer than this are equal when comparing two lines of one id (default 1e-6)")
    p.add_argument("--allow-mixed-provenance", action="store_true",
                   help="merge lines labeled by different critics or rubrics (refused by default: their labels "
                        "are not comparable); the report lists each")
    p.set_defaults(func=label_merge_command)


def label_merge_command(args: argparse.Namespace) -> int:
    from .merge import merge

    if not args.tolerance >= 0:
        raise InvalidRequest("--tolerance must be >= 0")
    report = merge(args.parts, args.out, manifest=args.manifest, on_conflict=args.on_conflict,
                   tolerance=args.tolerance, allow_mixed_provenance=args.allow_mixed_provenance)
    for line in report.problems():
        print(f"lift label merge: {line}", file=sys.stderr)
    print(f"lift label merge: {report.ids} ids from {len(args.parts)} parts"
          + (f" written to {args.out}" if report.written else ", nothing written"), file=sys.stderr)
    _print_json(report.as_dict())
    return report.exit_code


# ---- lift critics compare ----------------------------------------------------------------------
def _register_critics(sub: Any) -> None:
    p = sub.add_parser("critics", help="several critics: compare them on one manifest (lift critics compare)",
                       description="Work with several critics (`lift critics compare --help`).")
    csub = p.add_subparsers(dest="critics_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser(
        "compare",
        prog="lift critics compare",
        help="score a manifest with every critic the servers serve, and say how they agree",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Score every item of a manifest with every critic, then compare the critics.

Critics: each --server URL is asked GET /v1/models; the critics are the union of the cards (a card id listed
by several servers is one critic with replicas; a server listing several critics is told which one answers
each request). Scoring is `lift label`'s, one journal per critic in OUT/journals/: a killed run resumes and
re-scores nothing done. Manifest: as `lift label` (JSONL {"id"?, "video", "prompt"}).

Outputs: OUT/compare.json and OUT/compare.md: per pair of critics, Spearman and Kendall of their rewards,
expected rewards and every pair of their dimensions, over the items both scored; the items whose reward
ranks differ most (--top); OUT/plots/ reward vs reward per pair. With --labels HUMAN.jsonl ({"id", <column>:
number or Good/Normal/Bad} per line): each critic against each human column (Spearman, Kendall; accuracy
where the column is a LiFT dimension in labels and the critic is LiFT). One critic is enough with --labels.
stdout: a JSON summary only; the log goes to stderr.""",
        epilog="exit codes: 0 compared; 1 compared, but some items are error lines (left out); 2 bad arguments "
        "or input (a bad --server, no manifest, one critic and no --labels); 3 stopped early because a critic's "
        "servers were unreachable (re-run to resume)",
    )
    c.add_argument("manifest", type=Path, help="JSONL manifest (as lift label's)")
    c.add_argument("--out", type=Path, required=True, help="folder for the journals, compare.json/.md and plots/")
    _add_server_options(c, "required; repeat for servers of other critics, whose critics are pooled")
    c.add_argument("--labels", type=Path, default=None, metavar="HUMAN.jsonl", help="human labels to agree with")
    c.add_argument("--concurrency", type=int, default=8, help="requests in flight per critic (default 8)")
    c.add_argument("--top", type=int, default=20, help="items listed where the critics disagree most (default 20)")
    c.add_argument("--retry-errors", action="store_true", help="redo items recorded as errors")
    c.add_argument("--no-plots", action="store_true", help="no PNGs")
    c.add_argument("--no-progress", action="store_true", help="no periodic progress lines on stderr")
    _add_score_options(c)
    c.set_defaults(func=critics_compare_command, command_name="critics compare")


def critics_compare_command(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, run

    servers = _servers(args)
    if not servers:
        raise InvalidRequest(f"--server URL is required (or set ${ENV_SERVER})")
    result = run(CompareConfig(
        manifest=args.manifest, servers=servers, out=args.out, labels=args.labels, concurrency=args.concurrency,
        api_key=args.api_key, options=_options(args), timeout_s=args.timeout, top=args.top,
        retry_errors=args.retry_errors, progress=not args.no_progress, plots=not args.no_plots,
    ))
    if result.aborted:
        print(f"lift critics compare: stopped early: {result.aborted}\nre-run the same command to resume",
              file=sys.stderr)
    _print_json(result.summary)
    return result.exit_code
