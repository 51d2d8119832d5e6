"""LiFT's fine-tuning objective (paper Eq. 3) on CogVideoX's own diffusion loss.

    L = E_syn[ w(x, z) * l(x, z) ] + lambda * E_real[ l(x, z) ]
    l(x, z) = mean( 1 / (1 - alphas_cumprod[t]) * (x0_pred - x0)^2 )   per sample,
    x0_pred = scheduler.get_velocity(model_output, noisy, t)            (v-prediction -> x0)

as in diffusers' CogVideoX training example; w is the critic's reward used raw (0.05..0.9).
"""

from __future__ import annotations

import torch


def per_sample_loss(transformer, scheduler, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                    timesteps: torch.Tensor, noise: torch.Tensor, image_rotary_emb=None) -> torch.Tensor:
    """CogVideoX's training loss for each sample: a [B] tensor. latents are [B, F, C, H, W]."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    model_output = transformer(hidden_states=noisy, encoder_hidden_states=prompt_embeds, timestep=timesteps,
                               image_rotary_emb=image_rotary_emb, return_dict=False)[0]
    x0_pred = scheduler.get_velocity(model_output.float(), noisy.float(), timesteps)
    snr_w = (1.0 / (1.0 - scheduler.alphas_cumprod.to(latents.device)[timesteps])).float()
    snr_w = snr_w.reshape(-1, *([1] * (x0_pred.dim() - 1)))
    return (snr_w * (x0_pred - latents.float()) ** 2).reshape(latents.shape[0], -1).mean(dim=1)


def lift_loss(syn_losses: torch.Tensor, syn_weights: torch.Tensor | None,
              real_losses: torch.Tensor | None = None, real_weight: float = 1.0) -> torch.Tensor:
    """Eq. 3 on one batch. syn_weights=None gives the plain (unweighted) loss, a supervised step."""
    syn = syn_losses.mean() if syn_weights is None else (syn_weights.to(syn_losses) * syn_losses).mean()
    if real_losses is None or real_losses.numel() == 0 or real_weight == 0:
        return syn
    return syn + real_weight * real_losses.mean()
