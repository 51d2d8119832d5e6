"""A VideoReward (VideoAlign) release + its Qwen2-VL base -> a Qwen2-VL checkpoint both engines load, the reward
head beside it.

Input, as KwaiVGI/VideoReward ships it and VideoAlign's trainer writes it:
  RELEASE/model_config.json        data_config, model_config, peft_lora_config (+ inference_config: the means and
                                   stds its inference normalises by)
  RELEASE/checkpoint-<N>/model.pth the PEFT model's whole state dict (`base_model.model.` + transformers 4.45
                                   names; LoRA'd Linears as `.base_layer.*` + `.lora_A.<adapter>.weight` /
                                   `.lora_B.<adapter>.weight`; `rm_head.weight`); the highest N is read, as its
                                   load_model_from_checkpoint does
  RELEASE/checkpoint-<N>/tokenizer/ the base tokenizer + `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`
  BASE (model_config's model_name_or_path when it is a folder, else --base): Qwen2-VL-2B-Instruct's config.json
                                   and processor files (its weights are not read: model.pth holds them all)
Output (OUT):
  model*.safetensors + index       the LoRA merged, W + s * B @ A in float32 (s = alpha / r, alpha / sqrt(r)
                                   for rsLoRA), cast to the output dtype; the release's names (transformers 4.45's,
                                   which both engines load); rm_head left out. Always with
                                   model.safetensors.index.json, so that the loaders read only the files it lists
  config.json                      the base's, vocab_size = the resized embedding's rows, tie_word_embeddings as
                                   the weights are (written last: a half-written folder is never a model)
  tokenizer + processor files      the release's extended tokenizer, the base's processor and chat template
  rm_head.safetensors              {"weight": (output_dim, hidden_size)} float32
  lift_critic.json                 {"critic": "videoalign", ...}: what was converted and how
A release whose reading differs from the critic's (service.critics.videoalign: prompt template, dimensions,
reward tokens, frames, pixels, head outputs, normalisation) is refused, naming the field, as is one with no head
or no reward tokens: the critic would read it wrongly.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError
from service.families.videoalign import HEAD_FILE

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.(?P<adapter>[^.]+)"
                      r"(?:\.weight)?$")
SHARD_BYTES = 2 * 1024**3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "chat_template.json", "chat_template.jinja")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class VideoAlignReport:
    out_dir: Path
    checkpoint: str
    reward_token_ids: dict[str, int]
    output_dim: int
    merged_modules: int
    dtype: str


def refuse(message: str) -> ModelLoadError:
    return ModelLoadError(" ".join(message.split()))  # one line


def read_model_config(release: Path) -> dict[str, Any]:
    path = release / "model_config.json"
    if not path.is_file():
        raise refuse(f"{release} has no model_config.json: not a VideoAlign release")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise refuse(f"{path} is not valid JSON: {exc}") from None
    for key in ("data_config", "model_config", "peft_lora_config"):
        if not isinstance(config.get(key), dict):
            raise refuse(f"{path} has no {key} section: not a VideoAlign release")
    return config


def check_reading(config: dict[str, Any]) -> None:
    """The release reads as the videoalign critic reads (service.critics.videoalign), else a one-line refusal."""
    from service.critics import videoalign as va

    data, model = config["data_config"], config["model_config"]
    want = {
        ("data_config", "prompt_template_type"): "detailed_special",
        ("data_config", "eval_dim"): list(va.EVAL_DIMS.values()),
        ("data_config", "sample_type"): "uniform",
        ("data_config", "num_frames"): None,
        ("data_config", "fps"): va.FPS,
        ("data_config", "max_frame_pixels"): va.MAX_FRAME_PIXELS,
        ("model_config", "use_special_tokens"): True,
        ("model_config", "reward_token"): "special",
        ("model_config", "output_dim"): va.OUTPUT_DIM,
    }
    for (section, key), value in want.items():
        got = (data if section == "data_config" else model).get(key)
        if got != value and not (isinstance(value, float) and isinstance(got, (int, float)) and float(got) == value):
            raise refuse(f"model_config.json {section}.{key} is {got!r}; the videoalign critic reads the release's "
                         f"{value!r} (another reading needs its own critic spec)")
    inference = config.get("inference_config")
    if not isinstance(inference, dict):
        raise refuse("model_config.json has no inference_config: its inference would return raw values; the "
                     "videoalign critic returns them normalised by the release's means and stds")
    for dim, (mean, std) in va.NORMALISATION.items():
        name = va.EVAL_DIMS[dim]
        got = (inference.get(f"{name}_mean"), inference.get(f"{name}_std"))
        if got != (mean, std):
            raise refuse(f"model_config.json inference_config {name}_mean/{name}_std are {got}; the videoalign "
                         f"critic normalises by the release's ({mean}, {std})")


def latest_checkpoint(release: Path) -> Path:
    found = [(int(m.group(1)), p) for p in release.glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    if not found:
        raise refuse(f"{release} has no checkpoint-<step> folder")
    return max(found)[1]


def base_folder(config: dict[str, Any], base: Path | None) -> Path:
    named = config["model_config"].get("model_name_or_path")
    folder = base or (Path(named) if named and Path(named).is_dir() else None)
    if folder is None:
        raise refuse(f"model_config.json names its base {named!r}, not a local folder: pass --base with that "
                     f"model's folder (its config.json and processor files)")
    if not (folder / "config.json").is_file():
        raise refuse(f"{folder} has no config.json: not the Qwen2-VL base")
    return folder


def reward_token_ids(tokenizer: Any, where: Path) -> dict[str, int]:
    from service.critics.videoalign import REWARD_TOKENS

    ids = {}
    for token in REWARD_TOKENS.values():
        got = list(tokenizer(token, add_special_tokens=False).input_ids)
        if len(got) != 1 or tokenizer.convert_tokens_to_ids(token) != got[0]:
            raise refuse(f"{where} has no {token} token (the tokenizer reads it as {len(got)} ids): a VideoAlign "
                         f"release's tokenizer carries the three reward tokens")
        ids[token] = int(got[0])
    return ids


def merge_lora(state: dict[str, Any], scale: float) -> tuple[dict[str, Any], int]:
    """PEFT names -> plain names with every LoRA merged (float32 math). Returns (state, modules merged)."""
    import torch

    lora: dict[str, dict[str, Any]] = {}
    plain: dict[str, Any] = {}
    for key, tensor in state.items():
        m = LORA_KEY.match(key)
        if m is not None:
            lora.setdefault(m.group("module"), {})[m.group("kind")] = tensor
        elif ".base_layer." in key:
            plain[key.replace(".base_layer.", ".")] = tensor
        else:
            plain[key] = tensor
    for module, parts in lora.items():
        weight_key = f"{module}.weight"
        if weight_key not in plain:
            raise refuse(f"model.pth has a LoRA for {module} but no base weight for it")
        base = plain[weight_key]
        if "lora_A" in parts and "lora_B" in parts:
            delta = parts["lora_B"].float() @ parts["lora_A"].float()  # (out, r) @ (r, in)
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            delta = (parts["lora_embedding_B"].float() @ parts["lora_embedding_A"].float()).T  # peft's embedding
        else:
            raise refuse(f"model.pth has half a LoRA for {module}: {sorted(parts)}")
        if delta.shape != base.shape:
            raise refuse(f"model.pth's LoRA for {module} is {tuple(delta.shape)}, its weight {tuple(base.shape)}")
        plain[weight_key] = (base.float() + scale * delta).to(base.dtype)
    return plain, len(lora)


def convert_videoalign(release: str | Path, out_dir: str | Path, base: str | Path | None = None, *,
                       dtype: str = "auto", progress: Callable[[str], None] | None = None) -> VideoAlignReport:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    say = progress or (lambda _msg: None)
    release, out = Path(release), Path(out_dir)
    if dtype not in DTYPES:
        raise refuse(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    config = read_model_config(release)
    check_reading(config)
    checkpoint = latest_checkpoint(release)
    state_file = checkpoint / "model.pth"
    if not state_file.is_file():
        lora_only = (checkpoint / "adapter_model.safetensors").is_file()
        raise refuse(f"{checkpoint} has no model.pth" + (
            " (only the LoRA save, adapter_model.safetensors + non_lora_state_dict.pth, which needs the base's "
            "weights: not read by this converter)" if lora_only else ""))
    tokenizer_dir = checkpoint / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise refuse(f"{checkpoint} has no tokenizer/ folder: the release's tokenizer carries the reward tokens")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    token_ids = reward_token_ids(tokenizer, tokenizer_dir)
    base_dir = base_folder(config, Path(base) if base else None)
    base_config = json.loads((base_dir / "config.json").read_text())

    say(f"reading {state_file}")
    try:
        raw = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so in one line
        raise refuse(f"{state_file} could not be read as a state dict: {type(exc).__name__}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise refuse(f"{state_file} holds no state dict")
    state = {(k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k): v for k, v in raw.items()}
    head = state.pop("rm_head.weight", None)
    if head is None:
        raise refuse(f"{state_file} has no rm_head.weight: no reward head to read")
    output_dim = int(config["model_config"].get("output_dim", 1))
    hidden = _hidden_size(base_config)
    if tuple(head.shape) != (output_dim, hidden):
        raise refuse(f"{state_file} rm_head.weight is {tuple(head.shape)}; model_config says ({output_dim}, {hidden})")
    peft = config["peft_lora_config"]
    r, alpha = int(peft.get("lora_r", 16)), float(peft.get("lora_alpha", 32))
    scale = alpha / math.sqrt(r) if peft.get("use_rslora") else alpha / r
    say(f"merging LoRA (scale {scale:g})")
    merged, n_merged = merge_lora(state, scale)
    if not peft.get("lora_enable", False) and n_merged:
        raise refuse("model_config.json says lora_enable false, yet model.pth holds LoRA tensors")
    leftover = [k for k in merged if "lora_" in k]
    if leftover:
        raise refuse(f"model.pth has LoRA tensors this converter does not merge: {leftover[0]}")
    embed = merged.get("model.embed_tokens.weight")
    if embed is None:
        raise refuse(f"{state_file} has no model.embed_tokens.weight: not a Qwen2-VL reward model")
    if embed.shape[0] < len(tokenizer):
        raise refuse(f"the embedding has {embed.shape[0]} rows, the tokenizer {len(tokenizer)} tokens")
    out_dtype = {"auto": embed.dtype, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}[dtype]
    tied = bool(base_config.get("tie_word_embeddings", (base_config.get("text_config") or {}).get(
        "tie_word_embeddings", False)))
    lm_head = merged.get("lm_head.weight")
    if lm_head is not None and tied and torch.equal(lm_head, embed):
        del merged["lm_head.weight"]  # tied: the embedding is the head
    elif lm_head is not None:
        tied = False
    elif not tied:
        raise refuse(f"{state_file} has no lm_head.weight and the base does not tie it to the embedding")
    tensors = {k: v.to(out_dtype).contiguous() for k, v in merged.items()}

    if out.exists() and any(out.iterdir()):
        raise refuse(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    say(f"writing {out}")
    _save_shards(tensors, out, save_file)
    save_file({"weight": head.float().contiguous()}, str(out / HEAD_FILE),
              metadata={"critic": "videoalign", "output_dim": str(output_dim)})
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    for name in PROCESSOR_FILES:  # the base's processor and chat template (over the tokenizer's copy)
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    dtype_name = str(out_dtype).removeprefix("torch.")
    (out / "lift_critic.json").write_text(json.dumps({
        "critic": "videoalign", "family": "qwen2_vl",
        "converted_from": {"release": str(release.resolve()), "checkpoint": checkpoint.name,
                           "base": str(base_dir.resolve())},
        "reward_tokens": token_ids, "head": {"file": HEAD_FILE, "output_dim": output_dim},
        "lora": {"r": r, "alpha": alpha, "use_rslora": bool(peft.get("use_rslora")), "scale": scale,
                 "merged_modules": n_merged},
        "dtype": dtype_name,
    }, indent=1))
    new_config = _config(base_config, vocab=int(embed.shape[0]), tied=tied, dtype=dtype_name)
    (out / "config.json").write_text(json.dumps(new_config, indent=2))  # last: the folder is now a model
    _verify(out, token_ids)
    return VideoAlignReport(out, checkpoint.name, token_ids, output_dim, n_merged, dtype_name)


def _hidden_size(config: dict[str, Any]) -> int:
    text = config.get("text_config") or {}
    return int(text.get("hidden_size") or config["hidden_size"])


def _config(base: dict[str, Any], *, vocab: int, tied: bool, dtype: str) -> dict[str, Any]:
    config = json.loads(json.dumps(base))
    config["architectures"] = ["Qwen2VLForConditionalGeneration"]
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            if "vocab_size" in section or section is config:
                section["vocab_size"] = vocab
            if "tie_word_embeddings" in section or section is config:
                section["tie_word_embeddings"] = tied
            for key in ("torch_dtype", "dtype"):
                if key in section:
                    section[key] = dtype
    return config


def _save_shards(tensors: dict[str, Any], out: Path, save_file: Any) -> None:
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    # always an index, even for one shard: the loaders then read only the files it lists, never rm_head.safetensors
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _verify(out: Path, token_ids: dict[str, int]) -> None:
    """The written folder loads as our engines load it, the reward tokens one id each."""
    from service.families.qwen2_vl import Qwen2VLFamily

    family = Qwen2VLFamily(out)
    for token, tid in token_ids.items():
        if family.token_ids(token) != [tid]:
            raise refuse(f"the converted tokenizer reads {token} as {family.token_ids(token)}, not [{tid}]")


__all__ = ["VideoAlignReport", "check_reading", "convert_videoalign", "merge_lora"]
