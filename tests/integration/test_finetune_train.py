"""Real tiny CogVideoX pipelines end to end on the CPU: the CLI generates, trains, saves, resumes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from clients.cli import main as lift  # noqa: E402

PROMPTS = "a red car at night\na monkey dance in the sun\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "tiny-cogvideox"
    assert lift(["make-tiny-generator", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def generated(tiny_model, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("samples")
    (work / "prompts.txt").write_text(PROMPTS)
    argv = ["finetune", "generate", "--model", str(tiny_model), "--prompts", str(work / "prompts.txt"),
            "--per-prompt", "2", "--out", str(work / "gen"), "--steps", "2", "--seed", "10"]
    assert lift(argv) == 0
    return work / "gen"


def _labels(gen: Path, rewards: list[float]) -> Path:
    """A labels file in the labeler's format (ScoreResponse fields + id/video/prompt; one error line)."""
    rows = [json.loads(line) for line in (gen / "manifest.jsonl").read_text().splitlines()]
    path = gen / "labels.jsonl"
    with path.open("w") as f:
        for row, r in zip(rows, rewards):
            dims = {d: {"label": "Good", "score": 0.9, "expected_score": r, "rationale": "ok",
                        "probabilities": {"Good": 1.0, "Normal": 0.0, "Bad": 0.0}}
                    for d in ("semantic_consistency", "motion_smoothness", "video_fidelity")}
            f.write(json.dumps({"id": row["id"], "video": row["video"], "prompt": row["prompt"], "status": "ok",
                                "reward": r, "expected_reward": r, "dimensions": dims}) + "\n")
        f.write(json.dumps({"id": "broken", "video": "x.mp4", "prompt": "p", "status": "error",
                            "error": {"code": "invalid_video", "message": "bad"}}) + "\n")
    return path


def test_generate_writes_videos_and_manifest_and_resumes(tiny_model, generated):
    from finetune.video_io import read_frames

    rows = [json.loads(line) for line in (generated / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p00000-000", "p00000-001", "p00001-000", "p00001-001"]
    assert [r["seed"] for r in rows] == [10, 11, 12, 13]
    first = rows[0]
    assert first["prompt"] == "a red car at night"
    assert first["sampling"] == {"num_inference_steps": 2, "guidance_scale": 6.0, "num_frames": 9, "height": 32,
                                 "width": 32, "fps": 8}
    frames = read_frames(first["video"])
    assert frames.shape == (9, 32, 32, 3) and frames.dtype.name == "uint8"
    # The sampler's latents sit next to the mp4 in the transformer's training shape [F, C, h, w].
    lat = torch.load(Path(first["video"]).with_suffix(".latents.pt"), weights_only=True)
    assert tuple(lat.shape) == (3, 4, 4, 4) and torch.isfinite(lat).all()
    # Same seed, different videos per sample; a rerun skips everything; a lost video is redone under its id.
    assert not (read_frames(rows[0]["video"]) == read_frames(rows[1]["video"])).all()
    before = Path(rows[2]["video"]).read_bytes()
    Path(rows[2]["video"]).unlink()
    prompts = generated.parent / "prompts.txt"
    assert lift(["finetune", "generate", "--model", str(tiny_model), "--prompts", str(prompts), "--per-prompt", "2",
                 "--out", str(generated), "--steps", "2", "--seed", "10"]) == 0
    again = [json.loads(line) for line in (generated / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)  # no duplicates
    assert Path(rows[2]["video"]).read_bytes() == before  # regenerated from its own seed, identical


def test_train_lora_saves_what_load_lora_weights_reads(tiny_model, generated, tmp_path):
    import numpy as np
    from diffusers import CogVideoXPipeline

    labels = _labels(generated, [0.9, 0.05, 0.2, 0.6])
    out = tmp_path / "lora-run"
    argv = ["finetune", "train", "--model", str(tiny_model), "--data", str(labels), "--out", str(out),
            "--lora-rank", "4", "--learning-rate", "1e-2", "--max-steps", "3", "--batch-size", "2",
            "--gradient-accumulation-steps", "2", "--lr-scheduler", "linear", "--lr-warmup-steps", "1",
            "--checkpointing-steps", "2", "--no-progress"]
    assert lift(argv) == 0
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert log[0]["lr"] == pytest.approx(1e-2) and log[-1]["lr"] < log[0]["lr"]  # warmup then linear decay

    def sample(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe("a dog", num_inference_steps=2, generator=g,
                    output_type="np", max_sequence_length=16).frames

    base = CogVideoXPipeline.from_pretrained(tiny_model)
    base.set_progress_bar_config(disable=True)
    ref = sample(base)
    base.load_lora_weights(out / "lora")
    assert np.abs(sample(base) - ref).max() > 1e-4


def test_train_from_lift_scored_file(tiny_model, generated, tmp_path):
    """LiFT's own scored file (CodeGoat24/LiFT CogVideo/process_reward_score.py: a JSON list of {"video", "caption",
    "score"}, here with video_id and videos relative to it) trains exactly as the same rewards in our labels do."""
    import os

    rewards = [0.9, 0.05, 0.2, 0.6]
    labels = _labels(generated, rewards)
    rows = [json.loads(line) for line in (generated / "manifest.jsonl").read_text().splitlines()]
    scored = generated / "data.json"
    scored.write_text(json.dumps([{"video_id": row["id"], "video": os.path.relpath(row["video"], generated),
                                   "caption": row["prompt"], "score": r} for row, r in zip(rows, rewards)], indent=4))
    logs = {}
    for name, data in (("ours", labels), ("lift", scored)):
        out = tmp_path / name
        assert lift(["finetune", "train", "--model", str(tiny_model), "--data", str(data), "--out", str(out),
                     "--lora-rank", "4", "--learning-rate", "1e-2", "--max-steps", "2", "--batch-size", "2",
                     "--seed", "7", "--no-progress"]) == 0
        assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
        logs[name] = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(logs["lift"]) == 2 and all(np.isfinite(x) for x in logs["lift"])
    assert logs["lift"] == logs["ours"]


def test_full_finetune_saves_a_pipeline(tiny_model, generated, tmp_path):
    from diffusers import CogVideoXPipeline

    labels = _labels(generated, [0.9, 0.05, 0.2, 0.6])
    out = tmp_path / "full-run"
    assert lift(["finetune", "train", "--model", str(tiny_model), "--data", str(labels), "--out", str(out), "--full",
                 "--learning-rate", "1e-3", "--max-steps", "2", "--batch-size", "2", "--no-progress",
                 "--reward", "rejection", "--no-sample-latents"]) == 0  # the mp4 -> VAE encode path
    tuned = CogVideoXPipeline.from_pretrained(out / "pipeline")
    base = CogVideoXPipeline.from_pretrained(tiny_model)
    a, b = tuned.transformer.state_dict(), base.transformer.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(tuned.vae.state_dict().values(), base.vae.state_dict().values()))


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_resume_reproduces_an_uninterrupted_run(tiny_model, generated, tmp_path, full):
    from finetune.config import TrainConfig
    from finetune.data import read_labels
    from finetune.trainer import RewardWeightedTrainer

    labels = _labels(generated, [0.9, 0.05, 0.2, 0.6])

    def trainer(out: Path, **kw) -> RewardWeightedTrainer:
        mode = {"full": True} if full else {"lora_rank": 4}
        cfg = TrainConfig(model=str(tiny_model), data=str(labels), out=str(out), learning_rate=1e-2, max_steps=4,
                          batch_size=2, lr_scheduler="cosine", lr_warmup_steps=1, checkpointing_steps=1,
                          progress=False, seed=3, **mode, **kw)
        t = RewardWeightedTrainer(cfg)
        t.set_data(read_labels(labels))
        return t

    def weights(t: RewardWeightedTrainer) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in t._unwrap().state_dict().items() if full or "lora" in k}

    straight = trainer(tmp_path / "a")
    straight.train()
    interrupted = trainer(tmp_path / "b")
    interrupted.train(stop_at=2)
    halfway = weights(interrupted)
    del interrupted  # the process "dies"; a new one resumes from the checkpoint on disk
    resumed = trainer(tmp_path / "b", resume="latest")
    result = resumed.train()
    assert result.global_step == 4
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], halfway[k]) for k in a)  # it did train after resuming
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def test_loop_fails_clearly_on_outage_and_resumes_without_damage(tiny_model, tmp_path, capsys):
    """Rounds 0-1 finish; round 2's scoring hits a dead service: exit 2, one line, the finished LoRAs
    untouched, no temporary folders left; the same loop with a live reward then completes."""
    from finetune.config import LoopConfig, SamplingConfig
    from finetune.loop import FunctionLabeler, run_loop
    from finetune.video_io import read_frames

    (tmp_path / "prompts.txt").write_text(PROMPTS)
    out = tmp_path / "loop"

    def brightness(videos, prompts):
        return [float(read_frames(v).mean() / 255) for v in videos]

    common = dict(model=str(tiny_model), prompts=str(tmp_path / "prompts.txt"), out=str(out), per_prompt=1,
                  steps_per_round=2)
    sampling = SamplingConfig(num_inference_steps=2)
    train = dict(lora_rank=4, learning_rate=1e-2, batch_size=2)
    run_loop(LoopConfig(rounds=1, **common), FunctionLabeler(brightness), sampling=sampling, train=train,
             progress=False)
    lora0 = out / "round-000" / "train" / "lora" / "pytorch_lora_weights.safetensors"
    saved = lora0.read_bytes()

    code = lift(["finetune", "loop", "--model", str(tiny_model), "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(out), "--rounds", "2", "--per-prompt", "1", "--steps-per-round", "2", "--steps", "2",
                 "--server", _dead_url(), "--score-retries", "2", "--score-backoff-s", "0.05",
                 "--train-lora-rank", "4", "--train-learning-rate", "1e-2", "--train-batch-size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lift finetune: error: reward_service_unavailable: ")
    assert "run the same command again to resume" in err[-1]
    assert lora0.read_bytes() == saved
    assert not list(out.rglob(".tmp*")), list(out.rglob(".tmp*"))
    # Round 1 (scored by the first run) got its update; round 2 was generated, then scoring failed.
    lora1 = out / "round-001" / "train" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora1.is_file()
    saved1 = lora1.read_bytes()
    assert (out / "round-002" / "manifest.jsonl").is_file() and not (out / "round-002" / "stats.json").exists()

    result = run_loop(LoopConfig(rounds=2, **common), FunctionLabeler(brightness), sampling=sampling, train=train,
                      progress=False)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    assert lora0.read_bytes() == saved and lora1.read_bytes() == saved1
    log = [json.loads(line) for line in (out / "loop_log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [0, 1, 2] and all(r["n"] == 2 for r in log)
    assert (out / "rewards.png").read_bytes()[:4] == b"\x89PNG"


def test_accelerate_launch_with_a_shipped_config_and_bf16(tiny_model, generated, tmp_path):
    """The real launcher path: `accelerate launch --config_file finetune/configs/cpu.yaml --mixed_precision bf16
    -m clients.cli finetune train ...`; mixed precision comes from the launcher when the flag is not given."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    labels = _labels(generated, [0.9, 0.05, 0.2, 0.6])
    out = tmp_path / "launched"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(repo / "finetune/configs/cpu.yaml"), "--mixed_precision",
           "bf16", "-m", "clients.cli", "finetune", "train", "--model", str(tiny_model), "--data", str(labels),
           "--out", str(out), "--lora-rank", "4", "--max-steps", "2", "--batch-size", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["mixed_precision"] == "bf16" and state["num_processes"] == 1
    assert all(np.isfinite(json.loads(x)["loss"]) for x in (out / "train_log.jsonl").read_text().splitlines())
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
