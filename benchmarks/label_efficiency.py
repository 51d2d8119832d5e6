"""Client efficiency: `lift label --concurrency 32` against one replica vs the engine's own throughput.

    .venv/bin/python benchmarks/label_efficiency.py [--videos 128] [--repeat 3] [--concurrency 32] [--model DIR]

Same critic (the tiny critic, built on the spot unless --model), same engine settings (`lift serve`'s
defaults, from ServiceSettings), real H.264 videos of the same kind, every run its own (none scored twice: the
prefix cache would serve a second pass), measured turn about on this machine (both engines
loaded, one busy at a time, so a change in load hits both sides alike):
1. engine: `Critic.score(path, prompt)` in this process, `--concurrency` at once (asyncio), the way the
   server calls it: decode + the engine + scoring, no HTTP;
2. `lift serve` (one replica, LIFT_MAX_INFLIGHT = --concurrency so the engine sees the same concurrency),
   then `lift label --concurrency N` as a subprocess from an empty output file: the whole command,
   Python start-up included, and its own labeling time (the summary's `seconds`).
Both are warmed first (the first requests allocate and compile), then measured in rounds, one run of each
side per round, back to back, the order alternating. Also the client's own ceiling: the same
`lift label` against a stub replica that answers every upload at once with a canned score (what the client
could sustain behind a much faster engine, e.g. a GPU). Prints a table and, last,
`client_efficiency=<median over rounds of lift label videos/s (whole command) / engine videos/s>`; the goal
is >= 0.90.
On a 2-core machine the client and the server share the cores with the engine: client CPU is engine time lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the in-process engine's logs go to stderr with the servers': stdout carries the table alone
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
from benchmarks.label_throughput import ENV, make_videos, write_manifest  # noqa: E402
from benchmarks.lift_servers import lift_serve  # noqa: E402


class InProcessEngine:
    """The critic `lift serve` would load (same ServiceSettings defaults), started in this process on a
    background event loop, so that it and a `lift serve` replica can be measured turn about."""

    def __init__(self, model: Path) -> None:
        from service.app.settings import ServiceSettings
        from service.critic import Critic

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)
        self.thread.start()
        self.critic = Critic.from_pretrained(model, engine="vllm", **ServiceSettings(model=model).engine_options())
        self.run(self.critic.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def rate(self, items: list[tuple[Path, str]], concurrency: int, options: dict) -> float:
        """videos/s of `Critic.score(path, prompt)`, `concurrency` at once."""
        from service.protocol import ScoreOptions

        opts = ScoreOptions(**options) if options else None

        async def go() -> float:
            sem = asyncio.Semaphore(concurrency)

            async def one(path: Path, prompt: str) -> None:
                async with sem:
                    await self.critic.score(path, prompt, opts)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(p, t) for p, t in items))
            return len(items) / (time.perf_counter() - t0)

        return self.run(go())

    def close(self) -> None:
        self.run(self.critic.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def label_rate(url: str, manifest: Path, out: Path, concurrency: int, extra: list[str]) -> tuple[float, float]:
    """(videos/s over the whole `lift label` command, videos/s over its own labeling time)."""
    out.unlink(missing_ok=True)  # from an empty output file, always
    summary = out.with_suffix(".summary.json")
    cmd = [sys.executable, "-m", "clients.cli", "label", str(manifest), "--out", str(out), "--server", url,
           "--concurrency", str(concurrency), "--no-progress", "--summary-json", str(summary), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **ENV})
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"lift label failed ({r.returncode}): {r.stderr[-2000:]}")
    s = json.loads(summary.read_text())
    return s["ok"] / took, s["ok"] / s["seconds"]


STUB_ITEMS = 1000
STUB = """
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

dim = {"label": "Normal", "score": 0.2, "expected_score": 0.3, "rationale": "canned " * 8,
       "probabilities": {"Good": 0.2, "Normal": 0.6, "Bad": 0.2}}
body = json.dumps({"id": "stub", "model": "stub", "reward": 0.3, "expected_reward": 0.3, "num_frames": 8,
                   "dimensions": {d: dim for d in ("semantic_consistency", "motion_smoothness", "video_fidelity")},
                   "timings_ms": {}}).encode()

async def score(request):
    await request.body()
    return Response(body, media_type="application/json")

async def ready(request):
    return Response(b'{"ready": true}', media_type="application/json")

app = Starlette(routes=[Route("/v1/score", score, methods=["POST"]), Route("/ready", ready)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


def stub_ceiling(items: list[tuple[Path, str]], tmp: Path, concurrency: int, repeat: int) -> tuple[float, float]:
    """Best (whole command, labeling time) videos/s of `lift label` against a replica answering at once, over
    STUB_ITEMS uploads of the same videos (distinct prompts, so distinct ids)."""
    from benchmarks.lift_servers import free_port
    from clients.processes import die_with_parent

    manifest = tmp / "stub_manifest.jsonl"
    with manifest.open("w") as f:
        for k in range(STUB_ITEMS):
            path, prompt = items[k % len(items)]
            f.write(json.dumps({"video": str(path), "prompt": f"{prompt} #{k}"}) + "\n")

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STUB, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("stub replica did not start")
            time.sleep(0.2)
        runs = [label_rate(url, manifest, tmp / f"stub_{i}.jsonl", concurrency, []) for i in range(repeat)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return max(r[0] for r in runs), max(r[1] for r in runs)


def warm(url: str, items: list[tuple[Path, str]], concurrency: int, options: dict) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(timeout=600) as c:
            async def one(path: Path, prompt: str) -> None:
                data = {"prompt": prompt}
                if options:
                    data["options"] = json.dumps(options)
                r = await c.post(f"{url}/v1/score", files={"video": (path.name, path.read_bytes(), "video/mp4")}, data=data)
                r.raise_for_status()

            await asyncio.gather(*(one(p, t) for p, t in items[:concurrency]))

    asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=128, help="videos per measured run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (one run of each side per round)")
    ap.add_argument("--model", type=Path, default=None, help="critic folder (default: build the tiny critic)")
    ap.add_argument("--max-reason-tokens", type=int, default=None, help="same for both sides (default: service's)")
    args = ap.parse_args()
    os.environ.update(ENV)

    with tempfile.TemporaryDirectory(prefix="lift-eff-") as tmp_s:
        tmp = Path(tmp_s)
        from service.tiny_critics import build_tiny_critic

        model = args.model or build_tiny_critic(tmp / "critic", family="qwen2_vl", seed=0)
        # Every run its own videos: an engine keeps each video's KV blocks in its prefix cache, so a second
        # pass over the same frames would measure the cache, not the engine (nor the client against it).
        items = make_videos(tmp, args.videos)  # warm-up and the stub's uploads
        runs = [(make_videos(tmp, args.videos, first=(2 * i + 1) * args.videos),
                 make_videos(tmp, args.videos, first=(2 * i + 2) * args.videos)) for i in range(args.repeat)]
        options = {"max_reason_tokens": args.max_reason_tokens} if args.max_reason_tokens else {}
        extra = ["--max-reason-tokens", str(args.max_reason_tokens)] if args.max_reason_tokens else []
        load_before = os.getloadavg()[0]

        env = {**ENV, "LIFT_MAX_INFLIGHT": str(args.concurrency), "LIFT_MAX_QUEUE": str(4 * args.concurrency)}
        engine: list[float] = []
        whole: list[float] = []
        inner: list[float] = []
        with lift_serve(model, engine="vllm", log_dir=tmp, replicas=1, env=env) as urls:
            local = InProcessEngine(model)
            try:
                local.rate(items[: args.concurrency], args.concurrency, options)  # warm-up
                warm(urls[0], items, args.concurrency, options)
                # Turn about, in alternating order, so that a change in the machine's load hits both sides
                # alike; each round's ratio compares two runs made next to each other.
                for i in range(args.repeat):
                    engine_items, label_items = runs[i]
                    manifest = write_manifest(tmp / f"manifest_{i}.jsonl", label_items)

                    def label_once() -> None:
                        w, n = label_rate(urls[0], manifest, tmp / f"labels_{i}.jsonl", args.concurrency, extra)
                        whole.append(w)
                        inner.append(n)

                    if i % 2 == 0:
                        engine.append(local.rate(engine_items, args.concurrency, options))
                        label_once()
                    else:
                        label_once()
                        engine.append(local.rate(engine_items, args.concurrency, options))
            finally:
                local.close()

        stub_whole, stub_inner = stub_ceiling(items, tmp, args.concurrency, min(args.repeat, 3))

    ratios = [w / e for w, e in zip(whole, engine)]
    inner_ratios = [n / e for n, e in zip(inner, engine)]
    e = statistics.median(engine)
    print(f"machine: {os.cpu_count()} CPU cores (load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} "
          f"at end), vLLM engine, {'tiny critic' if args.model is None else args.model}; {args.videos} videos per run, "
          f"concurrency {args.concurrency}, {args.repeat} rounds; "
          f"max_reason_tokens={args.max_reason_tokens or 'service default'}")
    print(f"{'path (median over rounds)':<62} {'videos/s':>9} {'of engine':>10}")
    rows = [("engine: in-process Critic.score", e),
            ("lift label, 1 replica: its labeling time", statistics.median(inner)),
            ("lift label, 1 replica: whole command (start-up included)", statistics.median(whole)),
            ("client ceiling: vs an instant stub (1000 uploads), labeling time", stub_inner),
            ("client ceiling: vs an instant stub (1000 uploads), whole command", stub_whole)]
    for name, vps in rows:
        print(f"{name:<62} {vps:>9.2f} {vps / e:>10.2f}")
    print("rounds (videos/s): engine " + ", ".join(f"{x:.2f}" for x in engine)
          + "; lift label whole " + ", ".join(f"{x:.2f}" for x in whole)
          + "; labeling time " + ", ".join(f"{x:.2f}" for x in inner))
    print("per-round lift label / engine: whole " + ", ".join(f"{x:.2f}" for x in ratios)
          + "; labeling time " + ", ".join(f"{x:.2f}" for x in inner_ratios))
    # The median of the rounds' ratios: each ratio is two runs made back to back, so a load change
    # between rounds (a shared machine) cancels out; the whole command, start-up included.
    print(f"client_efficiency={statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
