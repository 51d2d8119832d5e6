"""VideoAlign's VideoReward (service.critics.videoalign) on our engines.

  convert.py      the release (model_config.json, checkpoint-N/model.pth with LoRA + non-LoRA weights, the
                  extended tokenizer) + its Qwen2-VL base -> a Qwen2-VL checkpoint both engines load (LoRA
                  merged) + rm_head.safetensors + lift_critic.json (`lift convert-videoalign`, cli.py)
  vllm_model.py   vLLM's Qwen2-VL with VideoAlign's 1-D positions (selected per engine, no entry point)
  reference.py    a transformers model with VideoAlign's forward semantics (rm_head on every position, read at
                  the reward tokens), to hold the engines to
This module stays import-light (no torch).
"""

from __future__ import annotations

ARCHITECTURE = "LiftVideoAlignQwen2VLForConditionalGeneration"
VLLM_MODEL_PATH = "service.families.videoalign.vllm_model:LiftVideoAlignQwen2VLForConditionalGeneration"
HEAD_FILE = "rm_head.safetensors"
