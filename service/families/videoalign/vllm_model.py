"""vLLM's Qwen2-VL with every token at its own index in all three M-RoPE sections, as VideoAlign computes it.

VideoAlign's `Qwen2VLRewardModelBT.forward` (trainer.py) embeds the frames itself and calls the text model
with `position_ids=None`; transformers 4.45.2 (its pinned version) then gives every token the position
`cache_position` in all three sections (`Qwen2VLModel.forward`: "the hard coded `3` is for temporal, height and
width"): plain 1-D RoPE, no 3-D positions for the video's tokens (those come from `get_rope_index`, which 4.45
calls only when preparing generation). The released reward model was trained and is run that way, so its
hidden states are only reproduced with the same positions. Everything else is vLLM's Qwen2-VL, unchanged.

Selected per engine (no entry point): the vLLM engine of a head critic is started with
`hf_overrides={"architectures": [ARCHITECTURE]}` and `model_class_overrides={ARCHITECTURE: VLLM_MODEL_PATH}`
(service.engines.vllm_engine.POOLING_ENGINE_ARGS), which vLLM registers in each of its processes.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration


class LiftVideoAlignQwen2VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    def get_mrope_input_positions(self, input_tokens, mm_features):  # type: ignore[no-untyped-def]
        n = len(input_tokens)
        return torch.arange(n, dtype=torch.int64).unsqueeze(0).expand(3, n).contiguous(), 0
