"""`lift score --model`: the local scoring command prints the service's JSON; bad input is one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIFT = [sys.executable, "-m", "clients.cli"]


def _lift(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*LIFT, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).parents[2])


def test_lift_score_local_prints_the_response_json(tiny_critic_dir, sample_videos):
    proc = _lift("score", str(sample_videos["h264_mp4"]), "--prompt", "a red square", "--model", str(tiny_critic_dir),
                 "--engine", "transformers", "--max-reason-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result["dimensions"]) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
    assert 0.05 <= result["reward"] <= 0.9 and result["num_frames"] == 8


@pytest.mark.parametrize("video_kind", ["random", "missing", "image"])
def test_lift_score_bad_input_is_one_clear_line(tiny_critic_dir, tmp_path, video_kind):
    video = tmp_path / "bad.mp4"
    if video_kind == "random":
        video.write_bytes(os.urandom(5000))
    elif video_kind == "image":
        from PIL import Image

        Image.new("RGB", (32, 32), "red").save(video, format="PNG")
    proc = _lift("score", str(video), "--prompt", "a red square", "--model", str(tiny_critic_dir),
                 "--engine", "transformers")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("lift score: error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    assert ("invalid_video" if video_kind != "missing" else "video_not_found") in error_lines[0]
