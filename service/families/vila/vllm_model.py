"""VILA-1.5 as a vLLM model (out of tree), for checkpoints written by `lift convert-vila`.

Imported only inside vLLM processes, lazily, through the plugin's registration (plugin.py). Everything but
the projector, the image-token count and the vocabulary mask is vLLM's own LLaVA code
(vllm/model_executor/models/llava.py): the SigLIP tower built up to `vision_feature_layer` without the
post-layernorm (= VILA's hidden_states[-2]), the Llama LM, and the processor that turns each `<image>` id of
a token prompt into `tokens_per_image` placeholder ids.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaMultiModalProcessor, LlavaProcessingInfo,
                                              init_vision_tower_for_llava)
from vllm.model_executor.models.utils import WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from service.families.vila import TEXT_VOCAB_KEY
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
        vc = self.get_hf_config().vision_config
        return num_output_tokens(vc.image_size // vc.patch_size)  # every frame is resized to image_size


def _init_tower(config, quant_config: QuantizationConfig | None, prefix: str) -> nn.Module:
    """The pluggable tower: SigLIP through vLLM's LLaVA helper; InternViT (VILA1.5-40b) would go here."""
    kind = config.vision_config.model_type
    if kind == "siglip_vision_model":
        return init_vision_tower_for_llava(config, quant_config=quant_config, require_post_norm=False, prefix=prefix)
    raise NotImplementedError(f"VILA vision tower {kind!r} is not supported yet")


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
        # vision_tower.vision_model.* already matches vLLM's SiglipVisionModel; its unused top layer,
        # post-layernorm and head are skipped by the loader.
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
            self.vision_tower = _init_tower(config, quant_config, maybe_prefix(prefix, "vision_tower"))
            self.multi_modal_projector = VilaMlpDownsampleProjector(
                config.vision_config.hidden_size, config.text_config.hidden_size, quant_config=quant_config,
                prefix=maybe_prefix(prefix, "multi_modal_projector"))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(vllm_config=vllm_config, hf_config=config.text_config,
                                                             prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        real = getattr(config, TEXT_VOCAB_KEY, None)
        self._real_vocab = int(real) if real is not None and int(real) < config.text_config.vocab_size else None

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None and self._real_vocab is not None:
            # padding rows (added so `<image>` is in-vocab) never get sampled nor share probability mass
            logits[..., self._real_vocab:] = MASKED_LOGIT
        return logits
