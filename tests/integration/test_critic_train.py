"""`lift critic train` end to end on the tiny critic: a few real steps, checkpoints, exact resume, the merged
output loaded by the transformers engine, and bad data refused with every problem named."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clients.cli import main as lift
from finetune.critic.synthetic import make_rated_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_rated_dataset(tmp_path_factory.mktemp("rated"), 4, seed=3, size=64, num_frames=10)


def _train(rated: dict[str, Path], base: Path, out: Path, *extra: str, data: Path | None = None) -> int:
    return lift(["critic", "train", "--data", str(data or rated["lift"]), "--videos", str(rated["videos"]),
                 "--base", str(base), "--out", str(out), "--batch-size", "2", "--lr", "1e-3",
                 "--lora-rank", "4", "--lora-alpha", "8", "--log-every", "1", "--seed", "5", *extra])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_train_checkpoint_resume_merge_serve(rated: dict[str, Path], tiny_critic_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(rated, tiny_critic_dir, straight, "--max-steps", "3", "--save-steps", "2") == 0
    err = capsys.readouterr().err
    assert "training 16,384 of" in err and "step 3/3" in err

    # the output is a plain checkpoint: weights, processor, the base's side files, a training record
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "chat_template.jinja", "generation_config.json", "lift_critic.json", "lift_training.json"):
        assert (straight / name).is_file(), name
    record = json.loads((straight / "lift_training.json").read_text())
    assert record["steps"] == 3 and record["examples"] == 12 and len(record["losses"]) == 3
    ckpts = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-3"]
    assert (straight / "checkpoints" / "checkpoint-2" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((straight / "checkpoints" / "checkpoint-2").glob("model*.safetensors"))  # adapter only

    # LoRA merged into the language model; vision tower and projector untouched (frozen)
    base_w, new_w = _weights(tiny_critic_dir), _weights(straight)
    assert base_w.keys() == new_w.keys()
    changed = {k for k in base_w if not torch.equal(base_w[k], new_w[k])}
    # (on disk the language model is `model.layers.*`, the vision tower and projector `visual.*`)
    assert changed and all(k.startswith("model.layers.") for k in changed)
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert not any("visual" in k or "lm_head" in k or "embed_tokens" in k for k in changed)

    # a run stopped after its step-2 checkpoint, resumed: the same weights as 3 steps straight
    import shutil

    shutil.copytree(straight / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    assert _train(rated, tiny_critic_dir, resumed, "--max-steps", "3", "--resume-from", "latest") == 0
    assert "resumed from" in capsys.readouterr().err
    record = json.loads((resumed / "lift_training.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-2") and record["steps"] == 3
    resumed_w = _weights(resumed)
    for k in changed:
        torch.testing.assert_close(resumed_w[k], new_w[k], rtol=0, atol=1e-6)

    # `lift serve`'s loader takes it as is (transformers engine here; the vLLM half is in the benchmark)
    from service.critic import Critic

    async def score() -> object:
        async with Critic.from_pretrained(straight, engine="transformers") as critic:
            return await critic.score(rated["videos"] / "clip0000.mp4", "a red car")

    response = asyncio.run(score())
    assert set(response.dimensions) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}


def test_train_reads_lift_hra_style_rows(rated: dict[str, Path], tiny_critic_dir: Path, tmp_path: Path) -> None:
    """The same ratings in the LiFT-HRA prompt style (`video_id`, "... identify the X issues ... Text Prompt: [c]")
    train exactly as LiFT's own style does: same examples, same first step."""
    from finetune.critic.data import load_rated_data, write_lift

    examples = load_rated_data(rated["lift"], rated["videos"])
    hra = write_lift(tmp_path / "hra.json", examples, relative_to=rated["videos"], style="hra")
    assert "Text Prompt: [" in hra.read_text() and "Text Prompt: [" not in rated["lift"].read_text()
    runs = {}
    for name, data in (("lift", rated["lift"]), ("hra", hra)):
        assert _train(rated, tiny_critic_dir, tmp_path / name, "--max-steps", "1", data=data) == 0
        runs[name] = json.loads((tmp_path / name / "lift_training.json").read_text())
    assert runs["hra"]["examples"] == runs["lift"]["examples"] == 12
    assert runs["hra"]["losses"] == runs["lift"]["losses"]


def test_train_refuses_bad_data_naming_every_problem(rated: dict[str, Path], tiny_critic_dir: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"video": "clip0000.mp4", "prompt": "a red car", "dimension": "video_fidelity",
                         "label": "Good", "reason": "ok"}),
             json.dumps({"video": "nope.mp4", "prompt": "p", "dimension": "video_fidelity", "label": "Good"}),
             json.dumps({"video": "clip0000.mp4", "prompt": "p", "dimension": "beauty", "label": "OK"})]
    bad.write_text("\n".join(lines) + "\n")
    code = lift(["critic", "train", "--data", str(bad), "--videos", str(rated["videos"]),
                 "--base", str(tiny_critic_dir), "--out", str(tmp_path / "o"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("lift critic: error: invalid_rated_data:")
    assert "3 problem(s)" in err[0] and "line 2: video not found" in err[0]
    assert "line 3: unknown dimension 'beauty'" in err[0] and "line 3: malformed label 'OK'" in err[0]
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written

    code = lift(["critic", "train", "--data", str(bad), "--base", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "o"), "--max-steps", "1"])
    assert code == 2 and "not a checkpoint folder" in capsys.readouterr().err


def test_unfrozen_vision_has_its_own_learning_rate_and_resumes(rated: dict[str, Path], tiny_critic_dir: Path,
                                                              tmp_path: Path) -> None:
    """--train-vision-tower/--train-projector train `visual.*` in full at --vision-lr (LLaVA's mm_projector_lr);
    their weights travel in checkpoints (non_lora_trainables) so a resumed run equals a straight one."""
    unfreeze = ("--train-vision-tower", "--train-projector")
    same_lr, small_lr = tmp_path / "same", tmp_path / "small"
    assert _train(rated, tiny_critic_dir, same_lr, "--max-steps", "2", "--save-steps", "1", *unfreeze) == 0
    assert _train(rated, tiny_critic_dir, small_lr, "--max-steps", "2", *unfreeze, "--vision-lr", "1e-5") == 0
    base_w = _weights(tiny_critic_dir)

    def visual_change(folder: Path) -> float:
        w = _weights(folder)
        return max(float((w[k] - base_w[k]).abs().max()) for k in base_w if k.startswith("visual."))

    def lm_change(folder: Path) -> float:
        w = _weights(folder)
        return max(float((w[k] - base_w[k]).abs().max()) for k in base_w if k.startswith("model.layers."))

    # Adam moves each weight by about its learning rate per step: 1e-3 vs 1e-5
    assert visual_change(same_lr) > 1e-4
    assert 0 < visual_change(small_lr) < visual_change(same_lr) / 20
    # the adapter's rate is --lr either way
    assert lm_change(small_lr) > 0.5 * lm_change(same_lr) > 0
    ckpt = same_lr / "checkpoints" / "checkpoint-1"
    assert (ckpt / "non_lora_trainables.safetensors").is_file()

    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(ckpt, resumed / "checkpoints" / "checkpoint-1")
    assert _train(rated, tiny_critic_dir, resumed, "--max-steps", "2", "--resume-from", "latest", *unfreeze) == 0
    a, b = _weights(same_lr), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
