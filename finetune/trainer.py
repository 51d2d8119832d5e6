"""Reward-weighted likelihood fine-tuning of CogVideoX (LiFT Eq. 3) with accelerate.

One process on a CPU here; the same code runs under `accelerate launch` with the DDP / DeepSpeed ZeRO-2
configs in finetune/configs/. Design choices that matter:

- Latents and text embeddings are computed once (VAE and T5 are frozen), per process for its shard;
  generated samples use the sampler's own latents saved beside the mp4 when present (exact, no VAE pass).
- Data order, noise and timesteps are pure functions of (seed, micro-step, process): a run resumed from
  a checkpoint draws exactly what the uninterrupted run drew, without replaying RNG streams.
- accelerate save/load hooks write the model part of a checkpoint in the users' formats (a LoRA that
  `load_lora_weights` reads, or a transformer folder); a checkpoint is written to a temporary folder
  and renamed, so a crash never leaves a half checkpoint under a real name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from finetune.config import ConfigError, TrainConfig
from finetune.data import Sample, read_labels, read_real
from finetune.lora import add_lora, has_lora, replace_dir, save_lora, set_lora_weights
from finetune.objective import lift_loss, per_sample_loss

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass
class EncodedSet:
    ids: list[str]
    latents: list[torch.Tensor]  # each [F, C, H, W]
    embeds: list[torch.Tensor]  # each [L, D]
    weights: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Batch:
    latents: torch.Tensor  # [B, F, C, H, W]: the generated samples first, then the real ones
    embeds: torch.Tensor  # [B, L, D]
    weights: torch.Tensor | None  # [n_syn]; None = plain supervised loss
    n_syn: int


@dataclass
class TrainResult:
    global_step: int
    output: Path
    losses: list[float] = field(default_factory=list)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby steps get unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class RewardWeightedTrainer:
    def __init__(self, cfg: TrainConfig, pipe=None, accelerator=None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
        from diffusers import CogVideoXDPMScheduler

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        acc = self.accelerator
        if pipe is None:
            from finetune.generate import load_pipeline

            pipe = load_pipeline(cfg.model, device=str(acc.device))
        self.pipe = pipe
        self.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
        tcfg = pipe.transformer.config
        spatial = pipe.vae_scale_factor_spatial
        self.num_frames = cfg.num_frames or int(tcfg.sample_frames)
        self.height = cfg.height or int(tcfg.sample_height * spatial)
        self.width = cfg.width or int(tcfg.sample_width * spatial)

        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        transformer = pipe.transformer
        if cfg.full:
            transformer.requires_grad_(True)
        else:
            transformer.requires_grad_(False)
            if not has_lora(transformer):  # the online loop hands over a transformer already carrying its adapter
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)  # LoRA's A matrices are random: same seed, same start
                    add_lora(transformer, cfg.lora_rank, cfg.lora_scale_alpha)
                if cfg.init_lora:
                    set_lora_weights(transformer, cfg.init_lora)
            for name, p in transformer.named_parameters():
                p.requires_grad_("lora_" in name)
            # Trainable weights in float32 even when the frozen base is half precision (diffusers' habit).
            for p in transformer.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay)
        from diffusers.optimization import get_scheduler

        # accelerate steps a prepared scheduler once per process per optimizer step (diffusers scales alike).
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=cfg.max_steps * acc.num_processes)
        self._transformer_cls = type(transformer)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.transformer, self.optimizer, self.lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
        self.global_step = 0
        self.syn: EncodedSet | None = None
        self.real: EncodedSet | None = None

    # ---- checkpoints in user formats -------------------------------------------------------------
    def _unwrap(self, model=None):
        return self.accelerator.unwrap_model(model if model is not None else self.transformer)

    def _save_hook(self, models, weights, output_dir) -> None:
        if self.accelerator.is_main_process:
            for model in models:
                m = self._unwrap(model)
                if isinstance(m, self._transformer_cls):
                    if self.cfg.full:
                        m.save_pretrained(Path(output_dir) / "transformer")
                    else:
                        save_lora(m, output_dir)
                if weights:
                    weights.pop()  # the model's weights are saved above, in the user format

    def _load_hook(self, models, input_dir) -> None:
        from accelerate.utils import DistributedType

        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        target = self._unwrap()
        while models and not deepspeed:
            models.pop()
        if self.cfg.full:
            loaded = self._transformer_cls.from_pretrained(Path(input_dir) / "transformer")
            target.load_state_dict(loaded.state_dict())
        else:
            set_lora_weights(target, input_dir)

    def checkpoints(self) -> list[Path]:
        root = self.out / "checkpoints"
        found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))
                 and (p / STATE_FILE).is_file()]
        return [p for _, p in sorted(found)]

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        root = self.out / "checkpoints"
        final = root / f"checkpoint-{self.global_step}"
        tmp = root / f".tmp-checkpoint-{self.global_step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            state = {"global_step": self.global_step, "config": asdict(self.cfg),
                     "mixed_precision": str(acc.mixed_precision), "num_processes": acc.num_processes,
                     "distributed_type": str(acc.distributed_type)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
            replace_dir(tmp, final)  # the rename is the commit point
            limit = self.cfg.checkpoints_total_limit
            if limit:
                for old in self.checkpoints()[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self, where: str) -> int:
        if where == "latest":
            found = self.checkpoints()
            if not found:
                log.info("no checkpoint under %s: starting fresh", self.out / "checkpoints")
                return 0
            path = found[-1]
        else:
            path = Path(where)
            if not (path / STATE_FILE).is_file():
                raise ConfigError(f"{path} is not a complete checkpoint (no {STATE_FILE})", param="resume")
        state = json.loads((path / STATE_FILE).read_text())
        self.accelerator.load_state(str(path))
        self.global_step = int(state["global_step"])
        self._truncate_log(self.global_step)
        log.info("resumed from %s at step %d", path, self.global_step)
        return self.global_step

    # ---- data --------------------------------------------------------------------------------------
    def encode(self, samples: list[Sample], desc: str = "encode", use_sidecars: bool = False) -> EncodedSet:
        """Latents (VAE, frozen) and T5 embeddings of this process's shard of `samples`."""
        from tqdm.auto import tqdm

        from finetune.generate import latent_sidecar
        from finetune.video_io import load_clip

        acc, pipe = self.accelerator, self.pipe
        shard = samples[acc.process_index::acc.num_processes]
        if not shard:
            raise ConfigError(f"{len(samples)} samples cannot feed {acc.num_processes} processes", param="data")
        vae = pipe.vae
        dev, dtype = acc.device, vae.dtype
        latents, embeds = [], []
        shape = ((self.num_frames - 1) // pipe.vae_scale_factor_temporal + 1, pipe.transformer.config.in_channels,
                 self.height // pipe.vae_scale_factor_spatial, self.width // pipe.vae_scale_factor_spatial)
        reused = 0
        for i, s in enumerate(tqdm(shard, desc=desc, disable=not (self.cfg.progress and acc.is_local_main_process))):
            sidecar = latent_sidecar(s.video) if use_sidecars else None
            with torch.no_grad():
                emb = pipe.encode_prompt(s.prompt, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                         max_sequence_length=pipe.transformer.config.max_text_seq_length,
                                         device=dev)[0]
                embeds.append(emb[0].float())
                if sidecar is not None and sidecar.is_file():
                    lat = torch.load(sidecar, map_location="cpu", weights_only=True)
                    if tuple(lat.shape) == shape:  # the sampler's own latents: exact, no VAE round trip
                        latents.append(lat.float().to(dev))
                        reused += 1
                        continue
                clip = load_clip(s.video, self.num_frames, self.height, self.width).unsqueeze(0).to(dev, dtype)
                # The posterior sample is seeded per sample id: the same data gives the same latents.
                g = torch.Generator(device=dev).manual_seed(_mix(self.cfg.seed, zlib.crc32(s.id.encode())))
                lat = vae.encode(clip).latent_dist.sample(generator=g) * vae.config.scaling_factor
                latents.append(lat[0].permute(1, 0, 2, 3).contiguous().float())  # [F, C, H, W]
        if reused:
            log.info("%s: %d of %d samples use the sampler's saved latents", desc, reused, len(shard))
        return EncodedSet([s.id for s in shard], latents, embeds, torch.tensor([s.weight for s in shard]))

    def set_data(self, syn: list[Sample], real: list[Sample] | None = None) -> None:
        if not syn:
            raise ConfigError("no usable training samples (all lines errors, or none selected by --reward)",
                              param="data")
        self.syn = self.encode(syn, "encode generated", use_sidecars=self.cfg.sample_latents)
        self.real = self.encode(real, "encode real") if real and self.cfg.real_weight > 0 else None

    def _indices(self, n: int, micro: int, batch_size: int, stream: int) -> list[int]:
        """Batch `micro` of an endless sequence of per-epoch permutations of range(n)."""
        out = []
        for pos in range(micro * batch_size, (micro + 1) * batch_size):
            epoch, k = divmod(pos, n)
            g = torch.Generator().manual_seed(_mix(self.cfg.seed, stream, epoch, self.accelerator.process_index))
            out.append(int(torch.randperm(n, generator=g)[k]))
        return out

    def batch(self, micro: int) -> Batch:
        assert self.syn is not None, "call set_data first"
        idx = self._indices(len(self.syn), micro, self.cfg.batch_size, stream=1)
        lat = [self.syn.latents[i] for i in idx]
        emb = [self.syn.embeds[i] for i in idx]
        weights = self.syn.weights[idx]
        if self.real is not None:
            ridx = self._indices(len(self.real), micro, self.cfg.real_batch_size, stream=2)
            lat += [self.real.latents[i] for i in ridx]
            emb += [self.real.embeds[i] for i in ridx]
        dev = self.accelerator.device
        return Batch(torch.stack(lat).to(dev), torch.stack(emb).to(dev), weights.to(dev), len(idx))

    # ---- the step ----------------------------------------------------------------------------------
    def _rotary(self, latent_frames: int):
        if not self.pipe.transformer.config.use_rotary_positional_embeddings:
            return None
        return self.pipe._prepare_rotary_positional_embeddings(self.height, self.width, latent_frames,
                                                               self.accelerator.device)

    def noise_and_timesteps(self, batch: Batch, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_mix(self.cfg.seed, 3, micro, self.accelerator.process_index))
        n = batch.latents.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g)
        noise = torch.randn(batch.latents.shape, generator=g)
        dev = self.accelerator.device
        return noise.to(dev, batch.latents.dtype), timesteps.to(dev)

    def compute_loss(self, batch: Batch, noise: torch.Tensor, timesteps: torch.Tensor):
        """(Eq. 3 loss, per-sample losses) for one micro-batch."""
        per = per_sample_loss(self.transformer, self.scheduler, batch.latents, batch.embeds, timesteps, noise,
                              image_rotary_emb=self._rotary(batch.latents.shape[1]))
        real = per[batch.n_syn:] if batch.latents.shape[0] > batch.n_syn else None
        loss = lift_loss(per[:batch.n_syn], batch.weights, real, self.cfg.real_weight)
        return loss, per

    def micro_step(self, batch: Batch, micro: int) -> tuple[float, float | None]:
        """Forward, backward and (on the last micro-batch of an accumulation) the optimizer step."""
        acc = self.accelerator
        self.transformer.train()
        noise, timesteps = self.noise_and_timesteps(batch, micro)
        grad_norm = None
        with acc.accumulate(self.transformer):
            loss, _ = self.compute_loss(batch, noise, timesteps)
            acc.backward(loss)
            if acc.sync_gradients and self.cfg.max_grad_norm > 0:
                gn = acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                grad_norm = float(gn) if gn is not None else None
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), grad_norm

    # ---- the run -----------------------------------------------------------------------------------
    def _log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    def _truncate_log(self, step: int) -> None:
        path = self._log_path()
        if self.accelerator.is_main_process and path.is_file():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train to cfg.max_steps. `stop_at` ends early after a checkpoint at that step (a planned
        interruption: the same config with resume='latest' continues exactly as if never stopped)."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self.resume(cfg.resume)
        accum = cfg.gradient_accumulation_steps
        losses: list[float] = []
        bar = tqdm(total=cfg.max_steps, initial=self.global_step, desc="train", unit="step",
                   disable=not (cfg.progress and acc.is_local_main_process))
        t0 = time.perf_counter()
        while self.global_step < cfg.max_steps:
            step_loss, grad_norm = 0.0, None
            for k in range(accum):
                micro = self.global_step * accum + k
                loss, gn = self.micro_step(self.batch(micro), micro)
                step_loss += loss / accum
                grad_norm = gn if gn is not None else grad_norm
            self.global_step += 1
            step_loss = float(acc.gather(torch.tensor([step_loss], device=acc.device)).mean())
            losses.append(step_loss)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {self.global_step}: lower the learning rate")
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if acc.is_main_process and (self.global_step % cfg.log_every == 0 or self.global_step == cfg.max_steps):
                row = {"step": self.global_step, "loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "time_s": round(time.perf_counter() - t0, 3)}
                with self._log_path().open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
            if stop_at is not None and self.global_step >= stop_at:
                bar.close()
                self._ensure_checkpoint()
                return TrainResult(self.global_step, self.out / "checkpoints" / f"checkpoint-{self.global_step}", losses)
        bar.close()
        self._ensure_checkpoint()
        output = self.save_final()
        return TrainResult(self.global_step, output, losses)

    def _ensure_checkpoint(self) -> None:
        found = self.checkpoints()
        if not found or found[-1].name != f"checkpoint-{self.global_step}":
            self.save_checkpoint()

    def save_final(self) -> Path:
        """LoRA -> out/lora (load_lora_weights format); full -> out/pipeline (from_pretrained format)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        final = self.out / ("pipeline" if self.cfg.full else "lora")
        if acc.is_main_process:
            tmp = self.out / f".tmp-{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            model = self._unwrap()
            if self.cfg.full:
                self.pipe.transformer = model
                self.pipe.save_pretrained(str(tmp))
            else:
                save_lora(model, tmp)
            replace_dir(tmp, final)
        acc.wait_for_everyone()
        return final


def run_train(cfg: TrainConfig, pipe=None) -> TrainResult:
    syn = read_labels(cfg.data, cfg.reward, cfg.dimension_weights, cfg.dimension_score)
    real = read_real(cfg.real) if cfg.real else None
    trainer = RewardWeightedTrainer(cfg, pipe=pipe)
    trainer.set_data(syn, real)
    return trainer.train()

