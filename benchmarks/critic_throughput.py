"""Critic throughput: the original LiFT way vs the vLLM engine, same tiny critic, same videos, one run.

(a) original: transformers, the video decoded again for every question, the three questions one after
    another, batch 1, greedy `generate` of the whole answer;
(b) the vLLM engine through `Critic.score` (decode once, three questions together, prefix sharing, continuous
    batching) at concurrency 1, 8 and 32, greedy, the same maximum of new tokens.
Prints a table, then `speedup=<b at 32 over a>`.

Usage: python benchmarks/critic_throughput.py [--videos 48] [--baseline-videos 6] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_videos(folder: Path, n: int) -> list[Path]:
    from service.synthetic_videos import COLOURS, moving_square, write_video

    colours = list(COLOURS)
    return [write_video(folder / f"v{i}", moving_square(num_frames=24, height=96, width=128, colour=colours[i % len(colours)],
                                                          seed=i, jitter=0.1 * (i % 3)), codec="h264_mp4")
            for i in range(n)]


def original_way(model_dir: Path, videos: list[Path], max_new_tokens: int) -> float:
    """LiFT's evaluation loop: per question, decode the video and generate the answer; batch 1."""
    import torch
    from transformers import AutoModelForImageTextToText

    from service.families.qwen2_vl import Qwen2VLFamily
    from service.media import decode_video
    from service.rubric import DIMENSION_NAMES

    family = Qwen2VLFamily(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for video in videos:
            for dim in DIMENSION_NAMES:
                frames = decode_video(video, 8)
                inputs = family.hf_prompt("a coloured square moving", dim, frames)
                model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return time.perf_counter() - t0


async def engine_way(model_dir: Path, videos: list[Path], max_new_tokens: int, concurrencies: list[int]) -> dict:
    from service.critic import Critic
    from service.protocol import ScoreOptions

    critic = Critic.from_pretrained(model_dir, engine="vllm", dtype="float32", max_model_len=2048, max_num_seqs=256)
    await critic.start()
    opts = ScoreOptions(max_reason_tokens=max_new_tokens)
    await critic.score(videos[0], "warm up", opts)  # grammar compile, first-request costs
    results = {}
    for conc in concurrencies:
        sem = asyncio.Semaphore(conc)
        latencies: list[float] = []

        async def one(video: Path) -> None:
            async with sem:
                t = time.perf_counter()
                await critic.score(video, "a coloured square moving", opts)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(v) for v in videos))
        results[conc] = (time.perf_counter() - t0, sorted(latencies))
    await critic.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--baseline-videos", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", type=Path, help="critic folder (default: build the tiny critic)")
    args = ap.parse_args()

    from service.tiny_critics import build_tiny_critic

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = args.model or build_tiny_critic(tmp_path / "critic", family="qwen2_vl", seed=0)
        videos = make_videos(tmp_path, args.videos)
        base_s = original_way(model_dir, videos[: args.baseline_videos], args.max_new_tokens)
        base_vps = args.baseline_videos / base_s
        runs = asyncio.run(engine_way(model_dir, videos, args.max_new_tokens, [1, 8, 32]))

    print(f"\ncritic throughput, tiny qwen2_vl critic, 8 frames, greedy, max new tokens {args.max_new_tokens}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'way':<34}{'videos':>8}{'videos/s':>11}{'p50 s':>9}{'p95 s':>9}")
    print(f"{'(a) original: transformers, bs=1':<34}{args.baseline_videos:>8}{base_vps:>11.3f}"
          f"{base_s / args.baseline_videos:>9.2f}{'':>9}")
    for conc, (wall, lat) in runs.items():
        p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"{'(b) vLLM engine, concurrency ' + str(conc):<34}{len(lat):>8}{len(lat) / wall:>11.3f}{p50:>9.2f}{p95:>9.2f}")
    wall32, lat32 = runs[32]
    print(f"speedup={(len(lat32) / wall32) / base_vps:.2f}")


if __name__ == "__main__":
    main()
