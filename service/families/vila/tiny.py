"""A tiny random VILA-1.5 in VILA's own release layout, plus a LoRA in LiFT-Critic's release layout. Offline.

    OUT/config.json          model_type llava_llama; llm_cfg / vision_tower_cfg / mm_projector_cfg inside
    OUT/llm/                 LlamaForCausalLM (head_dim 32: CPU attention needs 32/64/80+) + tokenizer
    OUT/vision_tower/        SiglipVisionModel, keys prefixed `vision_model.` as VILA's 4.x-era files are,
                             + SiglipImageProcessor config
    OUT/mm_projector/        mlp_downsample (keys layers.1/2/4) + config.json
    OUT/lora/                (with_lora) adapter_config.json + adapter_model.safetensors made by peft itself
                             on a model shaped like VILA's (keys base_model.model.llm....lora_A/B.weight),
                             non_lora_trainables.bin (projector weights, LLaVA-style key names)

The SigLIP grid is 9x9 (image 126, patch 14): odd, like SigLIP-384's 27x27, so the projector's padding is
exercised; 25 tokens per frame after the 2x2 merge, 200 for 8 frames. Weights are drawn larger than the
default init so that logits are far from uniform and parity checks mean something.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


LLM_HIDDEN = 128
VISION_HIDDEN = 64
IMAGE_SIZE = 126
PATCH_SIZE = 14
LORA_R = 8
LORA_ALPHA = 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_WORDS = ("the a video frame shows person walking running car red blue green yellow white black cat dog bird "
          "river sky city night day smooth motion jitter noise blurry sharp realistic consistent matches does "
          "not match caption scene subject color style hands face limbs user assistant chat curious artificial "
          "intelligence helpful detailed polite answers questions").split()


def _corpus(rng: random.Random):
    from service.tiny_critic import lift_answer_corpus

    # vicuna_v1 answers follow "ASSISTANT:", so the answers are trained in that context
    return lift_answer_corpus(rng, _WORDS, answer_prefix="ASSISTANT: ")


def _tokenizer(seed: int):
    """A Llama-like tokenizer (<unk>=0, <s>=1, </s>=2, BOS added) trained on the spot: no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(random.Random(seed)), trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
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


def build_tiny_vila(out_dir: str | Path, seed: int = 0, with_lora: bool = False) -> Path:
    """Write a tiny VILA-1.5 release into `out_dir` (and LiFT's LoRA release into `out_dir/lora`)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, SiglipImageProcessor,
                              SiglipVisionConfig, SiglipVisionModel)

    from service.families.vila.projector import MlpDownsampleProjector

    out = Path(out_dir)
    for sub in ("llm", "vision_tower", "mm_projector"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    tokenizer = _tokenizer(seed)
    tokenizer.save_pretrained(out / "llm")
    llm_cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN, intermediate_size=256,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                          tie_word_embeddings=False, architectures=["LlamaForCausalLM"], dtype="float32")
    llm = LlamaForCausalLM(llm_cfg).float()
    _scale_(llm, 0.08)
    llm.save_pretrained(out / "llm")
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_new_tokens=64).save_pretrained(out / "llm")

    vt_cfg = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=VISION_HIDDEN,
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
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_resize=True, do_rescale=True,
                         do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out / "vision_tower")

    projector = MlpDownsampleProjector(VISION_HIDDEN, LLM_HIDDEN)
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
        "hidden_size": LLM_HIDDEN, "mm_hidden_size": VISION_HIDDEN, "image_aspect_ratio": "resize",
        "mm_vision_select_feature": "cls_patch", "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "model_dtype": "torch.float32",
    }
    (out / "config.json").write_text(json.dumps(top, indent=2))
    if with_lora:
        _write_lora(out, llm, tower, projector, seed=rng.randint(0, 2**31 - 1))
    return out


def build_tiny_vila_critic(out_dir: str | Path, seed: int = 0, with_lora: bool = True) -> Path:
    """A tiny VILA in VILA's layout under `out_dir/vila-src`, converted (LoRA merged) into `out_dir/critic`:
    the folder `Critic.from_pretrained` loads (what `build_tiny_critic` promises for the other family)."""
    from service.families.vila.convert import convert_vila

    out = Path(out_dir)
    src = build_tiny_vila(out / "vila-src", seed=seed, with_lora=with_lora)
    return convert_vila(src, out / "critic", src / "lora" if with_lora else None).out_dir


def _write_lora(out: Path, llm, tower, projector, seed: int) -> None:
    """LiFT's release: a peft LoRA on the language model + `non_lora_trainables.bin` (LLaVA convention)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    class _VilaShaped(nn.Module):  # same attribute names as VILA's LlavaLlamaModel -> same peft key names
        def __init__(self) -> None:
            super().__init__()
            self.llm, self.vision_tower, self.mm_projector = llm, tower, projector

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


__all__ = ["build_tiny_vila", "build_tiny_vila_critic", "IMAGE_SIZE", "PATCH_SIZE", "LORA_R", "LORA_ALPHA"]
