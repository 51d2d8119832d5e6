"""Configs for generation, reward-weighted training and online rounds: dataclasses, checked on creation.

TRL's habit: every field has `metadata={"help": ...}` (the CLI builds its flags from them) and
`__post_init__` rejects bad values before any model is loaded. Pure Python: the CLI imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from service.errors import InvalidRequest

DIMENSIONS = ("semantic_consistency", "motion_smoothness", "video_fidelity")
RewardMode = Literal["reward", "expected_reward", "dimensions", "rejection"]
MixedPrecision = Literal["no", "fp16", "bf16"]


class ConfigError(InvalidRequest, ValueError):
    """A config value that cannot work; raised before any heavy work starts."""


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, param=param)


@dataclass
class SamplingConfig:
    """How videos are sampled. Defaults to LiFT's (50 steps, guidance 6); size defaults to the model's."""

    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps (LiFT: 50)."})
    guidance_scale: float = field(default=6.0, metadata={"help": "Classifier-free guidance scale (LiFT: 6.0)."})
    num_frames: int | None = field(default=None, metadata={"help": "Frames, 4k+1 (default: the model's sample_frames)."})
    height: int | None = field(default=None, metadata={"help": "Height in px, multiple of 16 (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Width in px, multiple of 16 (default: the model's)."})
    fps: int = field(default=8, metadata={"help": "Frame rate of the written mp4 (CogVideoX: 8)."})
    seed: int = field(default=0, metadata={"help": "Base seed; sample i of the run uses seed + i."})
    batch_size: int = field(default=1, metadata={"help": "Videos per pipeline call (each keeps its own seed)."})

    def __post_init__(self) -> None:
        _check(self.num_inference_steps >= 1, "num_inference_steps", "num_inference_steps must be >= 1")
        _check(self.guidance_scale >= 0, "guidance_scale", "guidance_scale must be >= 0")
        _check(self.num_frames is None or (self.num_frames >= 1 and (self.num_frames - 1) % 4 == 0),
               "num_frames", "num_frames must be 4k+1 (CogVideoX's VAE compresses time by 4)")
        for name in ("height", "width"):
            v = getattr(self, name)
            _check(v is None or (v >= 16 and v % 16 == 0), name, f"{name} must be a positive multiple of 16")
        _check(self.fps >= 1, "fps", "fps must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "batch_size must be >= 1")
        _check(self.seed >= 0, "seed", "seed must be >= 0")


@dataclass
class GenerateConfig(SamplingConfig):
    model: str = field(default="", metadata={"help": "CogVideoX pipeline folder (diffusers format)."})
    prompts: str = field(default="", metadata={"help": "Prompts: a .txt (one per line) or .jsonl ({\"prompt\", \"id\"?})."})
    out: str = field(default="", metadata={"help": "Output folder: videos/*.mp4 and manifest.jsonl."})
    per_prompt: int = field(default=1, metadata={"help": "Videos per prompt."})
    lora: str | None = field(default=None, metadata={"help": "A LoRA folder (save_lora_weights format) to apply."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "Weights' dtype."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(bool(self.model), "model", "--model is required")
        _check(bool(self.prompts), "prompts", "--prompts is required")
        _check(bool(self.out), "out", "--out is required")
        _check(self.per_prompt >= 1, "per_prompt", "per_prompt must be >= 1")


@dataclass
class TrainConfig:
    """LiFT Eq. 3: L = E_syn[w(x,z) * l(x,z)] + real_weight * E_real[l(x,z)]."""

    model: str = field(default="", metadata={"help": "Base CogVideoX pipeline folder."})
    data: str = field(default="", metadata={"help": "Labels: the labeler's JSONL (id, video, prompt, reward, ...) or LiFT's "
                                                   "scored file (a JSON list of video, caption, score), told apart by content."})
    out: str = field(default="", metadata={"help": "Output folder: checkpoints/, lora/ or pipeline/, train_log.jsonl."})
    real: str | None = field(default=None, metadata={"help": "Real videos JSONL ({\"video\", \"prompt\"}) for the lambda term."})
    real_weight: float = field(default=1.0, metadata={"help": "lambda in Eq. 3 (LiFT: 1)."})
    reward: RewardMode = field(default="reward", metadata={
        "help": "Weight of a sample: reward (LiFT), expected_reward, dimensions (weighted mean of per-dimension "
                "scores), rejection (only samples Good on every dimension, weight 1; LiFT's ablation)."})
    dimension_weights: dict[str, float] | None = field(default=None, metadata={
        "help": "For --reward dimensions: name=weight,... (default: all 1)."})
    dimension_score: Literal["score", "expected_score"] = field(default="score", metadata={
        "help": "For --reward dimensions: the label's score or its probability-weighted expectation."})
    lora_rank: int | None = field(default=None, metadata={"help": "Train a LoRA of this rank on the transformer."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank, scale 1)."})
    full: bool = field(default=False, metadata={"help": "Full fine-tune of the transformer (LiFT's setting)."})
    init_lora: str | None = field(default=None, metadata={"help": "Start from this LoRA (continue training it)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (LiFT full FT: 1e-5)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (LiFT: 0.95)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={
        "help": "diffusers scheduler: constant, constant_with_warmup, linear, cosine, ..."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warmup steps."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=1, metadata={"help": "Generated samples per micro-batch per process."})
    real_batch_size: int = field(default=1, metadata={"help": "Real samples per micro-batch per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    mixed_precision: MixedPrecision | None = field(default=None, metadata={
        "help": "no, fp16 or bf16 (LiFT: bf16); default: what `accelerate launch` was configured with, else no."})
    checkpointing_steps: int = field(default=0, metadata={"help": "Save a resumable checkpoint every N steps (0: only at the end)."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most this many checkpoints."})
    resume: str | None = field(default=None, metadata={"help": "Resume: 'latest' or a checkpoint folder."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, noise and timesteps."})
    sample_latents: bool = field(default=True, metadata={
        "help": "For generated samples, train on the sampler's latents saved next to the mp4 (by `finetune "
                "generate`) when present and of the training shape, instead of re-encoding the mp4 with the VAE."})
    num_frames: int | None = field(default=None, metadata={"help": "Training frames, 4k+1 (default: the model's)."})
    height: int | None = field(default=None, metadata={"help": "Training height (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Training width (default: the model's)."})
    log_every: int = field(default=1, metadata={"help": "Log every N steps."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        _check(bool(self.model), "model", "--model is required")
        _check(bool(self.data), "data", "--data is required")
        _check(bool(self.out), "out", "--out is required")
        _check(self.full != (self.lora_rank is not None), "lora_rank", "choose exactly one of --lora-rank R or --full")
        _check(self.lora_rank is None or self.lora_rank >= 1, "lora_rank", "lora_rank must be >= 1")
        _check(not (self.full and self.init_lora), "init_lora", "--init-lora needs LoRA training, not --full")
        _check(self.real_weight >= 0, "real_weight", "real_weight (lambda) must be >= 0")
        _check(self.reward in get_args(RewardMode), "reward", f"reward must be one of {get_args(RewardMode)}")
        if self.dimension_weights is not None:
            unknown = set(self.dimension_weights) - set(DIMENSIONS)
            _check(not unknown, "dimension_weights", f"unknown dimensions {sorted(unknown)}; known: {DIMENSIONS}")
            _check(all(w >= 0 for w in self.dimension_weights.values()) and sum(self.dimension_weights.values()) > 0,
                   "dimension_weights", "dimension weights must be >= 0 and not all 0")
            _check(self.reward == "dimensions", "dimension_weights", "--dimension-weights needs --reward dimensions")
        _check(self.learning_rate > 0, "learning_rate", "learning_rate must be > 0")
        for name in ("max_steps", "batch_size", "real_batch_size", "gradient_accumulation_steps", "log_every"):
            _check(getattr(self, name) >= 1, name, f"{name} must be >= 1")
        _check(self.lr_warmup_steps >= 0, "lr_warmup_steps", "lr_warmup_steps must be >= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", "max_grad_norm must be >= 0")
        _check(self.checkpointing_steps >= 0, "checkpointing_steps", "checkpointing_steps must be >= 0")
        _check(self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
               "checkpoints_total_limit", "checkpoints_total_limit must be >= 1")
        _check(self.mixed_precision is None or self.mixed_precision in get_args(MixedPrecision), "mixed_precision",
               "mixed_precision: no, fp16 or bf16")
        _check(self.num_frames is None or (self.num_frames - 1) % 4 == 0, "num_frames", "num_frames must be 4k+1")
        for name in ("height", "width"):
            v = getattr(self, name)
            _check(v is None or (v >= 16 and v % 16 == 0), name, f"{name} must be a positive multiple of 16")

    @property
    def lora_scale_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else (self.lora_rank or 1))


@dataclass
class LoopConfig:
    """Online rounds: generate -> score through the service -> update -> generate with the updated model."""

    model: str = field(default="", metadata={"help": "Base CogVideoX pipeline folder."})
    prompts: str = field(default="", metadata={"help": "Prompts file (.txt or .jsonl)."})
    server: str | None = field(default=None, metadata={"help": "Scoring service base URL (comma-separate several replicas)."})
    out: str = field(default="", metadata={"help": "Output folder: round-NNN/, loop_log.jsonl, rewards.png."})
    rounds: int = field(default=1, metadata={"help": "Updates; the model is scored rounds+1 times (before and after each)."})
    per_prompt: int = field(default=2, metadata={"help": "Videos per prompt per round."})
    steps_per_round: int = field(default=10, metadata={"help": "Optimizer steps per round."})
    score_retries: int = field(default=5, metadata={"help": "Attempts per scoring call before the loop stops."})
    score_backoff_s: float = field(default=2.0, metadata={"help": "First retry delay (doubles each attempt)."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for the service (or LIFT_API_KEY)."})

    def __post_init__(self) -> None:
        _check(bool(self.model), "model", "--model is required")
        _check(bool(self.prompts), "prompts", "--prompts is required")
        _check(bool(self.out), "out", "--out is required")
        _check(self.rounds >= 1, "rounds", "rounds must be >= 1")
        _check(self.per_prompt >= 1, "per_prompt", "per_prompt must be >= 1")
        _check(self.steps_per_round >= 1, "steps_per_round", "steps_per_round must be >= 1")
        _check(self.score_retries >= 1, "score_retries", "score_retries must be >= 1")
        _check(self.score_backoff_s >= 0, "score_backoff_s", "score_backoff_s must be >= 0")


# ---- dataclass <-> argparse -------------------------------------------------------------------
def _parse_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=weight, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                  required: tuple[str, ...] = (), prefix: str = "") -> None:
    """One `--flag` per dataclass field, its help from the field's metadata."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name, "help": f.metadata.get("help", "")}
        tp = hints[f.name]
        base = tp
        if get_origin(tp) is not None and get_origin(tp) is not Literal and get_origin(tp) is not dict:
            # `X | None`: the flag takes an X
            base = next(a for a in get_args(tp) if a is not type(None))
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif get_origin(base) is Literal:
            kw["choices"] = list(get_args(base))
        elif base is dict or get_origin(base) is dict:
            kw["type"] = _parse_weights
        elif base in (int, float, str):
            kw["type"] = base
        if f.name in required:
            kw["required"] = True
        elif f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        parser.add_argument(flag, **kw)


def from_args(cls: type, args: argparse.Namespace, prefix: str = "", **overrides: Any):
    values = {}
    for f in dataclasses.fields(cls):
        key = prefix.replace("-", "_") + f.name
        if hasattr(args, key):
            values[f.name] = getattr(args, key)
    values.update(overrides)
    return cls(**values)
