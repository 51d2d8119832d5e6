"""`lift critic train` on the VILA-1.5 family (LiFT-Critic's architecture, 13B- and 40B-shaped) through the
project's transformers reference: LoRA on the Llama only (tower and projector frozen), the output keeps the
converted layout (VILA's InternViT names too), and both engines serve it alike."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clients.cli import main as lift
from finetune.critic.synthetic import make_rated_dataset
from service.rubric import DIMENSION_NAMES

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module", params=["siglip", "internvit"], ids=["13b", "40b"])
def vila_base(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    from service.families.vila.convert import convert_vila
    from service.tiny_critics.vila import build_tiny_vila

    root = tmp_path_factory.mktemp(f"vila-train-{request.param}")
    src = build_tiny_vila(root / "VILA1.5-tiny", seed=1, vision=request.param)
    convert_vila(src, root / "base")
    return root / "base"


def test_vila_critic_trains_and_serves_on_both_engines(vila_base: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rated = make_rated_dataset(tmp_path / "rated", 4, seed=4, size=64, num_frames=10)
    out = tmp_path / "critic"
    assert lift(["critic", "train", "--data", str(rated["lift"]), "--videos", str(rated["videos"]),
                 "--base", str(vila_base), "--out", str(out), "--max-steps", "3", "--batch-size", "2",
                 "--lr", "1e-3", "--lora-rank", "4", "--lora-alpha", "8", "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "family vila: 12 rated examples" in err and "step 3/3" in err
    record = json.loads((out / "lift_training.json").read_text())
    assert record["family"] == "vila" and record["steps"] == 3
    assert all(loss == loss and loss > 0 for loss in record["losses"])  # finite, not NaN

    # same converted layout: config and tokenizer untouched, same tensor names, LoRA merged into the Llama only
    assert json.loads((out / "config.json").read_text()) == json.loads((vila_base / "config.json").read_text())
    base_w = {k: v for f in sorted(vila_base.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    new_w = load_file(str(out / "model.safetensors"))
    assert new_w.keys() == base_w.keys()
    changed = {k for k in base_w if not (new_w[k].dtype == base_w[k].dtype and new_w[k].equal(base_w[k]))}
    assert changed and all(k.startswith("llm.model.layers.") for k in changed), sorted(changed)[:5]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)

    # `lift serve`'s loader takes it on both engines, with the same labels
    from service.critic import Critic

    video = rated["videos"] / "clip0001.mp4"

    async def score(engine: str, **options: object) -> object:
        async with Critic.from_pretrained(out, engine=engine, **options) as critic:
            return await critic.score(video, "a red car")

    ref = asyncio.run(score("transformers"))
    served = asyncio.run(score("vllm", dtype="float32", max_model_len=2048, max_num_seqs=8))
    for dim in DIMENSION_NAMES:
        a, b = ref.dimensions[dim], served.dimensions[dim]
        assert a.label == b.label
        assert abs(a.expected_score - b.expected_score) < 1e-4
