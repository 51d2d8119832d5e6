"""How far a critic's label probabilities move with the compute dtype: float32 (the reference), bfloat16 (what
the service computes in on a CPU, and what VILA-1.5's release holds) and float16 (what LiFT's scripts ran).

The same critic (tiny random, built offline: `qwen2_vl` and a converted 13B-shaped `vila` unless --critics), the
same fresh videos, the transformers reference engine in each dtype (the vLLM CPU engine runs float16 as bfloat16,
so the reference is where the two can be told apart). Prints one table row per critic x dtype pair: the largest
and mean |p_a - p_b| over videos x dimensions x labels, and how many greedy labels differ.

Usage: python benchmarks/dtype_probabilities.py [--videos 16] [--critics qwen2_vl,vila]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DTYPES = ("float32", "bfloat16", "float16")
PAIRS = (("bfloat16", "float32"), ("float16", "float32"), ("bfloat16", "float16"))


def build_critic(kind: str, root: Path) -> Path:
    from service.tiny_critics import build_tiny_critic

    if kind == "qwen2_vl":
        return Path(build_tiny_critic(root / "qwen2_vl", family="qwen2_vl", seed=3))
    from service.families.vila.convert import convert_vila

    src = Path(build_tiny_critic(root / "vila_src", family="vila", seed=3, with_lora=True))
    convert_vila(src, root / "vila", lora_dir=src / "lora")
    return root / "vila"


def probabilities(model_dir: Path, videos: list[Path], dtype: str) -> list[dict[str, dict[str, float]]]:
    from service.critic import Critic
    from service.protocol import ScoreOptions

    async def run() -> list[dict[str, dict[str, float]]]:
        critic = Critic.from_pretrained(model_dir, engine="transformers", dtype=dtype)
        await critic.start()
        try:
            out = []
            for i, video in enumerate(videos):
                r = await critic.score(video, f"a square of colour {i}", ScoreOptions(max_reason_tokens=1))
                out.append({d: s.probabilities.model_dump() for d, s in r.dimensions.items()})
            return out
        finally:
            await critic.stop()

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--critics", default="qwen2_vl,vila")
    args = ap.parse_args()
    from benchmarks.critic_throughput import make_videos

    with tempfile.TemporaryDirectory(prefix="lift-dtype-") as tmp:
        root = Path(tmp)
        videos = make_videos(root / "videos", args.videos)
        print(f"# transformers reference engine, {args.videos} fresh videos x 3 dimensions x 3 labels per row")
        print(f"{'critic':<9} {'a vs b':<20} {'max |dp|':>9} {'mean |dp|':>10} {'labels differ':>14}")
        for kind in args.critics.split(","):
            model = build_critic(kind, root)
            probs = {dtype: probabilities(model, videos, dtype) for dtype in DTYPES}
            for a, b in PAIRS:
                diffs, flips, n = [], 0, 0
                for pa, pb in zip(probs[a], probs[b]):
                    for dim in pa:
                        diffs += [abs(pa[dim][k] - pb[dim][k]) for k in pa[dim]]
                        flips += max(pa[dim], key=pa[dim].get) != max(pb[dim], key=pb[dim].get)
                        n += 1
                print(f"{kind:<9} {a + ' vs ' + b:<20} {max(diffs):>9.2e} {sum(diffs) / len(diffs):>10.2e} "
                      f"{flips:>8} of {n}")
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
