"""Frames vs mp4: the same generated samples scored as `.npy` frames and as mp4 files, through one server.

    .venv/bin/python benchmarks/frames_vs_mp4.py [--samples 64] [--frames 16] [--concurrency 8] [--model DIR]

A trainer holds its samples as frames. Before issue 19 it had to encode each to mp4 to ask for a reward
(`clients.video.encode_frames`: H.264, crf 18, yuv420p); now it sends the frames as `.npy`
(`clients.rewards.frames_to_npy`). This measures both ways on `--samples` generated `--frames`-frame clips
(moving squares with jitter and noise, 96x128), through the same `lift serve` (tiny critic on vLLM unless
--model), each way timed from the frames in memory to the rewards (so the mp4 way includes its encoding),
turn about over `--rounds` rounds after a warm-up. Prints the rates, the bytes sent, what the encoding costs,
and how much the labels differ (the mp4 way judges compressed pixels: chroma subsampled, quantised), then, last,
`frames_vs_mp4=<frames samples/s / mp4 samples/s>`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.label_throughput import ENV  # noqa: E402
from benchmarks.lift_servers import lift_serve  # noqa: E402


def make_samples(n: int, frames: int) -> list[tuple[np.ndarray, str]]:
    from service.synthetic_videos import COLOURS, moving_square

    colours = list(COLOURS)
    out = []
    for i in range(n):
        c = colours[i % len(colours)]
        clip = moving_square(frames, 96, 128, colour=c, seed=i, jitter=0.15 * (i % 3), noise=0.1 * (i % 2))
        out.append((clip, f"a {c} square moving to the right ({i})"))
    return out


async def run_way(url: str, samples: list[tuple[np.ndarray, str]], way: str, concurrency: int) -> dict[str, Any]:
    from clients import AsyncRewardClient
    from clients.rewards import frames_to_npy, score_npy
    from clients.video import encode_frames

    gate = asyncio.Semaphore(concurrency)
    sent = 0
    encode_s = 0.0

    async with AsyncRewardClient(url, max_connections=concurrency) as client:
        async def one(frames: np.ndarray, prompt: str) -> Any:
            nonlocal sent, encode_s
            async with gate:
                t0 = time.perf_counter()
                if way == "npy":
                    data = await asyncio.to_thread(frames_to_npy, frames)
                else:
                    data = await asyncio.to_thread(encode_frames, frames, 8)
                encode_s += time.perf_counter() - t0
                sent += len(data)
                if way == "npy":
                    return await score_npy(client, data, prompt, fps=8.0)
                return await client.score(data, prompt)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(f, p) for f, p in samples))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "rate": len(samples) / wall, "bytes": sent, "encode_s": encode_s, "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="critic folder (default: build the tiny critic)")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lift-fvm-") as tmp:
        tmpdir = Path(tmp)
        from service.tiny_critics import build_tiny_critic

        model = args.model or build_tiny_critic(tmpdir / "critic", family="qwen2_vl", seed=0)
        samples = make_samples(args.samples, args.frames)
        env = {**ENV, "LIFT_MAX_INFLIGHT": str(args.concurrency)}
        with lift_serve(model, engine=args.engine, log_dir=tmpdir, env=env) as [url]:
            asyncio.run(run_way(url, samples[:4], "npy", 4))  # warm-up: first requests allocate and compile
            asyncio.run(run_way(url, samples[:4], "mp4", 4))
            runs: dict[str, list[dict[str, Any]]] = {"npy": [], "mp4": []}
            for r in range(args.rounds):
                order = ("npy", "mp4") if r % 2 == 0 else ("mp4", "npy")  # turn about: load hits both alike
                for way in order:
                    runs[way].append(asyncio.run(run_way(url, samples, way, args.concurrency)))

    def med(way: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[way])

    npy_res, mp4_res = runs["npy"][-1]["results"], runs["mp4"][-1]["results"]
    dims = list(npy_res[0].dimensions)
    label_diff = sum(a.dimensions[d].label != b.dimensions[d].label for a, b in zip(npy_res, mp4_res) for d in dims)
    reward_diff = [abs(a.reward - b.reward) for a, b in zip(npy_res, mp4_res)]
    exp_diff = [abs(a.expected_reward - b.expected_reward) for a, b in zip(npy_res, mp4_res)]
    n = len(samples)
    print(f"# {n} samples x {args.frames} frames (96x128), concurrency {args.concurrency}, {args.rounds} rounds "
          f"turn about, engine {args.engine}, medians")
    print(f"{'way':<6} {'samples/s':>10} {'wall s':>8} {'encode s (sum)':>16} {'MB sent':>8}")
    for way in ("npy", "mp4"):
        print(f"{way:<6} {med(way, 'rate'):>10.2f} {med(way, 'wall_s'):>8.2f} {med(way, 'encode_s'):>16.2f} "
              f"{med(way, 'bytes') / 1e6:>8.2f}")
    print(f"labels that differ (npy vs mp4): {label_diff} of {n * len(dims)} "
          f"({100 * label_diff / (n * len(dims)):.1f} %)")
    print(f"|reward difference|: mean {statistics.mean(reward_diff):.4f}, max {max(reward_diff):.4f}; "
          f"|expected_reward difference|: mean {statistics.mean(exp_diff):.4f}, max {max(exp_diff):.4f}")
    print(f"frames_vs_mp4={med('npy', 'rate') / med('mp4', 'rate'):.2f}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    raise SystemExit(main())
