"""A client-only install: a fresh venv with the base package and its three dependencies, no extras.

`import clients` must pull in neither torch nor vllm (a training job installs only this), and the
`lift score --server` / `lift label` commands must work from there against the real service.
The venv is built once per test session (about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.protocol import ScoreResponse

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "vllm", "numpy", "transformers", "fastapi", "decord", "av", "pyarrow", "matplotlib")


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.getbasetemp() / "client-only-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for args in (["--no-deps", "-e", str(REPO)], ["pydantic", "httpx", "tqdm"]):
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"pip install {args} failed:\n{r.stderr[-3000:]}"
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


def test_import_clients_pulls_in_no_torch_or_vllm(client_venv: Path) -> None:
    code = (
        "import importlib.util, json, sys\n"
        "import clients, clients.commands, clients.labeler, clients.rewards, clients.label_outputs\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({'loaded': sorted(m for m in sys.modules if m.split('.')[0] in heavy),\n"
        "                  'installed': sorted(h for h in ('torch', 'vllm', 'numpy') if importlib.util.find_spec(h))}))\n"
    )
    r = subprocess.run([str(client_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=_env(), cwd="/")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["installed"] == [], "the venv is not client-only"
    assert out["loaded"] == []


@pytest.mark.vllm
def test_client_commands_work_from_the_client_only_venv(client_venv: Path, live_server: str,
                                                        sample_videos: dict[str, Path], tmp_path: Path) -> None:
    """clients.commands' own parser (score, label) in the client-only venv against the real service."""
    py = str(client_venv / "bin" / "python")
    runner = (
        "import argparse, sys\n"
        "import clients.commands as c\n"
        "p = argparse.ArgumentParser(prog='lift'); sub = p.add_subparsers(dest='command', required=True)\n"
        "c.register(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    video = sample_videos["h264_mp4"]
    r = subprocess.run([py, "-c", runner, "score", str(video), "--prompt", "a red square", "--server", live_server,
                        "--max-reason-tokens", "4"], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    ScoreResponse.model_validate_json(r.stdout)

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": str(video), "prompt": "a red square"}) + "\n"
                        + json.dumps({"video": str(tmp_path / "gone.mp4"), "prompt": "x"}) + "\n")
    r = subprocess.run([py, "-c", runner, "label", str(manifest), "--out", str(tmp_path / "l.jsonl"), "--server",
                        live_server, "--max-reason-tokens", "4", "--no-progress"],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr  # one item is an error line (missing file)
    assert "labeled 1 of 2 items: 1 errors" in r.stdout
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 2


@pytest.mark.vllm
def test_lift_score_server_console_script_from_the_client_only_venv(client_venv: Path, live_server: str,
                                                                   sample_videos: dict[str, Path], tmp_path: Path) -> None:
    """The installed `lift` entry point (all subcommand modules registered) on a client-only install."""
    lift = str(client_venv / "bin" / "lift")
    r = subprocess.run([lift, "score", str(sample_videos["h264_mp4"]), "--prompt", "a red square", "--server",
                        live_server, "--max-reason-tokens", "4"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, f"`lift score --server` failed on a client-only install:\n{r.stderr[-2000:]}"
    ScoreResponse.model_validate_json(r.stdout)
    bad = subprocess.run([lift, "score", str(tmp_path / "missing.mp4"), "--prompt", "x", "--server", live_server],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "video_not_found" in bad.stderr and "Traceback" not in bad.stderr
