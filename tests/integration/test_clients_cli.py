"""`lift score`: --server (the real service) and --model (in-process critic) print the same JSON shape;
bad input gives one clear line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.protocol import ScoreResponse

REPO = Path(__file__).resolve().parents[2]
ENV_KEYS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def lift(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "clients.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV_KEYS})


def _shape(obj: object) -> object:
    """Keys all the way down (values differ between runs: ids, timings)."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items() if k != "timings_ms"}
    return type(obj).__name__


@pytest.mark.vllm
@pytest.mark.slow
def test_server_and_local_model_print_the_same_json(live_server: str, tiny_critic_dir: Path,
                                                    sample_videos: dict[str, Path]) -> None:
    video = str(sample_videos["h264_mp4"])
    remote = lift("score", video, "--prompt", "a red square", "--server", live_server, "--max-reason-tokens", "2")
    assert remote.returncode == 0, remote.stderr
    # The transformers engine keeps this to one extra process-local model (a second vLLM engine is heavy).
    local = lift("score", video, "--prompt", "a red square", "--model", str(tiny_critic_dir), "--engine", "transformers",
                 "--max-reason-tokens", "2", timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    r, l = json.loads(remote.stdout), json.loads(local.stdout)
    ScoreResponse.model_validate(r)
    ScoreResponse.model_validate(l)
    assert _shape(r) == _shape(l)
    assert r["num_frames"] == l["num_frames"] == 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["score", "/nonexistent/clip.mp4", "--prompt", "x", "--server", "http://127.0.0.1:9"], "video_not_found"),
        (["score", "/nonexistent/clip.mp4", "--prompt", "x", "--model", "/nonexistent/model"], "video_not_found"),
        (["score", __file__, "--prompt", "x", "--model", "/nonexistent/model"], "model folder not found"),
        (["score", __file__, "--prompt", "x"], "--server URL"),
        (["score", __file__, "--prompt", "   ", "--server", "http://127.0.0.1:9"], "--prompt is empty"),
        (["score", __file__, "--prompt", "x", "--server", "ftp://h"], "http:// or https://"),
        (["score", __file__, "--prompt", "x", "--server", "http://127.0.0.1:9", "--num-frames", "0"], "--num-frames"),
        (["label", "/nonexistent/m.jsonl", "--out", "/tmp/x.jsonl", "--server", "http://127.0.0.1:9"], "manifest not found"),
        (["label", __file__, "--out", "/tmp/x.jsonl"], "--server URL is required"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], needle: str) -> None:
    r = lift(*args, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_unreachable_server_is_one_clear_line() -> None:
    r = lift("score", __file__, "--prompt", "x", "--server", "http://127.0.0.1:9", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "service_unreachable" in r.stderr
