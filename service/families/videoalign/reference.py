"""A transformers model with VideoAlign's reward forward, written from trainer.py's semantics (not copied), to hold
our engines (and the runner's head) to.

`Qwen2VLRewardModelBT` (KwaiVGI/VideoAlign trainer.py) is Qwen2VLForConditionalGeneration + `rm_head`, a
bias-free Linear(hidden_size, output_dim). Its forward:
  1. embeds the tokens and scatters the vision tower's output over the video placeholder tokens itself;
  2. runs the text model on those embeddings with position_ids None: in transformers 4.45 (its pin) every token
     then sits at its own index in all three M-RoPE sections (1-D positions; transformers 5's text model does
     the same with position_ids None);
  3. applies rm_head at every position, (B, L, output_dim);
  4. keeps the rows whose input id is any of the three reward tokens (in the order they stand in the prompt),
     views them (B, 3, output_dim), and with output_dim 3 takes the diagonal (output i at the i-th token);
     returns (B, 3) or (B, 3 * output_dim): inference.py names columns 0, 1, 2 VQ, MQ, TA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

from service.families.videoalign import HEAD_FILE


class VideoAlignRewardModel(Qwen2VLForConditionalGeneration):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        text = getattr(config, "text_config", config)
        self.rm_head = nn.Linear(text.hidden_size, 1, bias=False)
        self.special_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_converted(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32) -> "VideoAlignRewardModel":
        """A `lift convert-videoalign` output: the merged Qwen2-VL, its rm_head.safetensors, its reward token ids."""
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        # loaded as the stock class (transformers maps the checkpoint's 4.45 names by class name), then moved over
        stock = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
        model = cls(stock.config).to(dtype)
        missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
        if set(missing) != {"rm_head.weight"} or unexpected:
            raise RuntimeError(f"VideoAlignRewardModel: missing {missing}, unexpected {unexpected}")
        del stock
        weight = load_file(str(model_dir / HEAD_FILE))["weight"]
        model.rm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=dtype)
        with torch.no_grad():
            model.rm_head.weight.copy_(weight.to(dtype))
        meta = json.loads((model_dir / "lift_critic.json").read_text())
        model.special_token_ids = tuple(int(i) for i in meta["reward_tokens"].values())
        return model.eval()

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,  # type: ignore[override]
                pixel_values_videos: torch.Tensor | None = None, video_grid_thw: torch.LongTensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.LongTensor | None = None,
                **_: Any) -> dict[str, torch.Tensor]:
        backbone = self.model
        embeds = backbone.get_input_embeddings()(input_ids)
        for pixels, grid, token_id in ((pixel_values, image_grid_thw, self.config.image_token_id),
                                       (pixel_values_videos, video_grid_thw, self.config.video_token_id)):
            if pixels is None:
                continue
            features = backbone.visual(pixels.type(backbone.visual.dtype), grid_thw=grid).pooler_output
            mask = (input_ids == token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, features.to(embeds.device, embeds.dtype))
        hidden = backbone.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                         position_ids=None).last_hidden_state  # (B, L, D), 1-D positions
        scores = self.rm_head(hidden)  # (B, L, output_dim)
        batch = input_ids.shape[0]
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.special_token_ids:
            special |= input_ids == token_id
        pooled = scores[special].view(batch, 3, -1)
        if pooled.shape[-1] == 3:
            pooled = pooled.diagonal(dim1=1, dim2=2)
        return {"logits": pooled.reshape(batch, -1)}


__all__ = ["VideoAlignRewardModel"]
