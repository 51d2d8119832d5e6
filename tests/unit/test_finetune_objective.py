"""LiFT Eq. 3 on a real (tiny) CogVideoX transformer: the trainer's loss against the formula by hand."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from finetune.config import TrainConfig  # noqa: E402
from finetune.trainer import Batch, RewardWeightedTrainer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    from finetune.tiny_generator import build_tiny_generator

    return build_tiny_generator(tmp_path_factory.mktemp("gen") / "tiny")


def _trainer(model, tmp_path, real_weight=1.0, full=False) -> RewardWeightedTrainer:
    from finetune.generate import load_pipeline

    cfg = TrainConfig(model=str(model), data="unused.jsonl", out=str(tmp_path / "out"), real_weight=real_weight,
                      progress=False, **({"full": True} if full else {"lora_rank": 4}))
    trainer = RewardWeightedTrainer(cfg, pipe=load_pipeline(model))
    if not full:
        # A fresh LoRA has B = 0 (no effect); give it weights so the test exercises it.
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in trainer.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return trainer


def _batch(trainer, n_syn: int, n_real: int, weights, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    pipe = trainer.pipe
    # [B, F, C, H, W] latents of the tiny model's training shape (3 latent frames, 4 channels, 4x4)
    latents = torch.randn(n_syn + n_real, 3, 4, 4, 4, generator=g)
    prompts = ["a red car at night", "a dog runs", "a bird flies over the river", "the sun", "a cat"][: n_syn + n_real]
    with torch.no_grad():
        embeds = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                    max_sequence_length=pipe.transformer.config.max_text_seq_length)[0]
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return Batch(latents, embeds, w, n_syn)


def _hand_loss(trainer, batch, noise, timesteps, real_weight):
    """Eq. 3 written out: x_t = sqrt(a) x0 + sqrt(1-a) eps; x0_hat = sqrt(a) x_t - sqrt(1-a) v_hat;
    l = mean(1/(1-a) (x0_hat - x0)^2); L = mean_syn(w l) + lambda mean_real(l)."""
    a = trainer.scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1, 1).float()
    x0 = batch.latents
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = trainer.transformer(hidden_states=xt, encoder_hidden_states=batch.embeds, timestep=timesteps,
                            return_dict=False)[0]
    x0_hat = a.sqrt() * xt - (1 - a).sqrt() * v
    per = ((x0_hat - x0) ** 2 / (1 - a)).flatten(1).mean(1)
    n = batch.n_syn
    syn = (batch.weights * per[:n]).mean() if batch.weights is not None else per[:n].mean()
    real = per[n:].mean() if per.shape[0] > n else torch.tensor(0.0)
    return syn + real_weight * real, per


def test_loss_equals_reward_weighted_formula_by_hand(tiny_generator, tmp_path):
    trainer = _trainer(tiny_generator, tmp_path, real_weight=0.7)
    batch = _batch(trainer, n_syn=3, n_real=2, weights=[0.9, 0.05, 0.2])
    noise, timesteps = trainer.noise_and_timesteps(batch, micro=0)
    loss, per = trainer.compute_loss(batch, noise, timesteps)
    expected, per_hand = _hand_loss(trainer, batch, noise, timesteps, real_weight=0.7)
    assert torch.allclose(per, per_hand, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and not the unweighted loss: the weights matter
    assert loss.item() != pytest.approx((per[:3].mean() + 0.7 * per[3:].mean()).item(), rel=1e-3)


def _grads(trainer, batch, noise, timesteps):
    trainer.transformer.zero_grad(set_to_none=True)
    loss, _ = trainer.compute_loss(batch, noise, timesteps)
    loss.backward()
    return torch.cat([p.grad.flatten().clone() for p in trainer.params])


def test_zero_reward_sample_contributes_no_gradient(tiny_generator, tmp_path):
    trainer = _trainer(tiny_generator, tmp_path)
    batch = _batch(trainer, n_syn=2, n_real=0, weights=[0.0, 0.6])
    noise, timesteps = trainer.noise_and_timesteps(batch, micro=0)
    g1 = _grads(trainer, batch, noise, timesteps)
    assert g1.abs().sum() > 0
    # Replace the zero-reward sample by something else entirely: the gradient does not move.
    other = Batch(batch.latents.clone(), batch.embeds.clone(), batch.weights, 2)
    other.latents[0] = torch.randn_like(other.latents[0]) * 3
    other.embeds[0] = torch.randn_like(other.embeds[0])
    g2 = _grads(trainer, other, noise, timesteps)
    assert torch.allclose(g1, g2, atol=1e-7)
    # ... and equals the gradient of the rewarded sample alone, with the batch mean's 1/2.
    alone = Batch(batch.latents[1:], batch.embeds[1:], torch.tensor([0.6 / 2]), 1)
    g3 = _grads(trainer, alone, noise[1:], timesteps[1:])
    assert torch.allclose(g1, g3, rtol=1e-4, atol=1e-7)


def test_real_data_term_carries_weight_lambda(tiny_generator, tmp_path):
    trainer = _trainer(tiny_generator, tmp_path, real_weight=0.0)
    batch = _batch(trainer, n_syn=2, n_real=2, weights=[0.9, 0.2])
    noise, timesteps = trainer.noise_and_timesteps(batch, micro=0)
    losses, grads = {}, {}
    for lam in (0.0, 1.0, 2.5):
        trainer.cfg.real_weight = lam
        losses[lam], per = trainer.compute_loss(batch, noise, timesteps)
        grads[lam] = _grads(trainer, batch, noise, timesteps)
    real_mean = per[2:].mean().item()
    assert (losses[2.5] - losses[0.0]).item() == pytest.approx(2.5 * real_mean, rel=1e-5)
    assert (losses[1.0] - losses[0.0]).item() == pytest.approx(real_mean, rel=1e-5)
    # The gradient is linear in lambda: g(2.5) - g(0) = 2.5 (g(1) - g(0)).
    assert torch.allclose(grads[2.5] - grads[0.0], 2.5 * (grads[1.0] - grads[0.0]), rtol=1e-3, atol=1e-6)
    assert (grads[1.0] - grads[0.0]).abs().sum() > 0


def test_plain_supervised_step_is_the_unweighted_mean(tiny_generator, tmp_path):
    trainer = _trainer(tiny_generator, tmp_path)
    batch = _batch(trainer, n_syn=3, n_real=0, weights=None)
    noise, timesteps = trainer.noise_and_timesteps(batch, micro=5)
    loss, per = trainer.compute_loss(batch, noise, timesteps)
    assert loss.item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_noise_and_order_are_functions_of_seed_and_step(tiny_generator, tmp_path):
    trainer = _trainer(tiny_generator, tmp_path)
    batch = _batch(trainer, n_syn=2, n_real=0, weights=[1.0, 1.0])
    n1, t1 = trainer.noise_and_timesteps(batch, micro=7)
    n2, t2 = trainer.noise_and_timesteps(batch, micro=7)
    n3, _ = trainer.noise_and_timesteps(batch, micro=8)
    assert torch.equal(n1, n2) and torch.equal(t1, t2) and not torch.equal(n1, n3)
    # Every epoch is a permutation: over n consecutive single-sample batches each index appears once.
    seen = [trainer._indices(5, m, 1, stream=1)[0] for m in range(5)]
    assert sorted(seen) == [0, 1, 2, 3, 4]
