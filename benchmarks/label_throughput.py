"""Labeling throughput: a naive sequential client vs `lift label` (concurrency 8 and 32, one and two replicas).

    .venv/bin/python benchmarks/label_throughput.py [--videos 96] [--naive-videos 24] [--model DIR]

Starts two `lift serve` replicas (vLLM engine) on the tiny critic (built on the spot unless --model),
makes real H.264 videos, then measures videos/s:
- naive: one video after another, a fresh `httpx.post` (new connection) with the video base64'd in JSON,
  to one replica: what a first script against the API does;
- `lift label` as a subprocess (start-up included) at --concurrency 8 and 32, on one and on two replicas,
  each run from an empty output file.
Prints a table and, last, `speedup=<best lift label videos/s over naive>`.
On a 2-core CPU the two replicas' vLLM workers are pinned to different cores (VLLM_CPU_OMP_THREADS_BIND).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.lift_servers import lift_serve  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def write_manifest(path: Path, items: list[tuple[Path, str]]) -> Path:
    """`lift label`'s input: one {"video", "prompt"} JSON line per item."""
    path.write_text("".join(json.dumps({"video": str(p), "prompt": t}) + "\n" for p, t in items))
    return path


def make_videos(root: Path, n: int, first: int = 0) -> list[tuple[Path, str]]:
    """`n` distinct videos numbered from `first`, each with its prompt (distinct numbers, distinct frames)."""
    from service.synthetic_videos import COLOURS, moving_square, unique_background, write_video

    colours = list(COLOURS)
    out = []
    for i in range(first, first + n):
        c = colours[i % len(colours)]
        p = write_video(root / f"v{i}.mp4", moving_square(16, 96, 128, colour=c, background=unique_background(i), seed=i, jitter=0.1 * (i % 3)))
        out.append((p, f"a {c} square moving to the right ({i})"))
    return out


def naive(url: str, items: list[tuple[Path, str]], options: dict) -> float:
    t0 = time.perf_counter()
    for path, prompt in items:
        body = {"prompt": prompt, "video": {"base64": base64.b64encode(path.read_bytes()).decode()}}
        if options:
            body["options"] = options
        r = httpx.post(f"{url}/v1/score", json=body, timeout=600)
        r.raise_for_status()
    return len(items) / (time.perf_counter() - t0)


def lift_label(urls: list[str], manifest: Path, out: Path, concurrency: int, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "clients.cli", "label", str(manifest), "--out", str(out), "--concurrency",
           str(concurrency), "--no-progress", *extra]
    for u in urls:
        cmd += ["--server", u]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **ENV})
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"lift label failed ({r.returncode}): {r.stderr[-2000:]}")
    n = sum(1 for line in out.read_text().splitlines() if json.loads(line)["status"] == "ok")
    return n / took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=96, help="videos per lift label run")
    ap.add_argument("--naive-videos", type=int, default=24, help="videos for the naive client")
    ap.add_argument("--model", type=Path, default=None, help="critic folder (default: build the tiny critic)")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    ap.add_argument("--max-reason-tokens", type=int, default=None, help="same for every run (default: service's)")
    ap.add_argument("--no-bind", action="store_true", help="do not pin replicas to different cores")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lift-bench-") as tmp_s:
        tmp = Path(tmp_s)
        from service.tiny_critics import build_tiny_critic

        model = args.model or build_tiny_critic(tmp / "critic", family="qwen2_vl", seed=0)
        items = make_videos(tmp, args.videos)
        manifest = write_manifest(tmp / "manifest.jsonl", items)
        options = {"max_reason_tokens": args.max_reason_tokens} if args.max_reason_tokens else {}
        extra = ["--max-reason-tokens", str(args.max_reason_tokens)] if args.max_reason_tokens else []
        rows: list[tuple[str, int, int, float]] = []
        load_before = os.getloadavg()[0]
        with lift_serve(model, engine=args.engine, log_dir=tmp, replicas=2, env=ENV,
                        bind_cores=not args.no_bind) as urls:
            # Warm both replicas (first requests compile/allocate) so no run pays for it.
            naive(urls[0], items[:2], options)
            naive(urls[1], items[:2], options)
            rows.append(("naive sequential (httpx.post, base64 JSON)", 1, 1, naive(urls[0], items[: args.naive_videos], options)))
            for n_rep in (1, 2):
                for conc in (8, 32):
                    out = tmp / f"labels_{n_rep}_{conc}.jsonl"
                    vps = lift_label(urls[:n_rep], manifest, out, conc, extra)
                    rows.append((f"lift label --concurrency {conc}", n_rep, conc, vps))
    base = rows[0][3]
    # The CPU may be shared: say how busy it was, since every number here is CPU-bound.
    print(f"machine: {os.cpu_count()} CPU cores (load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end), engine {args.engine}, tiny critic; "
          f"{args.videos} videos per lift label run, {args.naive_videos} for naive; "
          f"max_reason_tokens={args.max_reason_tokens or 'service default'}")
    print(f"{'client':<44} {'replicas':>8} {'conc':>5} {'videos/s':>9} {'x naive':>8}")
    for name, rep, conc, vps in rows:
        print(f"{name:<44} {rep:>8} {conc:>5} {vps:>9.2f} {vps / base:>8.1f}")
    best = max(r[3] for r in rows[1:])
    print(f"speedup={best / base:.1f}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
