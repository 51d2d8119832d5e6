"""Critic throughput: the original LiFT way vs the vLLM engine, same critic, same kind of videos, one run, for two critics.

Critics (both qwen2_vl, random weights, built offline): `tiny` (256 visual tokens, a 2-layer 128-wide LLM: per-
request overhead sets the pace) and `realistic` (`lift make-tiny-critic --preset realistic`: LiFT-Critic-13B's
token proportions, 8 frames x ~200 visual tokens, LiFT's questions, ~40-token answers, a 4-layer 256-wide LLM,
the vision tower ~10 % of a question's compute as in the 13B critic).
For each:
(a) original: transformers, the video decoded again for every question, the three questions one after
    another, batch 1, `generate` of the whole answer: sampled at T=0.2 as LiFT's seed does, and greedy;
(b) the vLLM engine through `Critic.score` (decode once, three questions together, prefix computed once,
    continuous batching) at concurrency 1, 8 and 32, greedy, the same maximum of new tokens; each run on videos of
    its own (a second pass over the same frames would measure the prefix cache, not the engine).
(b') the same at concurrency 32 with vLLM's CPU worker bound to every core (VLLM_CPU_OMP_THREADS_BIND): by default
    vLLM keeps one core for its scheduler, half of a 2-core host; shown beside, not used for the speedup.
Prints a table per critic, then one `speedup=<b at 32 over a, T=0.2>` line per critic, the realistic one last.

Usage: python benchmarks/critic_throughput.py [--videos 48] [--baseline-videos 24] [--max-new-tokens 40]
                                              [--critics tiny,realistic]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # the table alone on stdout
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def make_videos(folder: Path, n: int, first: int = 0) -> list[Path]:
    """`n` distinct H.264 videos (numbered from `first`). A run never re-scores another run's videos: the engine
    keeps every video's KV blocks in its prefix cache, so a second pass over the same frames measures the cache."""
    from service.synthetic_videos import COLOURS, moving_square, unique_background, write_video

    colours = list(COLOURS)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"v{i}", moving_square(num_frames=24, height=96, width=128, colour=colours[i % len(colours)],
                                                          background=unique_background(i), seed=i, jitter=0.1 * (i % 3)),
                        codec="h264_mp4")
            for i in range(first, first + n)]


def original_way(model_dir: Path, videos: list[Path], max_new_tokens: int, temperature: float,
                 dtype: str = "float32") -> float:
    """LiFT's evaluation loop: per question, decode the video and generate the answer; batch 1."""
    import torch
    from transformers import AutoModelForImageTextToText

    from service.families.qwen2_vl import Qwen2VLFamily
    from service.media import decode_video
    from service.rubric import DIMENSION_NAMES

    family = Qwen2VLFamily(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # LiFT ran its loop on the GPU
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype="auto" if dtype == "auto" else getattr(torch, dtype)).to(device).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for video in videos:
            for dim in DIMENSION_NAMES:
                frames = decode_video(video, 8)
                inputs = {k: v.to(device) if hasattr(v, "to") else v
                          for k, v in family.hf_prompt("a coloured square moving", dim, frames).items()}
                if temperature > 0:
                    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
                else:
                    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return time.perf_counter() - t0


async def engine_way(model_dir: Path, videos: dict[int, list[Path]], max_new_tokens: int, all_cores: bool = False,
                     dtype: str = "float32") -> dict:
    """Videos per concurrency, each list its own (none scored twice), plus one more for the warm-up under -1."""
    from service.critic import Critic
    from service.protocol import ScoreOptions

    critic = Critic.from_pretrained(model_dir, engine="vllm", dtype=dtype, max_model_len=4096, max_num_seqs=256)
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if all_cores:  # read by the worker when it starts
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{(os.cpu_count() or 1) - 1}"
    try:
        await critic.start()
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved
    opts = ScoreOptions(max_reason_tokens=max_new_tokens)
    await critic.score(videos[-1][0], "warm up", opts)  # first-request costs
    results = {}
    for conc in sorted(c for c in videos if c > 0):
        sem = asyncio.Semaphore(conc)
        latencies: list[float] = []

        async def one(video: Path) -> None:
            async with sem:
                t = time.perf_counter()
                await critic.score(video, "a coloured square moving", opts)
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(v) for v in videos[conc]))
        results[conc] = (time.perf_counter() - t0, sorted(latencies))
    await critic.stop()
    return results


def engine_row(label: str, wall: float, latencies: list[float]) -> str:
    """One table row of an engine run: videos, videos/s, p50 and p95 latency (`latencies` sorted)."""
    n = len(latencies)
    p50, p95 = latencies[n // 2], latencies[min(n - 1, int(0.95 * n))]
    return f"{label:<40}{n:>8}{n / wall:>11.3f}{p50:>9.2f}{p95:>9.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--baseline-videos", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--critics", default="tiny,realistic", help="comma-separated presets, in the order measured")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="both ways in this dtype (bfloat16: the service's CPU default, AMX/AVX512-BF16 kernels)")
    ap.add_argument("--no-all-cores", action="store_true", help="skip the (b') row")
    args = ap.parse_args()

    from service.tiny_critics import build_tiny_critic

    tables, speedups = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # every run its own videos: the original's, then per engine run and concurrency (plus a warm-up video)
        plan = [("original", -2, args.baseline_videos), ("engine", -1, 1), ("engine", 1, args.videos),
                ("engine", 8, args.videos), ("engine", 32, args.videos)]
        if not args.no_all_cores:
            plan += [("all cores", -1, 1), ("all cores", 32, args.videos)]
        first, sets = 0, {}
        for way, conc, n in plan:
            sets.setdefault(way, {})[conc] = make_videos(tmp_path, n, first)
            first += n
        for preset in args.critics.split(","):
            model_dir = build_tiny_critic(tmp_path / preset, family="qwen2_vl", seed=0, preset=preset)
            # the original loop caches nothing between videos, so both of its runs may use the same videos
            base = {t: original_way(model_dir, sets["original"][-2], args.max_new_tokens, t, args.dtype) for t in (0.2, 0.0)}
            runs = asyncio.run(engine_way(model_dir, sets["engine"], args.max_new_tokens, dtype=args.dtype))
            all_cores = None if args.no_all_cores else asyncio.run(
                engine_way(model_dir, sets["all cores"], args.max_new_tokens, all_cores=True, dtype=args.dtype))
            lines = [f"\ncritic throughput, {preset} qwen2_vl critic, 8 frames, max new tokens {args.max_new_tokens}, "
                     f"{os.cpu_count()} CPU cores, {args.dtype}",
                     f"{'way':<40}{'videos':>8}{'videos/s':>11}{'p50 s':>9}{'p95 s':>9}"]
            for t, wall in base.items():
                label = f"(a) original, bs=1, {'T=0.2 sampled' if t else 'greedy'}"
                lines.append(f"{label:<40}{args.baseline_videos:>8}{args.baseline_videos / wall:>11.3f}"
                             f"{wall / args.baseline_videos:>9.2f}{'':>9}")
            lines += [engine_row(f"(b) vLLM engine, greedy, concurrency {conc}", *run) for conc, run in runs.items()]
            if all_cores:
                lines.append(engine_row("(b') same, c=32, worker on all cores", *all_cores[32]))
            wall32, lat32 = runs[32]
            tables.append("\n".join(lines))
            speedups.append(f"speedup={(len(lat32) / wall32) / (args.baseline_videos / base[0.2]):.2f} critic={preset}")
            print(tables[-1], file=sys.stderr, flush=True)  # progress; the summary goes to stdout at the end
    print("\n".join(tables))
    print("\n".join(speedups))


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    main()
