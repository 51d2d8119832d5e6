"""Soak: N scores (mixed good, broken, oversize) at concurrency C against one `lift serve` replica (vLLM engine,
tiny critic, the product's memory defaults); prints the server's RSS (its process tree) every 200 requests.

    python benchmarks/soak.py [--requests 2000] [--concurrency 32]

Last line: `rss_growth_mb=X five_xx=N` (growth from the first sample after warm-up to the last).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.lift_servers import lift_serve  # noqa: E402

MAX_VIDEO_BYTES = 256 * 1024


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def server_pid(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise RuntimeError(f"no process listens on {port}")


def payloads(videos: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Good videos, broken bytes, a truncated file, an oversize upload: 3 of 6 requests must be 4xx."""
    good = list(videos.values())
    return [("good", good[0]), ("good", good[1 % len(good)]), ("good", good[0]),
            ("broken", os.urandom(4000)), ("truncated", good[0][: len(good[0]) // 3]),
            ("oversize", os.urandom(MAX_VIDEO_BYTES + 1024))]


async def soak(url: str, pid: int, n: int, concurrency: int, mix: list[tuple[str, bytes]]) -> tuple[list[float], dict]:
    counts: dict[str, int] = {}
    rss: list[float] = []
    done = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> None:
            nonlocal done
            kind, body = mix[i % len(mix)]
            async with sem:
                r = await client.post(f"{url}/v1/score", files={"video": ("v.mp4", body, "video/mp4")},
                                      data={"prompt": "a red square", "options": json.dumps({"max_reason_tokens": 4})})
            key = f"{kind}:{r.status_code}"
            counts[key] = counts.get(key, 0) + 1
            done += 1
            if done % 200 == 0:
                rss.append(tree_rss_mb(pid))
                print(f"{done:>6} requests  server RSS {rss[-1]:8.1f} MB  {dict(sorted(counts.items()))}", flush=True)

        await asyncio.gather(*(one(i) for i in range(n)))
    return rss, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    from service.synthetic_videos import moving_square, real_world_videos, write_video
    from service.tiny_critics import build_tiny_critic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_critic(root / "critic", family="qwen2_vl", seed=0)
        videos = {"square": write_video(root / "square", moving_square(colour="red", seed=1), fps=8).read_bytes()}
        real = real_world_videos().get("bikes")
        if real is not None and real.stat().st_size <= MAX_VIDEO_BYTES:
            videos["bikes"] = real.read_bytes()
        env = {"HF_HUB_OFFLINE": "1", "LIFT_MAX_VIDEO_BYTES": str(MAX_VIDEO_BYTES), "LIFT_MAX_INFLIGHT": "16",
               "LIFT_MAX_QUEUE": str(args.concurrency * 2)}
        with lift_serve(model, engine="vllm", log_dir=root, env=env) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            pid = server_pid(port)
            t0 = time.perf_counter()
            rss, counts = asyncio.run(soak(urls[0], pid, args.requests, args.concurrency, payloads(videos)))
            wall = time.perf_counter() - t0
    five_xx = sum(v for k, v in counts.items() if k.split(":")[1].startswith("5"))
    warm = rss[1] if len(rss) > 2 else rss[0]  # the first 200 requests are warm-up (caches, allocator pools)
    growth = rss[-1] - warm
    print(f"\n| requests | concurrency | wall s | RSS after warm-up MB | RSS at end MB | 5xx |")
    print(f"|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.requests} | {args.concurrency} | {wall:.0f} | {warm:.0f} | {rss[-1]:.0f} | {five_xx} |")
    print(f"statuses: {dict(sorted(counts.items()))}")
    print(f"rss_growth_mb={growth:.1f} five_xx={five_xx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
