"""Tiny random VILA-1.5 releases in VILA's own layout, plus a LoRA in LiFT-Critic's release layout. Offline.

Two shapes, each with the real release's tensor names and folder layout at tiny sizes:
  siglip     13B-shaped: Llama-2-like LLM (BOS added, vicuna_v1 answers after "ASSISTANT: "), SigLIP tower,
             layer -2, every token ("cls_patch"). Grid 9x9 (image 126, patch 14): odd like SigLIP-384's
             27x27, so the projector's padding is exercised; 25 tokens per frame after the 2x2 merge.
  internvit  40B-shaped: Yi-34B-like LLM (grouped-query attention, rope theta 5e6, ChatML tokens
             <|im_start|>/<|im_end|>, no BOS added, eos <|im_end|> as Nous-Hermes-2-Yi), InternViT tower
             (VILA's InternVisionModel names: fused qkv, q/k RMSNorm, layer scales), last layer, CLS dropped
             ("patch"), grid 8x8 (image 112, patch 14): even like 448/14's 32x32; 16 tokens per frame.

    OUT/config.json          model_type llava_llama; llm_cfg / vision_tower_cfg / mm_projector_cfg inside
    OUT/llm/                 LlamaForCausalLM (head_dim 32: CPU attention needs 32/64/80+) + tokenizer
    OUT/vision_tower/        the tower's weights + config (+ its image-processor file)
    OUT/mm_projector/        mlp_downsample (keys layers.1/2/4) + config.json
    OUT/lora/                (with_lora) adapter_config.json + adapter_model.safetensors made by peft itself
                             on a model shaped like VILA's (keys base_model.model.llm....lora_A/B.weight),
                             non_lora_trainables.bin (projector weights, LLaVA-style key names)

Weights are drawn larger than the default init so that logits are far from uniform and parity checks mean
something.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from dataclasses import dataclass
from typing import Any

VISIONS = ("siglip", "internvit")
LLM_HIDDEN = 128
VISION_HIDDEN = 64
PATCH_SIZE = 14
IMAGE_SIZE = 126  # siglip
INTERN_IMAGE_SIZE = 112  # internvit
LORA_R = 8
LORA_ALPHA = 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PRESETS = ("tiny", "realistic")


@dataclass(frozen=True)
class VilaShape:
    """Sizes that vary by preset. `realistic` has LiFT-Critic-13B's token proportions: SigLIP at 384 px (27x27
    patches, 196 tokens per frame after the 2x2 merge, 8 frames = 1568 visual tokens) on a small LLM, so the
    prompt is as long as the real critic's and the benchmark's costs fall where the 13B's do."""

    llm_hidden: int = LLM_HIDDEN
    llm_intermediate: int = 256
    llm_layers: int = 2
    llm_heads: int = 4
    image_size: int = IMAGE_SIZE


SHAPES = {"tiny": VilaShape(), "realistic": VilaShape(llm_hidden=256, llm_intermediate=688, llm_layers=4,
                                                     llm_heads=4, image_size=384)}

# The 40B's tokenizer (Nous-Hermes-2-Yi-34B) knows ChatML; ids 0-2 as Yi's <unk>, <|startoftext|>, <|endoftext|>.
_CHATML_SPECIALS = ["<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokenizer(seed: int, vision: str):
    """A tokenizer trained on the spot (no hub): Llama-2-like for siglip, Yi/ChatML-like for internvit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from service.tiny_critics.corpus import VILA_WORDS, lift_answer_corpus

    chatml = vision == "internvit"
    specials = _CHATML_SPECIALS if chatml else ["<unk>", "<s>", "</s>"]
    # answers are learnt where they are scored: after vicuna_v1's "ASSISTANT: " / hermes-2's "assistant\n"
    corpus = lift_answer_corpus(random.Random(seed), VILA_WORDS,
                                answer_prefix="assistant\n" if chatml else "ASSISTANT: ")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if chatml:
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|im_end|>",
                                       unk_token="<unk>", pad_token="<unk>",
                                       additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=4096)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096)


def _scale_(module, std: float) -> None:
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.8, 1.2)


def _write_llm(out: Path, tokenizer, vision: str, shape_: VilaShape):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (tokenizer.bos_token, tokenizer.eos_token)}
    shape: dict[str, Any] = dict(num_attention_heads=shape_.llm_heads, num_key_value_heads=shape_.llm_heads)
    if vision == "internvit":  # Yi-34B: 56 query heads over 8 KV heads, rope theta 5e6
        shape = dict(num_attention_heads=shape_.llm_heads, num_key_value_heads=shape_.llm_heads // 2,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0})
    bos, eos = ids[tokenizer.bos_token], ids[tokenizer.eos_token]
    pad = tokenizer.convert_tokens_to_ids("<unk>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=shape_.llm_hidden,
                      intermediate_size=shape_.llm_intermediate, num_hidden_layers=shape_.llm_layers,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eos,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="float32", **shape)
    llm = LlamaForCausalLM(cfg).float()
    _scale_(llm, 0.08)
    llm.save_pretrained(out / "llm")
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, max_new_tokens=64).save_pretrained(out / "llm")
    return llm


def _write_siglip(out: Path, image_size: int) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    vt_cfg = SiglipVisionConfig(image_size=image_size, patch_size=PATCH_SIZE, hidden_size=VISION_HIDDEN,
                                intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                architectures=["SiglipVisionModel"], dtype="float32")
    tower = SiglipVisionModel(vt_cfg).float()
    _scale_(tower, 0.1)
    tower.save_pretrained(out / "vision_tower")
    weights = out / "vision_tower" / "model.safetensors"
    # Real VILA-1.5 files (transformers 4.x) carry `vision_model.`; transformers 5 drops it: mimic the real ones.
    save_file({k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in load_file(weights).items()},
              weights, metadata={"format": "pt"})
    SiglipImageProcessor(size={"height": image_size, "width": image_size}, do_resize=True, do_rescale=True,
                         do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out / "vision_tower")
    return {"mm_vision_select_feature": "cls_patch", "mm_vision_select_layer": -2}


def intern_vit_tiny_config() -> dict[str, Any]:
    """vision_tower/config.json as VILA saves its InternVisionConfig (InternViT-6B's keys, tiny sizes)."""
    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": VISION_HIDDEN, "num_attention_heads": 2, "intermediate_size": 128, "num_hidden_layers": 3,
        "image_size": INTERN_IMAGE_SIZE, "patch_size": PATCH_SIZE, "num_channels": 3,
        "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm", "hidden_act": "gelu",
        "layer_norm_eps": 1e-6, "initializer_factor": 0.1, "initializer_range": 0.02,
        "drop_path_rate": 0.0, "dropout": 0.0, "attention_dropout": 0.0, "use_flash_attn": True,
        "torch_dtype": "float32",
    }


def _write_internvit(out: Path) -> dict[str, Any]:
    """VILA's InternVisionModel tensors by name and shape (intern_vit.vila_tensor_shapes), drawn at random."""
    import torch
    from safetensors.torch import save_file

    from service.families.vila.intern_vit import transformers_vision_config, vila_tensor_shapes

    raw = intern_vit_tiny_config()
    tensors = {}
    for name, shape in vila_tensor_shapes(transformers_vision_config(raw)).items():
        if name.endswith(("ls1", "ls2")):
            t = torch.empty(shape).uniform_(0.5, 1.0)  # layer scales (0.1 at init) large enough to matter
        elif "norm" in name:
            t = torch.empty(shape).uniform_(0.8, 1.2)
        elif name.endswith("bias"):
            t = torch.empty(shape).normal_(0.0, 0.02)
        elif name.startswith("embeddings.") and "patch_embedding" not in name:
            t = torch.empty(shape).normal_(0.0, 0.5)  # CLS and position embeddings
        else:
            t = torch.empty(shape).normal_(0.0, 0.1)
        tensors[name] = t.contiguous()
    (out / "vision_tower").mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "vision_tower" / "model.safetensors", metadata={"format": "pt"})
    (out / "vision_tower" / "config.json").write_text(json.dumps(raw, indent=2))
    # What VILA's InternVisionPreprocessor leaves when saved; the converter ignores it (it knows VILA's transform).
    (out / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "InternVisionPreprocessor"}, indent=2))
    # the 40B release scripts: --mm_vision_select_layer -1 and args.py's default feature "patch"
    return {"mm_vision_select_feature": "patch", "mm_vision_select_layer": -1}


def build_tiny_vila(out_dir: str | Path, seed: int = 0, with_lora: bool = False, vision: str = "siglip",
                    preset: str = "tiny") -> Path:
    """Write a tiny VILA-1.5 release into `out_dir` (and LiFT's LoRA release into `out_dir/lora`).
    `preset="realistic"`: LiFT-Critic-13B's token proportions (siglip only; see `VilaShape`)."""
    import torch
    from safetensors.torch import save_file

    from service.families.vila.projector import MlpDownsampleProjector

    if vision not in VISIONS:
        raise ValueError(f"unknown VILA vision tower {vision!r}; choose from {', '.join(VISIONS)}")
    if preset not in SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset != "tiny" and vision != "siglip":
        raise ValueError("the realistic preset is 13B-shaped: vision siglip")
    shape = SHAPES[preset]
    out = Path(out_dir)
    for sub in ("llm", "vision_tower", "mm_projector"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    tokenizer = _tokenizer(seed, vision)
    tokenizer.save_pretrained(out / "llm")
    llm = _write_llm(out, tokenizer, vision, shape)
    select = _write_siglip(out, shape.image_size) if vision == "siglip" else _write_internvit(out)

    projector = MlpDownsampleProjector(VISION_HIDDEN, shape.llm_hidden)
    with torch.no_grad():
        for p in projector.parameters():
            p.normal_(0.0, 0.1)
        projector.layers[1].weight.add_(1.0)
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()},
              out / "mm_projector" / "model.safetensors", metadata={"format": "pt"})
    proj_cfg = {"architectures": ["MultimodalProjector"], "mm_projector_type": "mlp_downsample",
                "model_type": "v2l_projector"}
    (out / "mm_projector" / "config.json").write_text(json.dumps(proj_cfg, indent=2))

    top = {
        "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
        "llm_cfg": json.loads((out / "llm" / "config.json").read_text()),
        "vision_tower_cfg": json.loads((out / "vision_tower" / "config.json").read_text()),
        "mm_projector_cfg": proj_cfg,
        "hidden_size": shape.llm_hidden, "mm_hidden_size": VISION_HIDDEN, "image_aspect_ratio": "resize",
        **select, "s2": False,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "model_dtype": "torch.float32",
    }
    (out / "config.json").write_text(json.dumps(top, indent=2))
    if with_lora:
        _write_lora(out, llm, projector, seed=rng.randint(0, 2**31 - 1))
    return out


def build_tiny_vila_critic(out_dir: str | Path, seed: int = 0, with_lora: bool = True, vision: str = "siglip",
                          preset: str = "tiny") -> Path:
    """A tiny VILA in VILA's layout under `out_dir/vila-src`, converted (LoRA merged) into `out_dir/critic`:
    the folder `Critic.from_pretrained` loads."""
    from service.families.vila.convert import convert_vila

    out = Path(out_dir)
    src = build_tiny_vila(out / "vila-src", seed=seed, with_lora=with_lora, vision=vision, preset=preset)
    return convert_vila(src, out / "critic", src / "lora" if with_lora else None).out_dir


def _write_lora(out: Path, llm, projector, seed: int) -> None:
    """LiFT's release: a peft LoRA on the language model + `non_lora_trainables.bin` (LLaVA convention)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    class _VilaShaped(nn.Module):  # same attribute names as VILA's LlavaLlamaModel -> same peft key names
        def __init__(self) -> None:
            super().__init__()
            self.llm, self.vision_tower, self.mm_projector = llm, nn.Identity(), projector

    torch.manual_seed(seed)
    config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                        # a string is a full-match regex for peft: the language model only, as LiFT's --lora_llm
                        target_modules=rf"llm\.model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(LORA_TARGETS)})",
                        init_lora_weights=False)  # random B as well as A: a merge that changes something
    peft_model = get_peft_model(_VilaShaped(), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    lora_dir = out / "lora"
    peft_model.save_pretrained(lora_dir)
    # The projector was trained too (LiFT's non_lora_trainables): perturbed copies, keys as LLaVA saves them.
    non_lora = {f"base_model.model.mm_projector.{k}": (v + 0.02 * torch.randn_like(v)).contiguous()
                for k, v in projector.state_dict().items()}
    torch.save(non_lora, lora_dir / "non_lora_trainables.bin")


__all__ = ["IMAGE_SIZE", "PRESETS", "SHAPES", "VilaShape", "INTERN_IMAGE_SIZE", "LORA_ALPHA", "LORA_R", "PATCH_SIZE", "VISIONS", "build_tiny_vila",
           "build_tiny_vila_critic", "intern_vit_tiny_config"]
