"""Make the tiny CogVideoX able to draw: pre-train its VAE, then its transformer, on synthetic clips.

A random CogVideoX draws noise; LiFT starts from a generator that already makes videos of what it is
asked, imperfectly. Two short stages on `finetune.miniature.clips` (fresh clips every VAE step, a cached
set of encoded clips for the transformer):
1. the VAE as an autoencoder (pixel MSE + a small KL), then its `scaling_factor` set so latents have unit
   variance, as diffusers does for a new VAE;
2. the transformer, full weights, on CogVideoX's own diffusion loss (`finetune.objective.per_sample_loss`),
   with 10 % of captions dropped so classifier-free guidance works.
The T5 text encoder stays the random frozen one `build_tiny_generator` made (CogVideoX freezes T5 too).
The result is a diffusers pipeline folder every `lift finetune` command loads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from finetune.miniature.clips import ClipDefects, TRAIN_SUBJECTS, HELDOUT_SUBJECTS, batch, prompts

log = logging.getLogger(__name__)

PRETRAIN_RECORD = "miniature_pretrain.json"


@dataclass
class GeneratorShape:
    """The miniature generator: bigger than the test-sized tiny one, still CPU-cheap.

    Its VAE compresses less than `build_tiny_generator`'s (8x space, 4x time: a 32 px, 9-frame clip in
    3 x 4 x 4 latents): 3 blocks of 16 channels, 4x in space and none in time (9 x 8 x 8 latents). The
    tiny VAE at 8x / 4x learnt only the scene colour in the time a CPU run has: a change from one frame to
    the next cannot be kept in 3 latent frames. CogVideoX's VAE does this with `temporal_compression_ratio=1`
    and fewer blocks; the pipeline, the trainer and the sampler read both factors from the configs."""

    latent_channels: int = 8
    vae_channels: tuple[int, ...] = (16, 16, 16)
    temporal_compression: int = 1
    num_layers: int = 2
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    time_embed_dim: int = 32
    size: int = 32
    num_frames: int = 9


@dataclass
class PretrainConfig:
    seed: int = 0
    subjects: tuple[str, ...] = TRAIN_SUBJECTS + HELDOUT_SUBJECTS
    defects: ClipDefects = field(default_factory=ClipDefects)
    vae_steps: int = 300
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    clips: int = 2048  # encoded once, for the transformer stage
    transformer_steps: int = 1500
    transformer_batch: int = 64
    transformer_lr: float = 1e-3
    caption_dropout: float = 0.1
    threads: int | None = None


@dataclass
class PretrainResult:
    model: Path
    vae_losses: list[float]
    transformer_losses: list[float]
    scaling_factor: float
    seconds: float
    # share of fresh clips whose VAE reconstruction gets the same rule label as the clip, per dimension
    reconstruction_agreement: dict[str, float] = field(default_factory=dict)


def _to_video_tensor(frames: np.ndarray):
    """uint8 (B, F, H, W, 3) -> float [B, 3, F, H, W] in [-1, 1], the VAE's input."""
    import torch

    return torch.from_numpy(frames).float().permute(0, 4, 1, 2, 3) / 127.5 - 1.0


def pretrain_vae(vae, cfg: PretrainConfig, rng: np.random.Generator,
                 progress: Callable[[str], None] | None = None) -> list[float]:
    import torch

    vae.train()
    vae.requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.vae_steps, eta_min=cfg.vae_lr * 0.05)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.vae_steps):
        _, frames = batch(rng, cfg.vae_batch, cfg.subjects, cfg.defects)
        x = _to_video_tensor(frames)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = ((recon - x) ** 2).mean() + cfg.vae_kl_weight * posterior.kl().mean()
        losses.append(_step(loss, vae.parameters(), opt, sched))
        if progress and (step + 1) % 50 == 0:
            progress(f"vae step {step + 1}/{cfg.vae_steps}: loss {np.mean(losses[-50:]):.4f} "
                     f"({time.perf_counter() - t0:.0f}s)")
    vae.eval()
    vae.requires_grad_(False)
    return losses


def _step(loss, params, opt, sched) -> float:
    """One optimiser step (gradients clipped to norm 1) and the scheduler's; returns the loss."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss)


def reconstruction_agreement(vae, cfg: PretrainConfig, rng: np.random.Generator, n: int = 96) -> dict[str, float]:
    """Do the hidden rules see on the VAE's reconstructions what they see on the clips? Per dimension, the
    share of `n` fresh clips whose reconstruction (posterior mode, decoded, as uint8 frames) gets the clip's
    label. A dimension the VAE cannot redraw cannot vary in the generator's samples."""
    import torch

    from finetune.miniature.rules import rate_frames

    specs, frames = batch(rng, n, cfg.subjects, cfg.defects)
    with torch.no_grad():
        rec = vae.decode(vae.encode(_to_video_tensor(frames)).latent_dist.mode()).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    same: dict[str, int] = {}
    for spec, clip, back in zip(specs, frames, rec):
        a, b = rate_frames(clip, spec.caption), rate_frames(back, spec.caption)
        for d in a.dimensions:
            same[d] = same.get(d, 0) + int(a.dimensions[d].label == b.dimensions[d].label)
    return {d: k / n for d, k in same.items()}


def encode_clips(pipe, cfg: PretrainConfig, rng: np.random.Generator, chunk: int = 64):
    """(latents [N, F, C, h, w] unscaled posterior means, captions) of `cfg.clips` fresh clips."""
    import torch

    lats, captions = [], []
    with torch.no_grad():
        for start in range(0, cfg.clips, chunk):
            specs, frames = batch(rng, min(chunk, cfg.clips - start), cfg.subjects, cfg.defects)
            lat = pipe.vae.encode(_to_video_tensor(frames)).latent_dist.mode()
            lats.append(lat.permute(0, 2, 1, 3, 4).contiguous())
            captions += [s.caption for s in specs]
    return torch.cat(lats), captions


def caption_embeddings(pipe, captions: Sequence[str]):
    """T5 embedding [L, D] of each distinct caption, plus "" (the unconditional one guidance uses)."""
    import torch

    out = {}
    with torch.no_grad():
        for text in sorted(set(captions) | {""}):
            out[text] = pipe.encode_prompt(text, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                           max_sequence_length=pipe.transformer.config.max_text_seq_length,
                                           device="cpu")[0][0].float()
    return out


def pretrain_transformer(pipe, latents, captions: Sequence[str], cfg: PretrainConfig,
                         progress: Callable[[str], None] | None = None) -> list[float]:
    import torch
    from diffusers import CogVideoXDPMScheduler

    from finetune.objective import per_sample_loss

    scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    embeds = caption_embeddings(pipe, captions)
    caption_list = list(captions)
    transformer = pipe.transformer
    transformer.train()
    transformer.requires_grad_(True)
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.transformer_lr, betas=(0.9, 0.95), weight_decay=1e-4)
    warmup = max(1, cfg.transformer_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.transformer_steps))) * 0.95 + 0.05))
    g = torch.Generator().manual_seed(cfg.seed + 17)
    n = latents.shape[0]
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.transformer_steps):
        idx = torch.randint(0, n, (cfg.transformer_batch,), generator=g)
        lat = latents[idx]
        drop = torch.rand(cfg.transformer_batch, generator=g) < cfg.caption_dropout
        emb = torch.stack([embeds["" if d else caption_list[i]] for i, d in zip(idx.tolist(), drop.tolist())])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.transformer_batch,), generator=g)
        noise = torch.randn(lat.shape, generator=g)
        loss = per_sample_loss(transformer, scheduler, lat, emb, t, noise).mean()
        losses.append(_step(loss, transformer.parameters(), opt, sched))
        if progress and (step + 1) % 250 == 0:
            progress(f"transformer step {step + 1}/{cfg.transformer_steps}: loss {np.mean(losses[-250:]):.4f} "
                     f"({time.perf_counter() - t0:.0f}s)")
    transformer.eval()
    transformer.requires_grad_(False)
    return losses


def build_vae(shape: GeneratorShape, seed: int):
    import torch
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed + 1)
    blocks = len(shape.vae_channels)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks, block_out_channels=tuple(shape.vae_channels),
        latent_channels=shape.latent_channels, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=shape.temporal_compression)


def build_transformer(shape: GeneratorShape, seed: int):
    """CogVideoX-2b's layout (sin-cos positions) at the miniature's size, on the miniature VAE's latent grid."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    latent = shape.size // 2 ** (len(shape.vae_channels) - 1)
    return CogVideoXTransformer3DModel(
        num_attention_heads=shape.num_attention_heads, attention_head_dim=shape.attention_head_dim,
        in_channels=shape.latent_channels, out_channels=shape.latent_channels, time_embed_dim=shape.time_embed_dim,
        text_embed_dim=32, num_layers=shape.num_layers, sample_width=latent, sample_height=latent,
        sample_frames=shape.num_frames, patch_size=2, temporal_compression_ratio=shape.temporal_compression,
        max_text_seq_length=16, use_rotary_positional_embeddings=False)


def pretrain_generator(out: Path | str, cfg: PretrainConfig | None = None, shape: GeneratorShape | None = None,
                       progress: Callable[[str], None] | None = None) -> PretrainResult:
    """Build a tiny CogVideoX (`build_tiny_generator`) and pre-train it; saved as a pipeline folder at `out`
    with `miniature_pretrain.json` (settings, losses). An existing finished folder is reused."""
    import torch
    from diffusers import CogVideoXPipeline

    from finetune.tiny_generator import build_tiny_generator

    cfg = cfg or PretrainConfig()
    shape = shape or GeneratorShape()
    out = Path(out)
    record = out / PRETRAIN_RECORD
    if record.is_file():
        r = json.loads(record.read_text())
        return PretrainResult(out, r["vae_losses"], r["transformer_losses"], r["scaling_factor"], r["seconds"],
                              r.get("reconstruction_agreement", {}))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    raw = out.with_name(out.name + ".random")
    build_tiny_generator(raw, seed=cfg.seed, latent_channels=shape.latent_channels,
                         num_layers=shape.num_layers, num_attention_heads=shape.num_attention_heads,
                         attention_head_dim=shape.attention_head_dim, time_embed_dim=shape.time_embed_dim)
    torch.manual_seed(cfg.seed)
    tiny = CogVideoXPipeline.from_pretrained(str(raw), local_files_only=True)
    # the tiny generator's tokenizer, T5 and scheduler; the miniature's own VAE and transformer
    pipe = CogVideoXPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=build_vae(shape, cfg.seed),
                             transformer=build_transformer(shape, cfg.seed), scheduler=tiny.scheduler)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(cfg.seed)
    vae_losses = pretrain_vae(pipe.vae, cfg, rng, progress)
    agreement = reconstruction_agreement(pipe.vae, cfg, np.random.default_rng(cfg.seed + 99))
    if progress:
        progress("rule labels of VAE reconstructions = the clips': "
                 + ", ".join(f"{d} {100 * v:.0f} %" for d, v in agreement.items()))
    latents, captions = encode_clips(pipe, cfg, rng)
    scaling = float(1.0 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    pipe.vae_scaling_factor_image = scaling
    latents = latents * scaling
    transformer_losses = pretrain_transformer(pipe, latents, captions, cfg, progress)
    tmp = out.with_name(f".{out.name}.tmp")
    pipe.save_pretrained(str(tmp))
    seconds = time.perf_counter() - t0
    (tmp / PRETRAIN_RECORD).write_text(json.dumps({
        "config": asdict(cfg), "shape": asdict(shape), "scaling_factor": scaling, "seconds": seconds,
        "reconstruction_agreement": agreement,
        "vae_losses": vae_losses, "transformer_losses": transformer_losses,
        "prompts": prompts(cfg.subjects)}, indent=1))
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    shutil.rmtree(raw, ignore_errors=True)
    return PretrainResult(out, vae_losses, transformer_losses, scaling, seconds, agreement)
