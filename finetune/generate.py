"""Sample videos from a CogVideoX pipeline into mp4 files plus a manifest the labeler reads.

Manifest lines: {"id", "video", "prompt", "prompt_id", "seed", "sampling": {...}, "model", "lora"}. Each
video gets its own seed (base seed + its index), so a sample does not depend on batching or on what
ran before it, and a restarted run skips the ids already in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune.config import GenerateConfig, SamplingConfig
from finetune.data import Prompt, read_jsonl, read_prompts

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_pipeline(model: str | Path, lora: str | Path | None = None, device: str = "auto", dtype: str = "float32"):
    """A CogVideoX pipeline from a local folder (never the hub), optionally with a LoRA applied."""
    import torch
    from diffusers import CogVideoXPipeline

    from service.errors import ModelLoadError

    if not (Path(model) / "model_index.json").is_file():
        raise ModelLoadError(f"{model} is not a diffusers pipeline folder (no model_index.json)", param="model")
    pipe = CogVideoXPipeline.from_pretrained(str(model), dtype=getattr(torch, dtype), local_files_only=True)
    if lora:
        from finetune.lora import load_lora_into

        load_lora_into(pipe.transformer, lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def sampling_settings(pipe, sampling: SamplingConfig) -> dict[str, Any]:
    """The concrete settings a run uses: unset sizes come from the model's config."""
    cfg = pipe.transformer.config
    spatial = pipe.vae_scale_factor_spatial
    return {
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
        "num_frames": sampling.num_frames or int(cfg.sample_frames),
        "height": sampling.height or int(cfg.sample_height * spatial),
        "width": sampling.width or int(cfg.sample_width * spatial),
        "fps": sampling.fps,
    }


def sample(pipe, prompts: list[str], seeds: list[int], settings: dict[str, Any], return_latents: bool = False):
    """uint8 (B, F, H, W, 3) videos, one generator per video; with return_latents also the sampler's final
    latents [B, F, C, h, w] (the space the transformer is trained in)."""
    import numpy as np
    import torch

    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
    kwargs = {k: v for k, v in settings.items() if k != "fps"}
    captured: dict[str, torch.Tensor] = {}

    def grab(_pipe, _i, _t, tensors):
        captured["latents"] = tensors["latents"]
        return tensors

    with torch.no_grad():
        out = pipe(prompt=prompts, generator=generators, output_type="np",
                   max_sequence_length=pipe.transformer.config.max_text_seq_length,
                   callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    frames = (np.clip(np.asarray(out.frames), 0.0, 1.0) * 255).round().astype(np.uint8)
    if return_latents:
        return frames, captured["latents"].float().cpu()
    return frames


def _plan(prompts: list[Prompt], per_prompt: int, seed: int) -> list[tuple[str, Prompt, int]]:
    return [(f"{p.id}-{k:03d}", p, seed + i * per_prompt + k) for i, p in enumerate(prompts) for k in range(per_prompt)]


def generate_into(pipe, prompts: list[Prompt], out: str | Path, *, per_prompt: int, sampling: SamplingConfig,
                  meta: dict[str, Any] | None = None, progress: bool = True, save_latents: bool = True) -> Path:
    """Generate what the manifest in `out` lacks; returns the manifest path.

    save_latents keeps the sampler's latents next to each mp4 (`<id>.latents.pt`, a few KB at 480x720x49):
    training on generated samples can use them instead of re-encoding the mp4 (exact, and no VAE pass)."""
    from tqdm.auto import tqdm

    from finetune.video_io import write_mp4

    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    done: set[str] = set()
    if manifest.exists():
        rows = read_jsonl(manifest)
        keep = [r for r in rows if Path(str(r.get("video", ""))).is_file()]
        done = {str(r["id"]) for r in keep}
        if len(keep) != len(rows) or not manifest.read_bytes().endswith(b"\n"):
            # Lines whose video is gone (or a torn last line): rewrite without them, so ids stay unique.
            _atomic_write_lines(manifest, [json.dumps(r) for r in keep])
    todo = [item for item in _plan(prompts, per_prompt, sampling.seed) if item[0] not in done]
    settings = sampling_settings(pipe, sampling)
    bar = tqdm(total=len(todo) + len(done), initial=len(done), desc="generate", unit="video", disable=not progress)
    with manifest.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), sampling.batch_size):
            batch = todo[start:start + sampling.batch_size]
            videos, latents = sample(pipe, [p.text for _, p, _ in batch], [s for _, _, s in batch], settings,
                                     return_latents=True)
            for (vid, p, s), frames, lat in zip(batch, videos, latents):
                if save_latents:
                    save_latent_sidecar(lat, out / "videos" / f"{vid}.mp4")
                path = write_mp4(frames, out / "videos" / f"{vid}.mp4", fps=settings["fps"])
                row = {"id": vid, "video": str(path.resolve()), "prompt": p.text, "prompt_id": p.id, "seed": s,
                       "sampling": settings, **(meta or {})}
                # The line goes in only after its video is complete: a crash never leaves a line without a file.
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    return manifest


def latent_sidecar(video: str | Path) -> Path:
    return Path(video).with_suffix(".latents.pt")


def save_latent_sidecar(latents, video: str | Path) -> Path:
    import torch

    path = latent_sidecar(video)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(latents.clone().contiguous(), tmp)
    os.replace(tmp, path)
    return path


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def run_generate(cfg: GenerateConfig) -> Path:
    prompts = read_prompts(cfg.prompts)
    pipe = load_pipeline(cfg.model, lora=cfg.lora, device=cfg.device, dtype=cfg.dtype)
    sampling = SamplingConfig(**{k: v for k, v in asdict(cfg).items() if k in SamplingConfig.__dataclass_fields__})
    meta = {"model": str(Path(cfg.model).resolve()), "lora": str(Path(cfg.lora).resolve()) if cfg.lora else None}
    return generate_into(pipe, prompts, cfg.out, per_prompt=cfg.per_prompt, sampling=sampling, meta=meta)
