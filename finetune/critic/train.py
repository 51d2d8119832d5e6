"""Supervised fine-tuning of a critic on human ratings, as LiFT trained LiFT-Critic.

LoRA on the language model (peft), vision tower and projector frozen unless asked otherwise, loss on
the answer tokens only, frames sampled as the service samples them, accelerate for devices / DDP /
DeepSpeed. Checkpoints hold only what is trained (adapter + unfrozen modules) plus optimizer and RNG
state, so `--resume-from` continues exactly. The result is a plain checkpoint with the LoRA merged into
the weights: `lift serve --model OUT` loads it on vLLM or transformers.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.critic.data import RatedExample, load_rated_data
from service.errors import InvalidRequest, ModelLoadError
from service.rubric import DEFAULT_NUM_FRAMES

# Which parameters are the vision tower / projector / language model, per family (name substrings).
FAMILY_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "qwen2_vl": {
        "projector": ("visual.merger.",),
        "vision_tower": ("visual.",),  # minus the projector, which lives inside `visual` in Qwen2-VL
        "language_model": ("language_model.",),
    },
    "vila": {
        "projector": ("mm_projector.", "multi_modal_projector."),
        "vision_tower": ("vision_tower.",),
        "language_model": ("language_model.", "llm."),
    },
}
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_RECORD = "lift_training.json"


@dataclass
class CriticTrainConfig:
    data: Path = field(metadata={"help": "rated data: LiFT's JSON list or the plain JSONL"})
    base: Path = field(metadata={"help": "base critic checkpoint folder (a family `lift serve` knows)"})
    out: Path = field(metadata={"help": "output folder: the merged critic, checkpoints under checkpoints/"})
    videos: Path | None = field(default=None, metadata={"help": "folder that relative video paths are under"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank (LiFT-Critic-13B: 128)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (LiFT-Critic-13B: 256)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    train_vision_tower: bool = field(default=False, metadata={"help": "unfreeze the vision tower (full weights)"})
    train_projector: bool = field(default=False, metadata={"help": "unfreeze the projector (full weights)"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the unfrozen vision tower and projector (LLaVA's mm_projector_lr; default: --lr)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "linear warm-up share of the steps"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data (ignored if max_steps > 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = from epochs"})
    batch_size: int = field(default=1, metadata={"help": "examples per device per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    num_frames: int = field(default=DEFAULT_NUM_FRAMES, metadata={"help": "frames per video (as served)"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and dropout"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N optimizer steps (0 = only at the end)"})
    save_total_limit: int = field(default=2, metadata={"help": "keep at most N checkpoints (0 = all)"})
    resume_from: str | None = field(default=None, metadata={"help": "checkpoint folder or 'latest'"})
    mixed_precision: str | None = field(default=None, metadata={"help": "no|bf16|fp16 (default: the accelerate config's, else no)"})
    load_dtype: str = field(default="float32", metadata={"help": "dtype the base weights are trained in"})
    save_dtype: str = field(default="base", metadata={"help": "dtype of the merged weights: base|float32|bfloat16|float16"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    cache_mb: float = field(default=2048.0, metadata={"help": "memory for ready-made training features (0 = rebuild every epoch)"})
    log_every: int = field(default=10, metadata={"help": "log every N optimizer steps"})
    skip_bad_data: bool = field(default=False, metadata={"help": "train on the valid records, report the rest"})
    family: str | None = field(default=None, metadata={"help": "critic family (default: from the checkpoint)"})

    def __post_init__(self) -> None:
        self.data, self.base, self.out = Path(self.data), Path(self.base), Path(self.out)
        self.videos = Path(self.videos) if self.videos is not None else None
        checks = [
            (self.lora_rank >= 1, "--lora-rank must be >= 1"),
            (self.lora_alpha > 0, "--lora-alpha must be > 0"),
            (0 <= self.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
            (self.learning_rate > 0, "--lr must be > 0"),
            (self.vision_lr is None or self.vision_lr > 0, "--vision-lr must be > 0"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1"),
            (self.epochs > 0 or self.max_steps > 0, "give --epochs > 0 or --max-steps > 0"),
            (self.num_frames >= 1, "--num-frames must be >= 1"),
            (self.mixed_precision in (None, "no", "bf16", "fp16"), "--mixed-precision must be no, bf16 or fp16"),
            (self.load_dtype in ("float32", "bfloat16", "float16"), "--load-dtype must be float32, bfloat16 or float16"),
            (self.save_dtype in ("base", "float32", "bfloat16", "float16"), "--save-dtype must be base, float32, bfloat16 or float16"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequest(message)
        if not (self.base / "config.json").is_file():
            raise ModelLoadError(f"--base {self.base} is not a checkpoint folder (no config.json)")
        if self.out.resolve() == self.base.resolve():
            raise InvalidRequest("--out must differ from --base: the base checkpoint is never overwritten")


@dataclass
class TrainResult:
    out: Path
    steps: int
    examples: int
    final_loss: float
    losses: list[float]
    seconds: float
    resumed_from: str | None = None


class _TrainState:
    """Progress that a checkpoint must restore (accelerate saves it with the optimizer)."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch,
                "batches_in_epoch": self.batches_in_epoch, "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.losses = [float(x) for x in state.get("losses", [])]


class _EpochSampler:
    """A fresh, seeded permutation per epoch: resuming replays the same order (then skips what was done)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _part_of(name: str, family: str) -> str:
    parts = FAMILY_PARTS.get(family)
    if parts is None:
        raise ModelLoadError(f"critic training does not know family {family!r} yet")
    for part in ("projector", "vision_tower", "language_model"):
        if any(p in name for p in parts[part]):
            return part
    return "other"


def lora_target_modules(model: Any, family: str) -> list[str]:
    """Every Linear of the language model (LLaVA's `find_all_linear_names`: no vision, no projector,
    no lm_head), as full module names so nothing else matches by accident."""
    import torch

    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and _part_of(n, family) == "language_model"
             and not n.endswith("lm_head")]
    if not names:
        raise ModelLoadError(f"no language-model Linear layers found for family {family!r}")
    return names


def load_base_model(base: Path, family: str, dtype: str) -> Any:
    """The base critic as a trainable torch module: transformers' own class for qwen2_vl, the project's
    VILA-1.5 reference (the same code the transformers engine serves) for vila."""
    if family == "vila":
        from service.families.vila.reference import load_reference

        return load_reference(base, dtype=_dtype(dtype))
    if family != "qwen2_vl":
        raise ModelLoadError(f"critic training supports the qwen2_vl and vila families, not {family!r}")
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(base, dtype=_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load base critic {base}: {exc}") from None


def answer_loss(logits: Any, labels: Any) -> Any:
    """Mean next-token cross-entropy over the answer tokens (labels != IGNORE_INDEX), as transformers'
    causal-LM loss computes it; done here so every family trains alike, with or without a built-in loss."""
    import torch

    from finetune.critic.features import IGNORE_INDEX

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)


def prepare_trainable(model: Any, cfg: CriticTrainConfig, family: str) -> tuple[Any, list[str]]:
    """Wrap with LoRA on the language model; unfreeze vision tower / projector if asked.

    Returns the peft model and the names of fully-trained (non-LoRA) base parameters, which checkpoints
    must carry besides the adapter (LiFT's `non_lora_trainables.bin`)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_modules(model, family), bias="none")
    peft_model = get_peft_model(model, lora)  # freezes every base parameter
    extra: list[str] = []
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            continue
        part = _part_of(name, family)
        if (part == "vision_tower" and cfg.train_vision_tower) or (part == "projector" and cfg.train_projector):
            param.requires_grad_(True)
            extra.append(name)
    if cfg.gradient_checkpointing:
        peft_model.enable_input_require_grads()
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model, extra


def _find_checkpoint(out: Path, resume_from: str) -> Path:
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / "trainer_state.json").is_file():
            raise InvalidRequest(f"--resume-from {path} is not a critic-training checkpoint")
        return path
    ckpts = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"),
                   key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]) if p.name[len(CHECKPOINT_PREFIX):].isdigit() else -1)
    ckpts = [p for p in ckpts if (p / "trainer_state.json").is_file()]
    if not ckpts:
        raise InvalidRequest(f"--resume-from latest: no checkpoint under {out / 'checkpoints'}")
    return ckpts[-1]


def _copy_side_files(base: Path, out: Path) -> None:
    """Everything of the base that is not weights/config (lift_critic.json, templates, ...) goes along."""
    weights = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}
    for src in base.iterdir():
        if src.is_file() and src.suffix not in weights and not src.name.endswith(".index.json") \
                and not (out / src.name).exists():
            shutil.copy2(src, out / src.name)


def _save_merged(peft_model: Any, family_obj: Any, cfg: CriticTrainConfig, base_dtype: Any) -> None:
    """Merge the LoRA into the weights and save a checkpoint both engines load as is."""
    model = peft_model.merge_and_unload()
    dtype = base_dtype if cfg.save_dtype == "base" else _dtype(cfg.save_dtype)
    model = model.to(dtype)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if hasattr(family_obj, "processor"):
        model.save_pretrained(cfg.out, safe_serialization=True)
        family_obj.processor.save_pretrained(cfg.out)
    else:
        # VILA: the converted layout (the reference maps a tower whose transformers names differ, InternViT,
        # back to VILA's); config, tokenizer and image processor are the base's files, unchanged (copied below)
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.checkpoint_state_dict().items()}
        save_file(state, str(cfg.out / "model.safetensors"), metadata={"format": "pt"})
    _copy_side_files(cfg.base, cfg.out)


def train_critic(cfg: CriticTrainConfig, *, examples: Sequence[RatedExample] | None = None,
                 progress: Callable[[str], None] | None = None) -> TrainResult:
    """Run SFT per `cfg`; returns where the merged critic is and the loss curve."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import load_file, save_file
    from transformers import get_linear_schedule_with_warmup

    from finetune.critic.features import RatedVideoDataset, collate
    from service.families import detect_family, load_family

    t0 = time.time()
    say = progress or (lambda s: None)
    if examples is None:
        if cfg.skip_bad_data:
            from finetune.critic.data import scan_rated_data

            report = scan_rated_data(cfg.data, cfg.videos)
            for problem in report.problems:
                say(f"skipping {cfg.data}: {problem}")
            examples = report.examples
        else:
            examples = load_rated_data(cfg.data, cfg.videos)
    if not examples:
        raise InvalidRequest(f"{cfg.data}: no usable rated examples")

    family_name = cfg.family or detect_family(cfg.base)
    family = load_family(cfg.base, family_name)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              project_dir=str(cfg.out))
    set_seed(cfg.seed)
    model = load_base_model(cfg.base, family_name, cfg.load_dtype)
    base_dtype = _base_dtype(cfg.base, model)
    model, extra_trainables = prepare_trainable(model, cfg, family_name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    say(f"family {family_name}: {len(examples)} rated examples; training {n_trainable:,} of {n_total:,} "
        f"parameters (LoRA r={cfg.lora_rank} alpha={cfg.lora_alpha}"
        + (", vision tower" if cfg.train_vision_tower else "") + (", projector" if cfg.train_projector else "") + ")")

    dataset = RatedVideoDataset(examples, family, num_frames=cfg.num_frames, cache_mb=cfg.cache_mb)
    pad_id = family.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = family.tokenizer.eos_token_id
    sampler = _EpochSampler(len(dataset), cfg.seed)
    # Own generator: starting an iterator must not draw from the global RNG, or a resumed run (new
    # iterator after restoring RNG state) would see other dropout masks than an uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         collate_fn=lambda b: collate(b, pad_id), num_workers=0,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    batches_per_epoch = math.ceil(len(dataset) / cfg.batch_size / accelerator.num_processes)
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # Full-weight vision tower / projector next to a LoRA usually want a smaller step than the adapter.
    extra_names = set(extra_trainables)
    adapter_params = [p for n, p in model.named_parameters() if p.requires_grad and n not in extra_names]
    full_params = [p for n, p in model.named_parameters() if p.requires_grad and n in extra_names]
    groups = [{"params": adapter_params, "lr": cfg.learning_rate}]
    if full_params:
        groups.append({"params": full_params, "lr": cfg.vision_lr or cfg.learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = _TrainState()
    accelerator.register_for_checkpointing(state)

    # Checkpoints carry only what is trained, in the formats people load (adapter via peft).
    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if accelerator.is_main_process:
            for m in models:
                unwrapped = accelerator.unwrap_model(m)
                unwrapped.save_pretrained(Path(output_dir) / "adapter")
                if extra_trainables:
                    params = dict(unwrapped.named_parameters())
                    save_file({n: params[n].detach().cpu().contiguous() for n in extra_trainables},
                              str(Path(output_dir) / "non_lora_trainables.safetensors"))
        weights.clear()

    def load_hook(models: list[Any], input_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        while models:
            m = accelerator.unwrap_model(models.pop())
            set_peft_model_state_dict(m, load_peft_weights(str(Path(input_dir) / "adapter")))
            extra_file = Path(input_dir) / "non_lora_trainables.safetensors"
            if extra_file.is_file():
                m.load_state_dict(load_file(str(extra_file)), strict=False)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    resumed = None
    if cfg.resume_from:
        ckpt = _find_checkpoint(cfg.out, cfg.resume_from)
        accelerator.load_state(str(ckpt))
        resumed = str(ckpt)
        say(f"resumed from {ckpt} at step {state.global_step}")

    def save_checkpoint() -> None:
        ckpt = cfg.out / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.global_step}"
        accelerator.save_state(str(ckpt))
        if accelerator.is_main_process:
            (ckpt / "trainer_state.json").write_text(json.dumps(
                {**state.state_dict(), "total_steps": total_steps, "config": _config_json(cfg)}, indent=1))
            _prune_checkpoints(cfg.out / "checkpoints", cfg.save_total_limit)
        accelerator.wait_for_everyone()

    model.train()
    window: list[float] = []
    t_log = time.time()
    while state.global_step < total_steps:
        sampler.set_epoch(state.epoch)
        epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch) \
            if state.batches_in_epoch else loader
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                loss = answer_loss(model(**batch).logits, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            window.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            state.losses.append(sum(window) / len(window))
            window.clear()
            if cfg.log_every and state.global_step % cfg.log_every == 0:
                recent = state.losses[-cfg.log_every:]
                rate = cfg.log_every / max(1e-9, time.time() - t_log)
                t_log = time.time()
                say(f"step {state.global_step}/{total_steps} epoch {state.epoch} "
                    f"loss {sum(recent) / len(recent):.4f} lr {scheduler.get_last_lr()[0]:.2e} {rate:.2f} steps/s")
            if cfg.save_steps and state.global_step % cfg.save_steps == 0 and state.global_step < total_steps:
                save_checkpoint()
            if state.global_step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
            continue
        break

    save_checkpoint()  # the last state, so a longer run can resume from it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_merged(accelerator.unwrap_model(model), family, cfg, base_dtype)
        record = {"config": _config_json(cfg), "family": family_name, "examples": len(examples),
                  "steps": state.global_step, "losses": state.losses, "trainable_parameters": n_trainable,
                  "extra_trainables": extra_trainables, "resumed_from": resumed,
                  "seconds": round(time.time() - t0, 2)}
        (cfg.out / TRAINING_RECORD).write_text(json.dumps(record, indent=1))
    accelerator.wait_for_everyone()
    final = sum(state.losses[-5:]) / max(1, len(state.losses[-5:]))
    say(f"saved merged critic to {cfg.out} ({state.global_step} steps, final loss {final:.4f})")
    return TrainResult(out=cfg.out, steps=state.global_step, examples=len(examples), final_loss=final,
                       losses=list(state.losses), seconds=time.time() - t0, resumed_from=resumed)


def _base_dtype(base: Path, model: Any) -> Any:
    import torch

    try:
        cfg = json.loads((base / "config.json").read_text())
        name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
        if name:
            return getattr(torch, str(name).replace("torch.", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    return next(model.parameters()).dtype


def _config_json(cfg: CriticTrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def _prune_checkpoints(folder: Path, keep: int) -> None:
    if keep <= 0:
        return
    ckpts = sorted((p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit()),
                   key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
