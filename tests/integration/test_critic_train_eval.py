"""`lift critic eval` through a running service (the session's vLLM engine, via RewardClient) and on a
checkpoint with the transformers engine: same labels, same expected scores, reports written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.cli import main as lift
from finetune.critic.synthetic import make_rated_dataset

pytestmark = pytest.mark.vllm


def _judgements(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "judgements.jsonl").read_text().splitlines()]


def test_eval_server_and_model_agree(live_server: str, tiny_critic_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rated = make_rated_dataset(tmp_path / "rated", 3, seed=11, size=64, num_frames=10)
    common = ["critic", "eval", "--data", str(rated["jsonl"]), "--videos", str(rated["videos"]),
              "--max-reason-tokens", "4"]

    assert lift([*common, "--server", live_server, "--name", "served", "--out", str(tmp_path / "srv")]) == 0
    out = capsys.readouterr().out
    assert "| Critic | Semantic Consistency | Motion Smoothness | Video Fidelity | Average |" in out
    assert "| served |" in out and "Spearman(expected_score, label)" in out
    assert lift([*common, "--model", str(tiny_critic_dir), "--engine", "transformers",
                 "--out", str(tmp_path / "local")]) == 0

    served = json.loads((tmp_path / "srv" / "report.json").read_text())
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    assert served["n_videos"] == local["n_videos"] == 3 and not served["failures"]
    for dim, r in served["dimensions"].items():
        assert r["n"] == 3
        assert r["accuracy"] == local["dimensions"][dim]["accuracy"]
        assert r["confusion"] == local["dimensions"][dim]["confusion"]
    a, b = _judgements(tmp_path / "srv"), _judgements(tmp_path / "local")
    assert [(j["video"], j["dimension"], j["predicted"]) for j in a] == \
           [(j["video"], j["dimension"], j["predicted"]) for j in b]
    for x, y in zip(a, b, strict=True):
        assert x["expected_score"] == pytest.approx(y["expected_score"], abs=1e-4)
    assert (tmp_path / "srv" / "confusion.png").stat().st_size > 1000
