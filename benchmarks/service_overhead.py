"""HTTP overhead of the scoring service: the same workload straight into the engine and through HTTP.

One vLLM engine (tiny critic), one run. For concurrency 1, 8 and 32:
  direct: `await critic.score(path, prompt)` from the engine's own event loop;
  http:   `POST /v1/score {"video": {"path": ...}}` to the real app (uvicorn on that same loop, as
          `lift serve` runs it), sent by a client in a separate process at the lowest CPU
          priority (so the client's CPU is not counted against the server, as in production).
Prints throughput and p50/p95/p99 latency per mode and concurrency, then
`overhead=<1 - http throughput / direct throughput at 32>` (target <= 0.05).

Usage: python benchmarks/service_overhead.py [--requests 96] [--rounds 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a coloured square moving across the frame"
CONCURRENCY = (1, 8, 32)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {"rps": len(latencies) / wall, "p50": percentile(latencies, 50) * 1000, "p95": percentile(latencies, 95) * 1000,
            "p99": percentile(latencies, 99) * 1000}


# ---- client process -------------------------------------------------------------------------------
async def http_client(url: str, names: list[str], concurrency: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        # open the connections first: connection setup is not what is measured
        await asyncio.gather(*(client.get("/health") for _ in range(concurrency)))
        queue = list(names)
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while queue:
                name = queue.pop()
                t0 = time.perf_counter()
                r = await client.post("/v1/score", json={"prompt": PROMPT, "video": {"path": name}})
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {**summary(latencies, wall), "errors": errors}


def run_http(url: str, names: list[str], concurrency: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--client", url, "--concurrency", str(concurrency), "--names", ",".join(names)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- server side ----------------------------------------------------------------------------------
async def direct(critic: Any, root: Path, names: list[str], concurrency: int) -> dict[str, Any]:
    queue = list(names)
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            name = queue.pop()
            t0 = time.perf_counter()
            await critic.score(root / name, PROMPT)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {**summary(latencies, time.perf_counter() - t0), "errors": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=96, help="requests per mode and concurrency (default 96)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating direct/http rounds; the best of each is kept")
    ap.add_argument("--model", type=Path, default=None, help="critic folder (default: build the tiny critic)")
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--names", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        # Lowest CPU priority: on a shared small host the client's own CPU is not the server's overhead.
        os.nice(19)
        print(json.dumps(asyncio.run(http_client(args.client, args.names.split(","), args.concurrency))))
        return 0

    import uvicorn

    from service.app import create_app
    from service.app.settings import ServiceSettings
    from service.critic import Critic
    from service.synthetic_videos import COLOURS, moving_square, write_video
    from service.tiny_critics import build_tiny_critic

    work = Path(tempfile.mkdtemp(prefix="lift-bench-"))
    model = args.model or build_tiny_critic(work / "critic", family="qwen2_vl", seed=0)
    root = work / "media"
    root.mkdir()
    colours = list(COLOURS)
    videos = [write_video(root / f"v{i}", moving_square(num_frames=24, height=96, width=128, colour=colours[i % len(colours)], seed=i))
              for i in range(16)]
    names = [videos[i % len(videos)].name for i in range(args.requests)]

    # Production logging (one JSON line per request), into a file so this output stays a table.
    from service.app.logs import JsonFormatter

    handler = logging.FileHandler(work / "service.log")
    handler.setFormatter(JsonFormatter())
    for name in ("lift", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    critic = Critic.from_pretrained(model, engine="vllm", dtype="float32", max_model_len=2048, max_num_seqs=64)
    print("starting the engine ...", file=sys.stderr, flush=True)
    on_loop(critic.start())
    settings = ServiceSettings(media_root=root, max_inflight=64, max_queue=256, port=0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, critic), host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    serving = asyncio.run_coroutine_threadsafe(server.serve(), loop)
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    print("warming up ...", file=sys.stderr, flush=True)
    on_loop(direct(critic, root, names[:16], 8))
    run_http(url, names[:16], 8)

    rows: list[tuple[str, int, dict[str, Any]]] = []
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for c in CONCURRENCY:
        for _ in range(args.rounds):  # alternate, so drift on a shared CPU hits both modes alike
            for mode in ("direct", "http"):
                r = on_loop(direct(critic, root, names, c)) if mode == "direct" else run_http(url, names, c)
                print(f"  {mode} c={c}: {r['rps']:.2f} req/s", file=sys.stderr, flush=True)
                best = results.get((mode, c))
                if best is None or r["rps"] > best["rps"]:
                    results[(mode, c)] = r
        for mode in ("direct", "http"):
            rows.append((mode, c, results[(mode, c)]))

    server.should_exit = True
    serving.result(timeout=60)
    on_loop(critic.stop())

    print(f"{'mode':<8}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for mode, c, r in rows:
        print(f"{mode:<8}{c:>5}{r['rps']:>9.2f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}{r['errors']:>8}")
    overhead = 1 - results[("http", 32)]["rps"] / results[("direct", 32)]["rps"]
    print(f"overhead={overhead:.4f}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
