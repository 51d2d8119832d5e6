"""Latents -> frames with the VAE the deployer names (`LIFT_LATENT_VAE`, a diffusers `AutoencoderKLWan` folder).

Cosmos-RL's trainer sends videos as Wan2.1 VAE latents `(B, z_dim, T', H/8, W/8)`, float16, encoded from frames
scaled to [-1, 1] and normalised per channel as Wan's VAE does (`(mu - mean) / std`, the config's
`latents_mean` / `latents_std`). Decoding undoes the normalisation, runs the VAE decoder and maps [-1, 1] back to
uint8 `(B, T, H, W, 3)`, which then goes through the same sampling and limits as any frames.

The VAE is loaded on first use (in a worker thread: the event loop never waits on it) and decodes one batch at a
time, video by video, so memory stays at one video's activations.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidVideo, LatentDecoderNotConfigured, VideoTooLarge
from service.media import MediaLimits

LATENT_DTYPES = (np.float16, np.float32)


class LatentDecoder:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._vae: Any = None
        self._device = "cpu"
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.folder is not None

    def require(self) -> None:
        if self.folder is None:
            raise LatentDecoderNotConfigured(
                "this server does not decode latents: set LIFT_LATENT_VAE to a diffusers AutoencoderKLWan folder "
                "(the VAE your trainer encodes with), or send frames (media_type 'video')", param="media_type")

    def _load(self) -> Any:
        if self._vae is None:
            import torch
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(str(self.folder), torch_dtype=torch.float32)
            # On a GPU host the VAE runs there (a real Wan2.1 decode is minutes per video on a CPU).
            self._device = "cuda" if torch.cuda.is_available() else "cpu"
            self._vae = vae.to(self._device).eval().requires_grad_(False)
        return self._vae

    @staticmethod
    def check_shape(shape: tuple[int, ...], limits: MediaLimits, *, param: str = "latents") -> tuple[int, int, int]:
        """(T, H, W) the latents decode to, refusing what would be over the limits before decoding."""
        if len(shape) != 5:
            raise InvalidVideo(f"latents must have shape (B, C, T', H/8, W/8), got {shape}", param=param)
        _, _, t, h, w = shape
        frames, height, width = 1 + 4 * (t - 1), 8 * h, 8 * w  # Wan2.1: 4x in time (first frame alone), 8x in space
        if t < 1 or h < 1 or w < 1:
            raise InvalidVideo(f"latents of shape {shape} hold no frames", param=param)
        if height * width > limits.max_pixels:
            raise VideoTooLarge(f"latents decode to {width}x{height} frames, over the limit of {limits.max_pixels} "
                                "pixels", param=param)
        if frames > limits.max_frames:
            raise VideoTooLarge(f"latents decode to {frames} frames, over the limit of {limits.max_frames}", param=param)
        return frames, height, width

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(B, C, T', h, w) float latents -> (B, T, H, W, 3) uint8. Blocking; raises InvalidVideo on failure."""
        import torch

        self.require()
        if latents.dtype not in LATENT_DTYPES:
            raise InvalidVideo(f"latents must be float16 or float32, got {latents.dtype}", param="latents")
        if not np.isfinite(latents).all():
            raise InvalidVideo("the latents hold NaN or infinite values", param="latents")
        with self._lock:
            vae = self._load()
            z_dim = int(vae.config.z_dim)
            if latents.shape[1] != z_dim:
                raise InvalidVideo(f"latents have {latents.shape[1]} channels but the VAE in LIFT_LATENT_VAE "
                                   f"expects {z_dim}", param="latents")
            mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
            std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
            out = []
            with torch.inference_mode():
                for i in range(latents.shape[0]):
                    z = torch.from_numpy(np.ascontiguousarray(latents[i : i + 1])).float() * std + mean
                    z = z.to(self._device)
                    try:
                        video = vae.decode(z).sample  # (1, 3, T, H, W) in [-1, 1]
                    except (RuntimeError, ValueError) as exc:
                        raise InvalidVideo(f"the VAE could not decode sample {i}: {str(exc).splitlines()[0][:200]}",
                                           param="latents") from None
                    if not torch.isfinite(video).all():
                        raise InvalidVideo(f"sample {i} decoded to NaN or infinite pixels", param="latents")
                    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                    out.append(frames[0].permute(1, 2, 3, 0).cpu().numpy())  # (T, H, W, 3)
        return np.stack(out)


def encode_like_cosmos(vae: Any, frames: Any) -> np.ndarray:
    """What Cosmos-RL's trainer sends for videos: frames (B, T, C, H, W) float in [0, 1] -> normalised Wan latents
    (B, z_dim, T', H/8, W/8) float16. Kept beside the decoder so tests and the README example encode the same way."""
    import torch

    x = (frames.permute(0, 2, 1, 3, 4) - 0.5) * 2  # (B, C, T, H, W) in [-1, 1]
    z_dim = int(vae.config.z_dim)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    with torch.inference_mode():
        mu = vae.encode(x.float()).latent_dist.mean
    return ((mu - mean) / std).to(torch.float16).numpy()
