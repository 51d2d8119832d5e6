"""Where a score's time goes on the vLLM path: each part measured on its own, same critic, same videos.

    .venv/bin/python benchmarks/profile_vllm_path.py [--preset realistic] [--videos 32] [--concurrency 32]

Builds the critic (`lift make-tiny-critic --preset ...`, qwen2_vl) unless --model, makes real H.264 videos,
starts the vLLM engine once, then measures at the given concurrency (wall ms per video, i.e. the batch's wall
time divided by the videos in it):
  decode         container probe + decord seek/decode of 8 frames (a worker thread per video)
  prompt         chat template + tokenizer for the three questions (the family's vllm_prompt)
  label round    the 1-token label requests alone, all sent at once (no prefix computed first)
  label staged   the same, one request per video first (it computes the shared prefix), then the rest
  reason round   the reason requests alone (prompt already cached): as before, a grammar forcing ". " and
                 printable characters; and as now, ". " appended to the prompt and free generation
  step overhead  1-token requests on a 16-token text prompt: the engine's cost per request without the model
  whole score    Critic.score end to end (what the service does); and again on a second engine with vLLM's CPU
                 default KV block of 128 tokens (before): prefix reuse is per whole block
plus the prompt tokens computed and served from the prefix cache in each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # the table alone on stdout
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


async def _batch(coros: list[Any], concurrency: int) -> tuple[float, list[Any]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    t0 = time.perf_counter()
    out = await asyncio.gather(*(one(c) for c in coros))
    return time.perf_counter() - t0, out


def _tokens(outs: list[Any]) -> tuple[int, int]:
    prompt = sum(len(o.prompt_token_ids or []) for o in outs)
    cached = sum(o.num_cached_tokens or 0 for o in outs)
    return prompt - cached, cached


class _Rows(list):
    """Rows of the table; each is also written to stderr as it is measured (a long run shows progress)."""

    def append(self, row: tuple) -> None:
        super().append(row)
        print("measured:", *row, file=sys.stderr, flush=True)


async def profile(model_dir: Path, video_sets: list[list[Path]], concurrency: int, max_reason_tokens: int) -> list[tuple]:
    """`video_sets`: four lists of distinct videos, one per round that must compute its frames (the prefix cache
    keeps every video's blocks, so a round on videos already seen would measure the cache)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from service.critic import Critic
    from service.engines.base import REASON_CHARS
    from service.families.base import PromptInputs
    from service.protocol import ScoreOptions
    from service.rubric import DIMENSION_NAMES

    critic = Critic.from_pretrained(model_dir, engine="vllm", dtype="float32", max_model_len=4096, max_num_seqs=256)
    await critic.start()
    engine = critic.engine
    family = engine.family
    rows: list[tuple] = _Rows()
    all_at_once, staged_set, whole_set, before_set = video_sets
    n = len(all_at_once)
    try:
        await critic.score(before_set[0], "warm up", ScoreOptions(max_reason_tokens=max_reason_tokens))

        wall, frames = await _batch([asyncio.to_thread(critic.decode, v) for v in all_at_once], concurrency)
        rows.append(("decode", wall / n * 1000, "", ""))
        _, staged_frames = await _batch([asyncio.to_thread(critic.decode, v) for v in staged_set], concurrency)

        def prompts_of(video: Any, caption: str) -> dict[str, PromptInputs]:
            return {d: family.vllm_prompt(caption, d, video) for d in DIMENSION_NAMES}

        t0 = time.perf_counter()
        built = [prompts_of(f, f"caption {i} for the label round") for i, f in enumerate(frames)]
        rows.append(("prompt (3 questions)", (time.perf_counter() - t0) / n * 1000, "", ""))

        prefixes = list(engine._prefixes)

        def label_requests(ps: dict[str, PromptInputs]) -> list[Any]:
            return [engine._run(p, list(prefix), engine._label_params(prefix)) for p in ps.values() for prefix in prefixes]

        wall, outs = await _batch([c for ps in built for c in label_requests(ps)], concurrency * len(prefixes) * 3)
        rows.append(("label round, all at once (before)", wall / n * 1000, *_tokens(outs)))

        staged = [prompts_of(f, f"caption {i} for the staged label round") for i, f in enumerate(staged_frames)]

        async def staged_labels(ps: dict[str, PromptInputs]) -> list[Any]:
            first_dim = next(iter(ps))
            first = await engine._run(ps[first_dim], [], engine._label_params(()))
            rest = [engine._run(p, list(prefix), engine._label_params(prefix)) for d, p in ps.items()
                    for prefix in prefixes if (d, prefix) != (first_dim, ())]
            return [first, *await asyncio.gather(*rest)]

        wall, outs = await _batch([staged_labels(ps) for ps in staged], concurrency)
        rows.append(("label round, shared prefix first (now)", wall / n * 1000, *_tokens([o for group in outs for o in group])))

        good = family.label_token_ids()["Good"]
        regex = r"\. " + REASON_CHARS + "{0," + str(8 * max_reason_tokens) + "}"
        grammar = SamplingParams(max_tokens=max_reason_tokens, temperature=0.0,
                                 structured_outputs=StructuredOutputsParams(regex=regex))
        free = SamplingParams(max_tokens=max_reason_tokens, temperature=0.0)
        for name, suffix, params in (("reason round, grammar (before)", good, grammar),
                                     ("reason round, '.' in the prompt (now)", good + engine._reason_prefix_ids["Good"], free)):
            wall, outs = await _batch([engine._run(p, suffix, params) for ps in staged for p in ps.values()],
                                      concurrency * 3)
            gen = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append((name, wall / n * 1000, *_tokens(outs), gen))

        from vllm.inputs import TokensPrompt

        short = family.tokenizer("a short text prompt about a video of a square", add_special_tokens=False).input_ids
        short_params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

        async def text_request(i: int) -> Any:
            final = None
            async for final in engine._engine.generate(TokensPrompt(prompt_token_ids=[*short, i % 50]), short_params,
                                                        f"text-{i}"):
                pass
            return final

        wall, outs = await _batch([text_request(i) for i in range(n * 15)], concurrency * 15)
        rows.append(("step overhead (15 text requests)", wall / n * 1000, *_tokens(outs)))

        opts = ScoreOptions(max_reason_tokens=max_reason_tokens)
        wall, _ = await _batch([critic.score(v, f"whole score {i}", opts) for i, v in enumerate(whole_set)], concurrency)
        rows.append((f"whole score, KV block {engine.block_size} (now)", wall / n * 1000, "", ""))
    finally:
        await critic.stop()
    rows.append(("whole score, KV block 128 (before)",
                 await _whole_score(model_dir, before_set, concurrency, max_reason_tokens, block_size=128), "", ""))
    return rows


async def _whole_score(model_dir: Path, videos: list[Path], concurrency: int, max_reason_tokens: int,
                       block_size: int) -> float:
    from service.critic import Critic
    from service.protocol import ScoreOptions

    critic = Critic.from_pretrained(model_dir, engine="vllm", dtype="float32", max_model_len=4096, max_num_seqs=256,
                                    block_size=block_size)
    await critic.start()
    try:
        opts = ScoreOptions(max_reason_tokens=max_reason_tokens)
        await critic.score(videos[0], "warm up", opts)  # the first video warms up, the others are measured
        wall, _ = await _batch([critic.score(v, f"whole score {i}", opts) for i, v in enumerate(videos[1:])], concurrency)
        return wall / (len(videos) - 1) * 1000
    finally:
        await critic.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="realistic", choices=("tiny", "realistic"))
    ap.add_argument("--model", type=Path, help="critic folder (default: build one of --preset)")
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-reason-tokens", type=int, default=40)
    args = ap.parse_args()

    from benchmarks.critic_throughput import make_videos
    from service.tiny_critics import build_tiny_critic

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_critic(Path(tmp) / "critic", family="qwen2_vl", seed=0, preset=args.preset)
        sets = [make_videos(Path(tmp), args.videos, first=k * args.videos) for k in range(3)]
        sets.append(make_videos(Path(tmp), args.videos + 1, first=3 * args.videos))  # + a warm-up video
        rows = asyncio.run(profile(model_dir, sets, args.concurrency, args.max_reason_tokens))
    print(f"\nvLLM path profile, {args.preset} qwen2_vl critic, {args.videos} videos at concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPU cores; ms per video (batch wall / videos)")
    print(f"{'part':<36}{'ms/video':>10}{'computed':>10}{'cached':>10}{'generated':>11}")
    for name, ms, computed, cached, *gen in rows:
        print(f"{name:<36}{ms:>10.1f}{computed!s:>10}{cached!s:>10}{(gen[0] if gen else '')!s:>11}")


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    main()
