"""A tiny random VideoReward (VideoAlign) release, in the layout its trainer writes and KwaiVGI/VideoReward ships:

    OUT/Qwen2-VL-tiny-Instruct/    the base, as Qwen/Qwen2-VL-2B-Instruct's folder (config, processor, tokenizer,
                                   weights); model_config.json names it in model_name_or_path, as the real one
                                   names the hub id
    OUT/VideoReward/               the release (returned)
        model_config.json          {data_config, training_args, model_config, peft_lora_config, inference_config}:
                                   train_reward.py's save_configs_to_json, with the release's values (fps 2,
                                   max_frame_pixels 200704, eval_dim VQ/MQ/TA, "detailed_special", output_dim 1,
                                   special tokens, reward_token "special", LoRA on the LLM's linears, lm_head /
                                   rm_head / embed_tokens / visual excluded) and inference_config's means and stds
        checkpoint-<step>/model.pth          torch.save of the PEFT model's whole state dict (save_full_model):
                                   `base_model.model.` + transformers 4.45 names (`visual.*`, `model.*`,
                                   `lm_head.weight`, `rm_head.weight`); each LoRA'd Linear as `<m>.base_layer.weight`
                                   (+ `.bias`) and `<m>.lora_A.default.weight` / `<m>.lora_B.default.weight`
        checkpoint-<step>/tokenizer/         the base tokenizer + `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`
                                   (add_special_tokens), the embedding resized to it

The "trained" parts are random but not trivial: LoRA B is non-zero (so merging matters), the reward tokens'
embedding rows, the vision tower and the head are perturbed. Same seed, same files. `lift convert-videoalign`
makes it servable; `output_dim=3` writes train.sh's variant (three outputs, read on the diagonal), which the
critic refuses (its reading is the release's).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from service.critics.videoalign import (EVAL_DIMS, FPS, MAX_FRAME_PIXELS, NORMALISATION, OUTPUT_DIM,
                                        REWARD_TOKENS)

BASE_NAME = "Qwen2-VL-tiny-Instruct"
RELEASE_NAME = "VideoReward"
CHECKPOINT_STEP = 12
LORA_R = 8
LORA_ALPHA = 16  # alpha / r = 2, as the release's 128 / 64
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Qwen2-VL-2B-Instruct's preprocessor_config.json: min_pixels 56*56, max_pixels 28*28*16384
BASE_MIN_PIXELS = 3136
BASE_MAX_PIXELS = 12845056
PEFT_PREFIX = "base_model.model."


def build_tiny_videoalign_release(out_dir: str | Path, seed: int = 0, *, output_dim: int = OUTPUT_DIM,
                                  inference_config: bool = True, step: int = CHECKPOINT_STEP) -> Path:
    """Build the base and the release under `out_dir`; returns the release folder (`out_dir/VideoReward`)."""
    import torch
    from transformers import AutoProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    base = _build_base(out / BASE_NAME, seed)
    release = out / RELEASE_NAME
    checkpoint = release / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)

    # create_model_and_processor: the tokenizer gains the three special tokens, the embedding is resized to it
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS.values())})
    special_ids = tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS.values()))
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    torch.manual_seed(seed)  # the resized rows are drawn from the global generator
    model.resize_token_embeddings(len(tokenizer))
    hidden = model.config.text_config.hidden_size

    g = torch.Generator().manual_seed(seed + 1)
    state = _legacy_names(model.state_dict())
    with torch.no_grad():
        # training moved the reward tokens' rows (PartialEmbeddingUpdateCallback keeps every other row) and the tower
        embed = state["model.embed_tokens.weight"].clone()
        embed[special_ids] = torch.randn(len(special_ids), hidden, generator=g) * 0.5
        state["model.embed_tokens.weight"] = embed
        for name in [k for k in state if k.startswith("visual.") and k.endswith("weight")]:
            state[name] = state[name] + torch.randn(state[name].shape, generator=g) * 0.01
    peft_state: dict[str, Any] = {}
    lora = re.compile(r"^model\.layers\.\d+\.(" + "|".join(re.escape(t) for t in LORA_TARGETS) + r")\.(weight|bias)$")
    for name, tensor in state.items():
        m = lora.match(name)
        if m is None:
            peft_state[PEFT_PREFIX + name] = tensor.contiguous()
            continue
        module = name.rsplit(".", 1)[0]
        peft_state[f"{PEFT_PREFIX}{module}.base_layer.{m.group(2)}"] = tensor.contiguous()
        if m.group(2) == "weight":
            out_features, in_features = tensor.shape
            peft_state[f"{PEFT_PREFIX}{module}.lora_A.default.weight"] = torch.randn(
                LORA_R, in_features, generator=g) / in_features ** 0.5
            peft_state[f"{PEFT_PREFIX}{module}.lora_B.default.weight"] = torch.randn(
                out_features, LORA_R, generator=g) * 0.02
    peft_state[PEFT_PREFIX + "rm_head.weight"] = torch.randn(output_dim, hidden, generator=g) / hidden ** 0.5
    torch.save(peft_state, checkpoint / "model.pth")
    tokenizer.save_pretrained(checkpoint / "tokenizer")
    (release / "model_config.json").write_text(json.dumps(
        model_config(base, output_dim=output_dim, inference=inference_config), indent=4))
    (release / "README.md").write_text("A tiny random VideoReward release (lift-reward's tests), in "
                                       "KwaiVGI/VideoReward's layout.\n")
    AutoProcessor.from_pretrained(base)  # the base loads as a processor, as inference.py's does
    return release


def model_config(base: Path, *, output_dim: int = OUTPUT_DIM, inference: bool = True) -> dict[str, Any]:
    """model_config.json as train_reward.py's save_configs_to_json writes it (asdict of its four dataclasses,
    local_rank and _n_gpu removed), with the release's values; inference_config added as the release has it."""
    config: dict[str, Any] = {
        "data_config": {
            "meta_data": "/path/to/dataset/meta_data.csv", "data_dir": "/path/to/dataset", "meta_data_test": None,
            "max_frame_pixels": MAX_FRAME_PIXELS, "num_frames": None, "fps": FPS, "p_shuffle_frames": 0.0,
            "p_color_jitter": 0.0, "eval_dim": list(EVAL_DIMS.values()), "prompt_template_type": "detailed_special",
            "add_noise": False, "sample_type": "uniform", "use_tied_data": True,
        },
        "training_args": {"output_dir": "rm_output", "bf16": True, "learning_rate": 2e-06, "num_train_epochs": 3,
                          "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4,
                          "save_full_model": True, "disable_flash_attn2": False},
        "model_config": {
            "model_name_or_path": str(base), "model_revision": "main", "output_dim": output_dim,
            "use_special_tokens": True, "freeze_vision_tower": False, "freeze_llm": False, "tune_merger": True,
            "torch_dtype": "bfloat16", "trust_remote_code": False, "attn_implementation": None,
            "load_in_8bit": False, "load_in_4bit": False, "bnb_4bit_quant_type": "nf4",
            "use_bnb_nested_quant": False, "reward_token": "special", "loss_type": "btt",
        },
        "peft_lora_config": {
            "lora_enable": True, "vision_lora": False, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.05, "lora_target_modules": None,
            "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"], "lora_modules_to_save": None,
            "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1,
        },
    }
    if inference:
        config["inference_config"] = {f"{EVAL_DIMS[d]}_{k}": v for d, (mean, std) in NORMALISATION.items()
                                      for k, v in (("mean", mean), ("std", std))}
    return config


def _build_base(folder: Path, seed: int) -> Path:
    """The tiny Qwen2-VL (service.tiny_critics.qwen2_vl) as a plain base folder: its processor with
    Qwen2-VL-2B-Instruct's pixel bounds (frames the critic resized pass unchanged), no lift_critic.json."""
    from transformers import AutoProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from service.tiny_critics.qwen2_vl import build_tiny_qwen2_vl

    if folder.exists():
        shutil.rmtree(folder)
    build_tiny_qwen2_vl(folder, seed=seed)
    (folder / "lift_critic.json").unlink(missing_ok=True)
    old = AutoProcessor.from_pretrained(folder)
    size = {"shortest_edge": BASE_MIN_PIXELS, "longest_edge": BASE_MAX_PIXELS}
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=old.tokenizer,
                     video_processor=Qwen2VLVideoProcessor(size=size),
                     chat_template=old.chat_template).save_pretrained(folder)
    return folder


def _legacy_names(state: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 module names -> the 4.45 names VideoAlign's environment saved (model.* = the LLM)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("model.language_model."):
            name = "model." + name[len("model.language_model."):]
        elif name.startswith("model.visual."):
            name = "visual." + name[len("model.visual."):]
        out[name] = tensor
    return out


__all__ = ["BASE_NAME", "CHECKPOINT_STEP", "RELEASE_NAME", "build_tiny_videoalign_release", "model_config"]
