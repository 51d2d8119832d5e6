"""A tiny, random CogVideoX pipeline built offline: the real architecture at toy size, for tests and demos.

No hub access: T5's tokenizer is a sentencepiece unigram model trained on the spot on a small word list and
handed to `T5Tokenizer` as (piece, score) pairs (transformers 5 ignores `vocab_file=`).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

WORDS = (
    "a the cat dog monkey dance runs jumps on in red blue green sky over under big small video of river "
    "mountain car city night day sun moon tree bird flies fast slow hiker standing at peak bright dark light"
).split()


def _tokenizer(workdir: str):
    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(0)
    corpus = os.path.join(workdir, "corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(2000):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n")
    prefix = os.path.join(workdir, "spiece")
    # T5's layout: pad=0, eos=1, unk=2, no bos.
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=128, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_tiny_generator(out_dir: str | Path, seed: int = 0, rotary: bool = False, *, latent_channels: int = 4,
                         num_layers: int = 1, num_attention_heads: int | None = None,
                         attention_head_dim: int | None = None, time_embed_dim: int = 2,
                         vae_channels: tuple[int, int, int, int] = (8, 8, 8, 8)) -> Path:
    """Save a random CogVideoX pipeline (32x32 px, 9 frames) to `out_dir`; `CogVideoXPipeline.from_pretrained` loads it.

    32 px, not 16: the service decodes with decord, which fails on H.264 frames 16 px wide.

    rotary=False is CogVideoX-2b's layout (sin-cos positions), rotary=True CogVideoX-5b's (rotary embeddings).
    The keyword-only sizes default to the smallest model (tests); a generator that is to be pre-trained to
    draw something (finetune.miniature) asks for more latent channels (CogVideoX's own VAE has 16), layers
    and width.
    """
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=num_attention_heads or (2 if rotary else 4),
        attention_head_dim=attention_head_dim or (16 if rotary else 8),  # rotary splits head_dim over t/h/w
        in_channels=latent_channels, out_channels=latent_channels, time_embed_dim=time_embed_dim,
        text_embed_dim=32, num_layers=num_layers,
        sample_width=4, sample_height=4, sample_frames=9,  # latent 4x4 -> 32x32 px; 9 frames -> 3 latent frames
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=rotary,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=tuple(vae_channels), latent_channels=latent_channels, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    # CogVideoX-2b's scheduler settings: v-prediction, zero terminal SNR, trailing spacing.
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        set_alpha_to_one=True, snr_shift_scale=1.0 if rotary else 3.0, steps_offset=0, timestep_spacing="trailing",
    )
    with tempfile.TemporaryDirectory() as td:
        tokenizer = _tokenizer(td)
    torch.manual_seed(seed + 2)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )).eval()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out
