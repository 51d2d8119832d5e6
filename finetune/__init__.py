"""Reward-weighted fine-tuning of CogVideoX with critic rewards (LiFT), and critic training.

- `finetune.generate`: sample videos to mp4 + a labeling manifest (resumable).
- `finetune.objective`: LiFT Eq. 3 on CogVideoX's diffusion loss.
- `finetune.trainer`: the accelerate training loop (LoRA or full; checkpoints; exact resume).
- `finetune.loop`: online rounds of generate -> score (through `clients/`) -> update.
- `finetune.cli`: `lift make-tiny-generator`, `lift finetune {generate,train,loop}`.

Importing this package loads nothing heavy; torch and diffusers load where they are used.
"""
