"""VILA-1.5 in transformers: the reference the vLLM model is held to, and the transformers engine's model.

Written from VILA-1.5's own modules (llava/model/llava_arch.py, multimodal_encoder/{siglip,intern}_encoder.py,
multimodal_projector/base_projector.py), on transformers' SigLIP, InternViT (its InternVL port) and Llama:
  vision tower  hidden_states[mm_vision_select_layer] of the tower, post-layernorm never applied:
                13B: SigLIP, layer -2, every token ("cls_patch": SigLIP has no CLS token);
                40B: InternViT-6B, layer -1, CLS dropped ("patch"; see intern_vit.py for where VILA says so)
  projector     mlp_downsample (projector.py)
  LLM           Llama (Yi-34B is a Llama); each image's projected tokens replace that image's run of
                `<image>` ids in the prompt
The prompt given to `forward` is already expanded (one `<image>` id per projected token, built by the family),
so positions, the KV cache and `generate()` work as for any causal LM; VILA splices the same embeddings in
place of one sentinel per image, which gives the same sequence.

Checkpoint names are VILA's (`vision_tower.<name in VILA's vision_tower/ files>`); a tower whose transformers
module names differ (InternViT) maps them in `checkpoint_to_module` / `module_to_checkpoint`, which
`load_reference` and `VilaForConditionalGeneration.checkpoint_state_dict` use, so saving a trained model
keeps the converted layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, LlavaConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from service.errors import ModelLoadError
from service.families.vila import ARCHITECTURE, TEXT_VOCAB_KEY, vision_grid
from service.families.vila.projector import MlpDownsampleProjector, num_output_tokens

# Logit for the padding rows of the vocabulary (added so `<image>` is in-vocab): exp(-1e4) == 0 in fp32/bf16.
MASKED_LOGIT = -1e4


class SiglipTower(nn.Module):
    """VILA's SiglipVisionTower: features of one hidden layer, every patch token."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        from transformers import SiglipVisionModel

        # Attribute named like VILA's files (`vision_tower.vision_model.*`); transformers 5's SiglipVisionModel
        # has no inner `vision_model`, so checkpoint keys map 1:1 onto this wrapper's.
        self.vision_model = SiglipVisionModel(config.vision_config)
        self.select_layer = int(config.vision_feature_layer)
        self.grid = vision_grid(config.vision_config)

    @property
    def hidden_size(self) -> int:
        return self.vision_model.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values, output_hidden_states=True)
        return out.hidden_states[self.select_layer]

    def checkpoint_to_module(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [(name, tensor)]

    def module_to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state


class InternVitTower(nn.Module):
    """VILA's InternVisionTower on transformers' InternVLVisionModel: hidden_states[select_layer] (the 40B: the
    last layer), CLS dropped when the strategy is LLaVA's "default" (VILA's "patch")."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        from transformers import InternVLVisionModel

        self.vision_model = InternVLVisionModel(config.vision_config)
        self.select_layer = int(config.vision_feature_layer)
        self.drop_cls = config.vision_feature_select_strategy == "default"
        self.grid = vision_grid(config.vision_config)

    @property
    def hidden_size(self) -> int:
        return self.vision_model.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        return features[:, 1:] if self.drop_cls else features

    def checkpoint_to_module(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        from service.families.vila.intern_vit import to_transformers

        return [(f"vision_model.{n}", t) for n, t in to_transformers(name, tensor)]

    def module_to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from service.families.vila.intern_vit import from_transformers

        return from_transformers({k.removeprefix("vision_model."): v for k, v in state.items()})


# vision_config.model_type -> tower; the projector and LLM do not change.
TOWERS: dict[str, type[nn.Module]] = {"siglip_vision_model": SiglipTower, "internvl_vision": InternVitTower}


def build_tower(config: LlavaConfig) -> nn.Module:
    kind = config.vision_config.model_type
    if kind not in TOWERS:
        raise ModelLoadError(f"VILA vision tower {kind!r} is not supported (supported: {', '.join(TOWERS)})")
    return TOWERS[kind](config)


class VilaForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """VILA-1.5 (`llava_llama`) on a converted checkpoint: keys llm.*, vision_tower.*, mm_projector.*."""

    config_class = LlavaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__(config)
        self.vision_tower = build_tower(config)
        self.mm_projector = MlpDownsampleProjector(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.llm = LlamaForCausalLM(config.text_config)
        vocab = config.text_config.vocab_size
        real = getattr(config, TEXT_VOCAB_KEY, None) or vocab
        self.real_vocab_size = min(int(real), vocab)
        self.image_token_id = int(config.image_token_id)
        self.tokens_per_image = num_output_tokens(self.vision_tower.grid)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    # ---- converted-checkpoint names <-> this module's names (identical except inside some towers) ----
    def checkpoint_to_module(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name.startswith("vision_tower."):
            return [(f"vision_tower.{n}", t)
                    for n, t in self.vision_tower.checkpoint_to_module(name.removeprefix("vision_tower."), tensor)]
        return [(name, tensor)]

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the converted checkpoint's names (what `load_reference` reads back)."""
        state = self.state_dict()
        tower = {k.removeprefix("vision_tower."): v for k, v in state.items() if k.startswith("vision_tower.")}
        out = {k: v for k, v in state.items() if not k.startswith("vision_tower.")}
        out.update({f"vision_tower.{k}": v for k, v in self.vision_tower.module_to_checkpoint(tower).items()})
        return out

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, tokens_per_image, D): VILA's `encode_images`."""
        features = self.vision_tower(pixel_values.to(self.dtype))
        return self.mm_projector(features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.llm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values).reshape(-1, inputs_embeds.shape[-1])
            slots = (input_ids == self.image_token_id).unsqueeze(-1)
            if int(slots.sum()) != image_embeds.shape[0]:
                raise ValueError(f"prompt has {int(slots.sum())} image-token slots but the images give "
                                 f"{image_embeds.shape[0]} tokens ({self.tokens_per_image} per image)")
            inputs_embeds = inputs_embeds.masked_scatter(slots, image_embeds.to(inputs_embeds.dtype))
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep,
                       **kwargs)
        logits = out.logits
        if self.real_vocab_size < logits.shape[-1]:
            logits = logits.clone()
            logits[..., self.real_vocab_size:] = MASKED_LOGIT
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)


def load_config(model_dir: str | Path) -> LlavaConfig:
    from service.families.vila import is_converted, is_original_layout, read_config

    raw = read_config(model_dir)
    if not is_converted(raw):
        hint = " (VILA's release layout: run `lift convert-vila` first)" if is_original_layout(model_dir) else ""
        raise ModelLoadError(f"{model_dir} is not a converted VILA checkpoint{hint}")
    return LlavaConfig.from_pretrained(str(model_dir))


def load_reference(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> VilaForConditionalGeneration:
    """Build the reference on `device` and load every tensor of the checkpoint, strictly (no silent gaps)."""
    from safetensors.torch import load_file

    config = load_config(model_dir)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no *.safetensors weights")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise straight in the target dtype (a 13B in fp32 is 52 GB)
    try:
        with torch.device(device):
            model = VilaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    expected = model.state_dict()
    seen: set[str] = set()
    for f in files:
        shard: dict[str, torch.Tensor] = {}
        unknown: list[str] = []
        for key, t in load_file(str(f), device=str(device)).items():
            try:
                mapped = model.checkpoint_to_module(key, t)
            except ModelLoadError:
                unknown.append(key)
                continue
            for name, value in mapped:
                if name not in expected:
                    unknown.append(key)
                elif tuple(value.shape) != tuple(expected[name].shape):
                    raise ModelLoadError(f"{key}: checkpoint shape {tuple(t.shape)} does not fit the model "
                                         f"({name} {tuple(expected[name].shape)})")
                else:
                    shard[name] = value
        if unknown:
            raise ModelLoadError(f"{f.name} has tensors the VILA model does not have: {unknown[:5]}")
        model.load_state_dict(shard, strict=False)
        seen.update(shard)
        del shard
    missing = sorted(set(expected) - seen)
    if missing:
        raise ModelLoadError(f"{model_dir} lacks {len(missing)} tensors, e.g. {missing[:5]}")
    return model.to(dtype).eval()


__all__ = ["ARCHITECTURE", "InternVitTower", "MASKED_LOGIT", "SiglipTower", "TOWERS", "VilaForConditionalGeneration",
           "build_tower", "load_config", "load_reference"]
