"""LiFT-Critic's architecture (VILA-1.5, 13B or 40B) throughput: the transformers reference loop vs the vLLM engine.

One call on a lent GPU machine, no download: the real shapes with random weights,
  13b  Llama-2-13B + SigLIP-so400m-384, mlp_downsample, vicuna_v1: 8 frames = 8 x 196 = 1,568 image tokens
  40b  Yi-34B + InternViT-6B-448 (last layer, CLS dropped), mlp_downsample, hermes-2: 8 x 256 = 2,048 tokens
vLLM gets them with `load_format="dummy"`, tensor parallel over as many GPUs as the weights need (`--tp`, by
default the fewest that leave room for the KV cache; the 40B is 40.1 B parameters, 75 GiB in bf16: one H200 or
two H100s; the 13B 13.5 B, 25 GiB). The reference is built straight on one GPU with random init, and skipped
(said under the table) when the weights do not fit on one.
Each engine scores distinct random videos (3 questions each: label scoring + a 64-token guided reason, as the
service does) at the given concurrencies; the table gives videos/s and latency p50/p95 per video.

    # on the GPU host, with the project installed (`pip install -e .[service-gpu]`: the vLLM plugin entry
    # point must be installed, vLLM's worker processes find the architecture through it)
    python benchmarks/gpu_vila.py --size 13b --out "$OUT/gpu_vila_13b.json"
    python benchmarks/gpu_vila.py --size 40b --out "$OUT/gpu_vila_40b.json"
    # anywhere, in a few minutes on a CPU: the same code path on the tiny critic of that shape
    python benchmarks/gpu_vila.py --size 40b --tiny

The reference engine serialises forwards (it is a reference, like LiFT's original batch-1 loop), so its
concurrency is 1 unless --reference-concurrency says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

from service.families.vila.family import VilaFamily  # noqa: E402
from service.media import VideoFrames  # noqa: E402

# VILA1.5-13b: llm/config.json (Llama-2-13B) and vision_tower/config.json (siglip-so400m-patch14-384)
# (head_dim explicit: the tiny config carries its own 32, which would otherwise survive the update)
LLAMA2_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40, head_dim=128, vocab_size=32000, max_position_embeddings=4096,
                  rms_norm_eps=1e-5)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
# VILA1.5-40b: Nous-Hermes-2-Yi-34B (a Llama: GQA 56/8, rope theta 5e6) and InternViT-6B-448px, in the converted
# checkpoint's terms (transformers' InternVLVisionConfig keys)
YI_34B = dict(hidden_size=7168, intermediate_size=20480, num_hidden_layers=60, num_attention_heads=56,
              num_key_value_heads=8, head_dim=128, vocab_size=64000, max_position_embeddings=4096, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 5000000.0})
INTERNVIT_6B_448 = dict(hidden_size=3200, intermediate_size=12800, num_hidden_layers=45, num_attention_heads=25,
                        image_size=[448, 448], patch_size=[14, 14], use_qk_norm=True, attention_bias=False,
                        norm_type="rms_norm", layer_norm_eps=1e-6, hidden_act="gelu", layer_scale_init_value=0.1)
SHAPES = {
    "13b": dict(vision="siglip", text=LLAMA2_13B, tower=SIGLIP_SO400M_384, side=384, tokens=196,
                name="VILA1.5-13B shapes (Llama-2-13B + SigLIP-so400m-384), random weights"),
    "40b": dict(vision="internvit", text=YI_34B, tower=INTERNVIT_6B_448, side=448, tokens=256,
                name="VILA1.5-40B shapes (Yi-34B + InternViT-6B-448), random weights"),
}
WEIGHTS_SHARE = 0.6  # weights may take this much of a GPU; the rest is KV cache, activations, the tower's work


def make_checkpoint(root: Path, size: str, tiny: bool) -> Path:
    """Tiny: the real converter on the tiny VILA of that shape. Full: the same folder with the real shapes and
    no weight files (vLLM draws them, the reference initialises them)."""
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    shape = SHAPES[size]
    critic = convert_vila(build_tiny_vila(root / "src", seed=0, with_lora=True, vision=shape["vision"]),
                          root / "critic", root / "src" / "lora").out_dir
    if tiny:
        return critic
    cfg = json.loads((critic / "config.json").read_text())
    cfg["text_config"].update(shape["text"], dtype="bfloat16")
    cfg["vision_config"].update(shape["tower"], dtype="bfloat16")
    cfg["vila_text_vocab_size"] = shape["text"]["vocab_size"]  # the tiny tokenizer's ids all fall inside it
    cfg["image_seq_length"] = shape["tokens"]
    cfg["dtype"] = "bfloat16"
    (critic / "config.json").write_text(json.dumps(cfg, indent=1))
    proc = json.loads((critic / "processor_config.json").read_text())
    proc["image_processor"]["size"] = {"height": shape["side"], "width": shape["side"]}
    (critic / "processor_config.json").write_text(json.dumps(proc, indent=1))
    for f in [*critic.glob("*.safetensors"), critic / "model.safetensors.index.json"]:
        f.unlink()
    return critic


def weight_bytes(model_dir: Path, bytes_per_param: int = 2) -> int:
    """Exact parameter count of the checkpoint's architecture (built on the meta device), in bytes."""
    import torch

    from service.families.vila.reference import VilaForConditionalGeneration, load_config

    with torch.device("meta"):
        model = VilaForConditionalGeneration(load_config(model_dir))
    return sum(p.numel() for p in model.parameters()) * bytes_per_param


def choose_tp(needed: int, gpu_bytes: int, gpus: int, heads: int, kv_heads: int) -> int:
    """The fewest GPUs (a divisor of the LLM's KV heads and heads) whose share of the weights leaves room."""
    for tp in (1, 2, 4, 8):
        if tp <= gpus and heads % tp == 0 and kv_heads % tp == 0 and needed / tp <= WEIGHTS_SHARE * gpu_bytes:
            return tp
    raise SystemExit(f"{needed / 2**30:.0f} GiB of weights do not fit on {gpus} GPU(s) of "
                     f"{gpu_bytes / 2**30:.0f} GiB (at most {WEIGHTS_SHARE:.0%} of each for weights)")


class RandomWeightsVila(VilaFamily):
    """The family, but the reference model is random-initialised on the device instead of loaded."""

    def load_hf_model(self, dtype: Any = None, device: str = "cuda") -> Any:
        import torch

        from service.families.vila.reference import VilaForConditionalGeneration, load_config

        config = load_config(self.model_dir)
        for c in (config, config.text_config, config.vision_config):
            c._attn_implementation = "sdpa"
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype or torch.bfloat16)
        try:
            with torch.device(device):
                model = VilaForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
        return model.eval()


def random_videos(n: int, seed: int, size: int) -> list[VideoFrames]:
    rng = np.random.default_rng(seed)
    return [VideoFrames(frames=rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), indices=list(range(8)),
                        total_frames=8, fps=8.0, duration_s=1.0) for _ in range(n)]


async def measure(critic: Any, videos: list[VideoFrames], concurrency: int) -> dict[str, float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int, v: VideoFrames) -> None:
        async with sem:
            t = time.perf_counter()
            await critic.score(v, f"video number {i}: a red car driving on the road")
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, v) for i, v in enumerate(videos)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"concurrency": concurrency, "videos": len(videos), "wall_s": round(wall, 3),
            "videos_per_s": round(len(videos) / wall, 3), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)}


async def run_engine(name: str, critic: Any, levels: list[int], per_level: int, seed: int, size: int) -> dict:
    t = time.perf_counter()
    await critic.start()
    start_s = time.perf_counter() - t
    await critic.score(random_videos(1, seed - 1, size)[0], "warm-up")
    rows = []
    for c in levels:
        videos = random_videos(max(per_level, 2 * c), seed + 1000 * c, size)
        rows.append(await measure(critic, videos, c))
        print(f"{name:>12} c={c:<3} {rows[-1]}", flush=True)
    await critic.stop()
    return {"engine": name, "start_s": round(start_s, 1), "levels": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="13b", help="LiFT-Critic shape: 13b or 40b")
    ap.add_argument("--tiny", action="store_true", help="tiny critic of that shape (CPU is fine) instead of real shapes")
    ap.add_argument("--tp", type=int, default=None, help="vLLM tensor-parallel size (default: the fewest GPUs that fit)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reference-concurrency", type=int, nargs="+", default=[1])
    ap.add_argument("--videos", type=int, default=None, help="videos per level (default 2 x concurrency, >= 16 on GPU)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch
    from importlib.metadata import entry_points

    from service.critic import Critic
    from service.engines.transformers_engine import TransformersEngine
    from service.engines.vllm_engine import VLLMEngine

    if not any(e.name == "lift_vila" for e in entry_points(group="vllm.general_plugins")):
        print("the lift_vila vLLM plugin is not installed: run `pip install -e .` in the repository", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        print("real shapes need a GPU (the 40B is 75 GiB in bf16); use --tiny on a CPU", file=sys.stderr)
        return 2
    shape = SHAPES[args.size]
    device = "cuda" if gpu else "cpu"
    dtype = "float32" if args.tiny or not gpu else "bfloat16"
    per_level = args.videos or (4 if args.tiny else 16)
    side = 126 if args.tiny and shape["vision"] == "siglip" else (112 if args.tiny else shape["side"])
    root = Path(tempfile.mkdtemp(prefix=f"gpu_vila_{args.size}_"))
    model_dir = make_checkpoint(root, args.size, args.tiny)
    needed = weight_bytes(model_dir, 4 if dtype == "float32" else 2)
    tp, fits_one = 1, True
    if gpu:
        gpu_bytes = torch.cuda.get_device_properties(0).total_memory
        text = json.loads((model_dir / "config.json").read_text())["text_config"]
        tp = args.tp or choose_tp(needed, gpu_bytes, torch.cuda.device_count(), text["num_attention_heads"],
                                  text["num_key_value_heads"])
        fits_one = needed <= 0.85 * gpu_bytes
    results: dict[str, Any] = {
        "model": f"tiny VILA ({args.size}-shaped)" if args.tiny else shape["name"],
        "device": torch.cuda.get_device_name() if gpu else "cpu", "dtype": dtype, "tensor_parallel_size": tp,
        "weights_gib": round(needed / 2**30, 2), "runs": [], "notes": []}
    print(f"{results['model']}: {results['weights_gib']} GiB of weights, tensor parallel {tp}", flush=True)

    if args.skip_reference:
        results["notes"].append("reference skipped (--skip-reference)")
    elif not fits_one:
        results["notes"].append(f"reference skipped: {results['weights_gib']} GiB of weights do not fit on one GPU")
    else:
        family = VilaFamily(model_dir) if args.tiny else RandomWeightsVila(model_dir)
        ref = Critic(TransformersEngine(model_dir, family, dtype=dtype, device=device), model_dir)
        results["runs"].append(asyncio.run(run_engine("reference", ref, args.reference_concurrency, per_level, 1, side)))
        del ref, family
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()  # the vLLM engine takes most of the GPU next

    extra = {} if args.tiny else {"load_format": "dummy"}
    engine = VLLMEngine(model_dir, VilaFamily(model_dir), dtype=dtype, max_model_len=4096,
                        max_num_seqs=args.max_num_seqs or (64 if args.tiny else 256), max_num_frames=8,
                        tensor_parallel_size=tp, extra_engine_args=extra)
    vllm_critic = Critic(engine, model_dir)
    results["runs"].append(asyncio.run(run_engine("vllm", vllm_critic, args.concurrency, per_level, 1, side)))

    print(f"\n{results['model']} on {results['device']} ({dtype}, tensor parallel {tp})")
    print("| engine | start s | concurrency | videos | videos/s | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        for row in run["levels"]:
            print(f"| {run['engine']} | {run['start_s']} | {row['concurrency']} | {row['videos']} | "
                  f"{row['videos_per_s']} | {row['p50_s']} | {row['p95_s']} |")
    for note in results["notes"]:
        print(f"note: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from clients.processes import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM unwinds: the servers and engines this benchmark started are stopped
    sys.exit(main())
