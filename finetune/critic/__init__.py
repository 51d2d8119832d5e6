"""Critic training from human ratings (LiFT-HRA style): read rated videos, fine-tune a critic with LoRA,
merge it into a checkpoint `lift serve` loads, and evaluate a critic against held-out human labels.

Submodules import torch/transformers lazily where they need them: `data` and `metrics` stay light.
"""
