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
    OUT/llm/                 LlamaForCausalLM (head_dim 32: CPU attention needs 32/64/80+) + tokenizer: as the real
                             llm/ folders, SentencePiece only (tokenizer.model, tokenizer_config.json,
                             special_tokens_map.json; no tokenizer.json), trained on the spot with `sentencepiece`:
                             Llama-2-style for siglip (BPE, byte fallback, dummy prefix, BOS added; legacy=False as
                             VILA loads it), Yi-style for internvit (no dummy prefix, ChatML markers as user-defined
                             pieces, no BOS added, eos <|im_end|>; legacy=True as Yi's files say).
                             `tokenizer="bpe"`: a byte-level BPE tokenizer.json instead (a release VILA loads fast)
    OUT/vision_tower/        the tower's weights + config (+ its image-processor file)
    OUT/mm_projector/        mlp_downsample (keys layers.1/2/4) + config.json
    OUT/lora/                (with_lora) adapter_config.json + adapter_model.safetensors made by peft itself
                             on a model shaped like VILA's (keys base_model.model.llm....lora_A/B.weight),
                             non_lora_trainables.bin: an empty dict, as in LiFT's four releases (about 900 bytes:
                             LiFT froze the projector, --tune_mm_projector False); `non_lora="projector"` writes
                             projector weights into it instead (LLaVA-style key names), for the replacement path

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
TOKENIZERS = ("sentencepiece", "bpe")
NON_LORA = ("empty", "projector")
TOKENIZER_VOCAB = 600


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


def _tokenizer_corpus(seed: int, chatml: bool) -> list[str]:
    """LiFT-like answers where they are scored (after vicuna_v1's "ASSISTANT: " / hermes-2's "assistant\n"), plus
    the template's own text, so that its words are whole pieces as in a real tokenizer."""
    from service.families.vila.prompt import CHAT_TEMPLATES
    from service.tiny_critics.corpus import VILA_WORDS, lift_answer_corpus

    template = CHAT_TEMPLATES["hermes-2" if chatml else "vicuna_v1"]
    lines = list(lift_answer_corpus(random.Random(seed), VILA_WORDS,
                                    answer_prefix="assistant\n" if chatml else "ASSISTANT: "))
    return lines + [template.render("a video")] * 30


def _write_sentencepiece_tokenizer(llm: Path, seed: int, vision: str) -> None:
    """tokenizer.model (+ tokenizer_config.json, special_tokens_map.json), trained with `sentencepiece`.

    siglip: Llama-2's kind: <unk> <s> </s> at 0-2, bytes <0x00>..<0xFF> from 3, dummy prefix on, identity
    normalisation, extra whitespace kept, digits split. internvit: Yi's kind: <unk> <|startoftext|>
    <|endoftext|> at 0-2, dummy prefix OFF, and Nous-Hermes-2-Yi-34B's ChatML markers as user-defined pieces; its
    tokenizer_config.json as the Yi family's (01-ai/Yi-34B-200K, Yi-1.5-34B on the hub: LlamaTokenizer,
    add_bos_token false, legacy true) with Nous-Hermes-2-Yi-34B's special tokens (eos <|im_end|>, pad <unk>)."""
    import io

    import sentencepiece as spm

    chatml = vision == "internvit"
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus(seed, chatml)), model_writer=model, model_type="bpe",
        vocab_size=TOKENIZER_VOCAB, hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, add_dummy_prefix=not chatml, num_threads=1,
        minloglevel=2, **({"bos_piece": "<|startoftext|>", "eos_piece": "<|endoftext|>",
                           "user_defined_symbols": ["<|im_start|>", "<|im_end|>"]} if chatml else {}))
    (llm / "tokenizer.model").write_bytes(model.getvalue())

    def added(content: str, special: bool = True) -> dict[str, Any]:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": special}

    if chatml:
        names = ["<unk>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        special_map = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
                       "pad_token": "<unk>"}
        config = {"add_bos_token": False, "add_eos_token": False, "legacy": True}
    else:
        names = ["<unk>", "<s>", "</s>"]
        special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        config = {"add_bos_token": True, "add_eos_token": False, "legacy": False, "padding_side": "right"}
    config = {**config, "added_tokens_decoder": {str(i): added(t) for i, t in enumerate(names)}, **special_map,
              "clean_up_tokenization_spaces": False, "model_max_length": 4096, "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer"}
    (llm / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # as transformers 4.x writes it: AddedToken fields without "special"
    (llm / "special_tokens_map.json").write_text(json.dumps(
        {k: {f: x for f, x in added(v).items() if f != "special"} for k, v in special_map.items()}, indent=2))


def _sentencepiece_vocab(llm: Path) -> dict[str, int]:
    """Size and bos / eos / pad ids of a SentencePiece llm/ folder, from the model itself (pad: <unk>)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(llm / "tokenizer.model"))
    names = json.loads((llm / "special_tokens_map.json").read_text())
    return {"size": sp.get_piece_size(), "bos": sp.piece_to_id(names["bos_token"]["content"]),
            "eos": sp.piece_to_id(names["eos_token"]["content"]), "pad": sp.piece_to_id("<unk>")}


def _tokenizer(seed: int, vision: str):
    """A byte-level BPE tokenizer.json trained on the spot (no hub): Llama-2-like for siglip, Yi/ChatML-like for
    internvit. Not what the real releases ship (see `_write_sentencepiece_tokenizer`): kept for releases that do."""
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


def _write_llm(out: Path, vocab: dict[str, int], vision: str, shape_: VilaShape):
    """`vocab`: the tokenizer's size and its bos / eos / pad ids."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape: dict[str, Any] = dict(num_attention_heads=shape_.llm_heads, num_key_value_heads=shape_.llm_heads)
    if vision == "internvit":  # Yi-34B: 56 query heads over 8 KV heads, rope theta 5e6
        shape = dict(num_attention_heads=shape_.llm_heads, num_key_value_heads=shape_.llm_heads // 2,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0})
    bos, eos, pad = vocab["bos"], vocab["eos"], vocab["pad"]
    cfg = LlamaConfig(vocab_size=vocab["size"], hidden_size=shape_.llm_hidden,
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
                    preset: str = "tiny", tokenizer: str = "sentencepiece", non_lora: str = "empty") -> Path:
    """Write a tiny VILA-1.5 release into `out_dir` (and LiFT's LoRA release into `out_dir/lora`).
    `preset="realistic"`: LiFT-Critic-13B's token proportions (siglip only; see `VilaShape`).
    `tokenizer`: "sentencepiece" (as the real llm/ folders) or "bpe" (a tokenizer.json). `non_lora`: what
    lora/non_lora_trainables.bin holds: "empty" (as LiFT's releases) or "projector" (trained projector weights)."""
    import torch
    from safetensors.torch import save_file

    from service.families.vila.projector import MlpDownsampleProjector

    if vision not in VISIONS:
        raise ValueError(f"unknown VILA vision tower {vision!r}; choose from {', '.join(VISIONS)}")
    if preset not in SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset != "tiny" and vision != "siglip":
        raise ValueError("the realistic preset is 13B-shaped: vision siglip")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {tokenizer!r}; choose from {', '.join(TOKENIZERS)}")
    if non_lora not in NON_LORA:
        raise ValueError(f"unknown non_lora {non_lora!r}; choose from {', '.join(NON_LORA)}")
    shape = SHAPES[preset]
    out = Path(out_dir)
    for sub in ("llm", "vision_tower", "mm_projector"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    if tokenizer == "sentencepiece":
        _write_sentencepiece_tokenizer(out / "llm", seed, vision)
        vocab = _sentencepiece_vocab(out / "llm")
    else:
        bpe = _tokenizer(seed, vision)
        bpe.save_pretrained(out / "llm")
        vocab = {"size": len(bpe), "bos": bpe.bos_token_id, "eos": bpe.eos_token_id,
                 "pad": bpe.convert_tokens_to_ids("<unk>")}
    llm = _write_llm(out, vocab, vision, shape)
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
        _write_lora(out, llm, projector, seed=rng.randint(0, 2**31 - 1), non_lora=non_lora)
    return out


def build_tiny_vila_critic(out_dir: str | Path, seed: int = 0, with_lora: bool = True, vision: str = "siglip",
                          preset: str = "tiny", **options: str) -> Path:
    """A tiny VILA in VILA's layout under `out_dir/vila-src`, converted (LoRA merged) into `out_dir/critic`:
    the folder `Critic.from_pretrained` loads. `options`: build_tiny_vila's tokenizer / non_lora."""
    from service.families.vila.convert import convert_vila

    out = Path(out_dir)
    src = build_tiny_vila(out / "vila-src", seed=seed, with_lora=with_lora, vision=vision, preset=preset, **options)
    return convert_vila(src, out / "critic", src / "lora" if with_lora else None).out_dir


def _write_lora(out: Path, llm, projector, seed: int, non_lora: str = "empty") -> None:
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
    # LiFT trained with --tune_mm_projector False (LiFT-Critic/train/train_critic_*.sh): nothing but the LoRA was
    # trained, and the released file is an empty dict (~900 bytes). "projector": a release whose projector was
    # trained too, perturbed copies under the key names LLaVA saves.
    trained = {} if non_lora == "empty" else {
        f"base_model.model.mm_projector.{k}": (v + 0.02 * torch.randn_like(v)).contiguous()
        for k, v in projector.state_dict().items()}
    torch.save(trained, lora_dir / "non_lora_trainables.bin")


__all__ = ["IMAGE_SIZE", "PRESETS", "SHAPES", "VilaShape", "INTERN_IMAGE_SIZE", "LORA_ALPHA", "LORA_R", "NON_LORA",
           "PATCH_SIZE", "TOKENIZERS", "VISIONS", "build_tiny_vila", "build_tiny_vila_critic", "intern_vit_tiny_config"]
