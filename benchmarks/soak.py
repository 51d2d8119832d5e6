"""Soak: N scores (mixed good, broken, oversize) at concurrency C against one `lift serve` replica (vLLM engine,
tiny critic) on the product's defaults (no LIFT_* setting changed: 64 MiB videos, 16 in the engine, 64 queued, the
idempotency store's 4,096 entries / 900 s); prints the server's RSS (its process tree) every 200 requests.

Every request carries an `Idempotency-Key`; a third of them repeat an earlier request (its key and its content),
as trainers' retries do, some while the first is still being scored: each repeat must get the first answer, byte for
byte, and the engine must score each distinct good request once (`lift_reward_count`). The oversize case is frames
whose .npy header declares 3100x3100 pixels (over the pixel limit: 413), so the default 64 MiB byte cap needs no
64 MiB uploads.

    python benchmarks/soak.py [--requests 2000] [--concurrency 32] [--warmup 2000]

Last line: `rss_growth_mb=X api_rss_growth_mb=Y five_xx=N repeats=R repeat_mismatches=M scored=S expected_scored=E`
(RSS growth from the first sample after warm-up to the last: the server's process tree, and its API process alone;
the warm-up is --warmup requests of the same mix, other keys and prompts, sent before and not measured).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.lift_servers import lift_serve  # noqa: E402

MAX_VIDEO_BYTES = 256 * 1024  # the sample videos' size cap (the server keeps its own default limit)
REPEAT_EVERY = 3  # every third request repeats an earlier one


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


def oversize_npy() -> bytes:
    """Frames whose header declares 3100x3100 pixels on a 3-byte body: refused on the header (413)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 1, 1, 3), np.uint8), allow_pickle=False)
    return buf.getvalue().replace(b"(1, 1, 1, 3)", b"(1, 3100, 3100, 3)")


def payloads(videos: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    """(kind, file name, bytes): good videos, broken bytes, a truncated file, oversize frames: 3 of 6 must be 4xx."""
    good = list(videos.values())
    return [("good", "v.mp4", good[0]), ("good", "v.mp4", good[1 % len(good)]), ("good", "v.mp4", good[0]),
            ("broken", "v.mp4", os.urandom(4000)), ("truncated", "v.mp4", good[0][: len(good[0]) // 3]),
            ("oversize", "f.npy", oversize_npy())]


def plan(n: int, seed: int = 0) -> list[tuple[int, bool]]:
    """Request i -> (k, repeat): the k-th distinct request (its payload: mix[k % len(mix)]), and whether it repeats
    it. Every REPEAT_EVERY-th request repeats a random recent one (some still in flight when it is sent)."""
    rng = random.Random(seed)
    out: list[tuple[int, bool]] = []
    k = 0
    for i in range(n):
        if i % REPEAT_EVERY == REPEAT_EVERY - 1 and k:
            out.append((rng.randrange(max(0, k - 64), k), True))
        else:
            out.append((k, False))
            k += 1
    return out


async def soak(url: str, pid: int, n: int, concurrency: int, mix: list[tuple[str, str, bytes]], tag: str = "soak"
               ) -> tuple[list[float], list[float], dict[str, int], dict[str, int]]:
    counts: dict[str, int] = {}
    stats = {"repeats": 0, "repeat_mismatches": 0, "expected_scored": 0}
    first_answer: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
    rss: list[float] = []  # the server's process tree: the API process, vLLM's engine core and worker
    api: list[float] = []  # the API process alone (where the idempotency store lives)
    done = 0
    sem = asyncio.Semaphore(concurrency)
    schedule = plan(n)
    loop = asyncio.get_running_loop()
    for k, repeat in schedule:
        if not repeat:
            first_answer[k] = loop.create_future()
            stats["expected_scored"] += mix[k % len(mix)][0] == "good"
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> None:
            nonlocal done
            first, repeat = schedule[i]  # the k-th distinct request
            kind, name, body = mix[first % len(mix)]
            async with sem:
                r = await client.post(f"{url}/v1/score", files={"video": (name, body, "application/octet-stream")},
                                      data={"prompt": f"a red square #{tag}{first}",
                                            "options": json.dumps({"max_reason_tokens": 4})},
                                      headers={"Idempotency-Key": f"{tag}-{first}"})
            label = f"{kind}{'-repeat' if repeat else ''}:{r.status_code}"
            counts[label] = counts.get(label, 0) + 1
            if repeat:
                stats["repeats"] += 1
                want = await first_answer[first]
                if r.status_code < 500 and want[0] < 500 and (r.status_code, r.content) != want:
                    stats["repeat_mismatches"] += 1
            else:
                first_answer[first].set_result((r.status_code, r.content))
            done += 1
            if done % 200 == 0:
                rss.append(tree_rss_mb(pid))
                api.append(psutil.Process(pid).memory_info().rss / 2**20)
                print(f"{done:>6} requests  server RSS {rss[-1]:8.1f} MB (API process {api[-1]:7.1f} MB)  "
                      f"{dict(sorted(counts.items()))}", flush=True)

        await asyncio.gather(*(one(i) for i in range(n)))
    return rss, api, counts, stats


def server_metric(url: str, name: str, having: str = "") -> float:
    """A metric of the server's /metrics, summed over the label sets that contain `having` (e.g. 'waited="true"')."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for labels, v in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)
               if having in labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2000,
                    help="requests of the same mix sent first and not measured (vLLM's allocator and prefix cache, "
                         "the idempotency store filling up); 0: the first 200 measured requests are the warm-up")
    ap.add_argument("--server-env", action="append", default=[], metavar="LIFT_X=V",
                    help="a departure from the defaults, for a comparison run (e.g. LIFT_IDEMPOTENCY_MAX_ENTRIES=0)")
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
        for name in [k for k in os.environ if k.startswith("LIFT_")]:  # the product's defaults: no LIFT_* setting
            print(f"ignoring {name} (the soak runs on the defaults)", file=sys.stderr)
            del os.environ[name]
        env = {"HF_HUB_OFFLINE": "1", **dict(kv.split("=", 1) for kv in args.server_env)}
        with lift_serve(model, engine="vllm", log_dir=root, env=env) as urls:
            port = int(urls[0].rsplit(":", 1)[1])
            pid = server_pid(port)
            before = {"scored": 0.0, "replays": 0.0, "waited": 0.0}
            if args.warmup:
                asyncio.run(soak(urls[0], pid, args.warmup, args.concurrency, payloads(videos), tag="warmup"))
                before = {"scored": server_metric(urls[0], "lift_reward_count"),
                          "replays": server_metric(urls[0], "lift_idempotent_replays_total"),
                          "waited": server_metric(urls[0], "lift_idempotent_replays_total", 'waited="true"')}
                print(f"warm-up: {args.warmup} requests done", flush=True)
            t0 = time.perf_counter()
            rss, api, counts, stats = asyncio.run(soak(urls[0], pid, args.requests, args.concurrency,
                                                       payloads(videos)))
            wall = time.perf_counter() - t0
            scored = server_metric(urls[0], "lift_reward_count") - before["scored"]
            replays = server_metric(urls[0], "lift_idempotent_replays_total") - before["replays"]
            waited = server_metric(urls[0], "lift_idempotent_replays_total", 'waited="true"') - before["waited"]
    five_xx = sum(v for k, v in counts.items() if k.split(":")[1].startswith("5"))
    w = 1 if len(rss) > 2 and not args.warmup else 0  # without --warmup the first 200 requests are the warm-up
    warm, growth, api_growth = rss[w], rss[-1] - rss[w], api[-1] - api[w]
    print(f"\n| requests | concurrency | repeats | wall s | RSS after warm-up MB | RSS at end MB | 5xx |")
    print(f"|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.requests} | {args.concurrency} | {stats['repeats']} | {wall:.0f} | {warm:.0f} | {rss[-1]:.0f} "
          f"| {five_xx} |")
    print(f"statuses: {dict(sorted(counts.items()))}")
    print(f"server: lift_reward_count={scored:.0f} (distinct good requests {stats['expected_scored']}), "
          f"lift_idempotent_replays_total={replays:.0f} (of which waited for the first: {waited:.0f})")
    print(f"API process RSS after warm-up {api[w]:.0f} MB, at end {api[-1]:.0f} MB"
          f"{' (server env: ' + ' '.join(args.server_env) + ')' if args.server_env else ''}")
    print(f"rss_growth_mb={growth:.1f} api_rss_growth_mb={api_growth:.1f} five_xx={five_xx} repeats={stats['repeats']} "
          f"repeat_mismatches={stats['repeat_mismatches']} scored={scored:.0f} "
          f"expected_scored={stats['expected_scored']}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
