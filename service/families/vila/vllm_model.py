"""VILA-1.5 as a vLLM model (out of tree), for checkpoints written by `lift convert-vila`.

Imported only inside vLLM processes, lazily, through the plugin's registration (plugin.py). Everything but
the projector, the image-token count and the vocabulary mask is vLLM's own code: the LLaVA model and
processor (vllm/model_executor/models/llava.py: the Llama LM, each `<image>` id of a token prompt turned into
`tokens_per_image` placeholder ids) and the towers, each built only up to `vision_feature_layer`:
  13B  SigLIP (vLLM's siglip.py via LLaVA's helper), no post-layernorm (= VILA's hidden_states[-2])
  40B  InternViT (vLLM's intern_vit.py, the one vLLM's InternVL runs; VILA's tensor names), the last layer,
       CLS dropped (VILA's "patch"; intern_vit.py says where that comes from). InternViT-6B's 25 heads do not
       divide by a tensor-parallel size, so vLLM runs its attention unsharded on every rank (its own rule);
       the MLP is sharded.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaImageEmbeddingInputs, LlavaImagePixelInputs,
                                              LlavaMultiModalProcessor, LlavaProcessingInfo,
                                              init_vision_tower_for_llava)
from vllm.model_executor.models.utils import WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageSize

from service.families.vila import TEXT_VOCAB_KEY, vision_grid, vision_image_size
from service.families.vila.intern_vit import HF_MODEL_TYPE, kept_layers, layer_index
from service.families.vila.projector import downsample_2x2, num_output_tokens

MASKED_LOGIT = -1e4  # same value as the reference (reference.MASKED_LOGIT); kept local: no transformers model import


class VilaMlpDownsampleProjector(nn.Module):
    """mlp_downsample with vLLM's tensor-parallel linears (column then row: one all-reduce)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(4 * vision_hidden_size)
        self.linear_1 = ColumnParallelLinear(4 * vision_hidden_size, text_hidden_size, bias=True,
                                             quant_config=quant_config, prefix=f"{prefix}.linear_1")
        self.act = nn.GELU()
        self.linear_2 = RowParallelLinear(text_hidden_size, text_hidden_size, bias=True,
                                          quant_config=quant_config, prefix=f"{prefix}.linear_2")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(downsample_2x2(features))
        x, _ = self.linear_1(x)
        x, _ = self.linear_2(self.act(x))
        return x


class VilaProcessingInfo(LlavaProcessingInfo):
    def get_hf_processor(self, **kwargs: object):
        # VILA preprocessed with PIL; transformers 5 defaults SigLIP to a torchvision backend whose bicubic
        # resize differs by ~1/255 per pixel.
        kwargs.setdefault("backend", "pil")
        return super().get_hf_processor(**kwargs)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        # every frame is resized to image_size; a dropped CLS does not change the patch grid
        return num_output_tokens(vision_grid(self.get_hf_config().vision_config))

    def get_image_size_with_most_features(self) -> ImageSize:
        # LLaVA's version asks vLLM's encoder-info table, which knows CLIP/SigLIP/Pixtral only
        side = vision_image_size(self.get_hf_config().vision_config)
        return ImageSize(width=side, height=side)


def intern_vit_config(vision_config) -> PretrainedConfig:
    """transformers' InternVLVisionConfig (what the converted config.json stores) -> the attribute names of
    InternViT's own config, which vLLM's InternVisionModel reads."""
    side, grid = vision_image_size(vision_config), vision_grid(vision_config)
    return PretrainedConfig(
        hidden_size=vision_config.hidden_size, intermediate_size=vision_config.intermediate_size,
        num_attention_heads=vision_config.num_attention_heads, num_hidden_layers=vision_config.num_hidden_layers,
        image_size=side, patch_size=side // grid,
        num_channels=vision_config.num_channels, qkv_bias=vision_config.attention_bias,
        qk_normalization=vision_config.use_qk_norm, norm_type=vision_config.norm_type,
        layer_norm_eps=vision_config.layer_norm_eps, hidden_act=vision_config.hidden_act,
        initializer_factor=vision_config.layer_scale_init_value)


def _init_tower(config, quant_config: QuantizationConfig | None, prefix: str) -> tuple[nn.Module, int | None]:
    """The tower, and for InternViT how many of its blocks are built (the checkpoint's others are skipped)."""
    kind = config.vision_config.model_type
    if kind == "siglip_vision_model":
        return init_vision_tower_for_llava(config, quant_config=quant_config, require_post_norm=False,
                                           prefix=prefix), None
    if kind == HF_MODEL_TYPE:
        from vllm.model_executor.models.intern_vit import InternVisionModel

        keep = kept_layers(int(config.vision_feature_layer), config.vision_config.num_hidden_layers)
        return InternVisionModel(intern_vit_config(config.vision_config), quant_config=quant_config,
                                 num_hidden_layers_override=keep, prefix=prefix), keep
    raise NotImplementedError(f"VILA vision tower {kind!r} is not supported")


@MULTIMODAL_REGISTRY.register_processor(LlavaMultiModalProcessor, info=VilaProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class LiftVilaForConditionalGeneration(LlavaForConditionalGeneration):
    # converted-checkpoint names -> vLLM module names (vLLM's Llama/SigLIP then stack q/k/v and gate/up)
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "llm.model.": "language_model.model.",
        "llm.lm_head.": "language_model.lm_head.",
        "mm_projector.layers.1.": "multi_modal_projector.layer_norm.",
        "mm_projector.layers.2.": "multi_modal_projector.linear_1.",
        "mm_projector.layers.4.": "multi_modal_projector.linear_2.",
        # vision_tower.* already matches vLLM's towers: SigLIP's vision_model.* (its unused top layer,
        # post-layernorm and head are skipped by its loader), InternViT's embeddings.* / encoder.layers.*
        # (VILA's names; the fused qkv loads as is; blocks above the selected layer are dropped in load_weights)
    })
    # LiFT's LoRA is merged offline by the converter; serving-time LoRA on tower/connector is not offered.
    supports_tower_connector_lora = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)  # LLaVA's __init__ minus its projector
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.config = config
        self.multimodal_config = vllm_config.model_config.multimodal_config
        projector = getattr(config, "mm_projector_type", "mlp_downsample")
        if projector != "mlp_downsample":
            raise ValueError(f"VILA projector {projector!r} is not supported (only mlp_downsample)")
        self.configure_mm_token_handling(vocab_size=config.text_config.vocab_size,
                                         mm_token_ids=[config.image_token_index])
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower, self._tower_layers = _init_tower(config, quant_config,
                                                                maybe_prefix(prefix, "vision_tower"))
            self.multi_modal_projector = VilaMlpDownsampleProjector(
                config.vision_config.hidden_size, config.text_config.hidden_size, quant_config=quant_config,
                prefix=maybe_prefix(prefix, "multi_modal_projector"))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(vllm_config=vllm_config, hf_config=config.text_config,
                                                             prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        real = getattr(config, TEXT_VOCAB_KEY, None)
        self._real_vocab = int(real) if real is not None and int(real) < config.text_config.vocab_size else None

    def _parse_and_validate_image_input(self, **kwargs: object):
        # LLaVA's version binds the pixel height/width to vision_config.image_size, an [h, w] pair for InternViT
        pixel_values = kwargs.pop("pixel_values", None)
        image_embeds = kwargs.pop("image_embeds", None)
        if pixel_values is not None:
            side = vision_image_size(self.config.vision_config)
            return LlavaImagePixelInputs(type="pixel_values", pixel_values=pixel_values,
                                         resolve_bindings={"h": side, "w": side})
        if image_embeds is not None:
            return LlavaImageEmbeddingInputs(type="image_embeds", data=image_embeds)
        return None

    def _image_pixels_to_features(self, vision_tower: nn.Module, pixel_values):
        if self._tower_layers is None:  # SigLIP: LLaVA's path (layer selection happens inside the tower)
            return super()._image_pixels_to_features(vision_tower, pixel_values)
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        features = vision_tower(pixel_values=pixel_values)  # built up to the selected layer
        return features[:, 1:] if self.config.vision_feature_select_strategy == "default" else features

    def load_weights(self, weights):
        if self._tower_layers is not None:
            keep = self._tower_layers

            def built(name: str) -> bool:  # blocks above the selected layer are not built (SigLIP skips its own)
                block = layer_index(name.removeprefix("vision_tower.")) if name.startswith("vision_tower.") else None
                return block is None or block < keep

            weights = ((n, w) for n, w in weights if built(n))
        return super().load_weights(weights)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None and self._real_vocab is not None:
            # padding rows (added so `<image>` is in-vocab) never get sampled nor share probability mass
            logits[..., self._real_vocab:] = MASKED_LOGIT
        return logits
