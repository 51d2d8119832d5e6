"""The Dockerfile and its entrypoint: linted by hadolint (with ShellCheck on every RUN) and ShellCheck, and
checked against what the repository really has: COPY sources, .dockerignore, scripts/install.sh's pins, and
the real `lift serve` command line the entrypoint builds."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf += (" " if buf else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = "<args>"
    for ins, args in _instructions():
        if ins == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.I)
            current = m.group(1) if m else "<final>"
            stages[current] = [(ins, args)]
        else:
            stages.setdefault(current, []).append((ins, args))
    return stages


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in stage:
        if ins == "ENV":
            env.update(dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", args)))
    return env


def test_hadolint_finds_nothing(python_tool) -> None:
    # ShellCheck on PATH makes hadolint check every RUN's shell too (SC rules).
    env = {**os.environ, "PATH": f"{Path(python_tool('shellcheck')).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([python_tool("hadolint"), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                          capture_output=True, text=True, env=env, timeout=120)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], findings or proc.stderr


def test_hadolint_is_not_a_no_op(python_tool, tmp_path: Path) -> None:
    # The linter really reads the file: the same image run as root with an unpinned base must be flagged.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nUSER root\nRUN cd /tmp && pip install requests\n")
    proc = subprocess.run([python_tool("hadolint"), "--format", "json", str(bad)], capture_output=True, text=True, timeout=120)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0 and {"DL3006", "DL3002", "DL3003", "DL3013"} <= codes, codes


def test_shell_scripts_pass_shellcheck(python_tool) -> None:
    scripts = [ENTRYPOINT, REPO / "scripts" / "install_system_tools.sh"]
    proc = subprocess.run([python_tool("shellcheck"), "--severity=style", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_variants_gpu_default_and_cpu_demo() -> None:
    ins = _instructions()
    args = {a.split("=")[0]: a.split("=", 1)[1] for i, a in ins if i == "ARG" and "=" in a}
    assert args["VARIANT"] == "gpu"
    assert "vllm/vllm-openai:" in args["VLLM_IMAGE"] and not args["VLLM_IMAGE"].endswith(":latest")
    stages = _stages()
    assert {"runtime-gpu", "runtime-cpu", "<final>"} <= set(stages)
    assert stages["runtime-gpu"][0][1].startswith("${VLLM_IMAGE}")
    assert stages["<final>"][0][1] == "runtime-${VARIANT}"

    gpu_runs = " ".join(a for i, a in stages["runtime-gpu"] if i == "RUN")
    assert 'pip install --no-cache-dir ".[service-gpu]"' in gpu_runs

    # The CPU stage installs the way scripts/install.sh does: same torch and torchvision pins, same removals.
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    cpu_runs = " ".join(a for i, a in stages["runtime-cpu"] if i == "RUN")
    torch_pin = re.search(r"torch==[0-9.]+\+cpu", install_sh).group(0)
    tv_pin = re.search(r"torchvision==[0-9.]+\+cpu", install_sh).group(0)
    assert torch_pin in cpu_runs and tv_pin in cpu_runs
    assert '".[service-cpu]"' in cpu_runs
    def removed(text: str) -> set[str]:
        return {w for m in re.findall(r"pip uninstall ((?:-\S+ |[a-z][\w-]* ?)+)", text) for w in m.split() if not w.startswith("-")}
    assert removed(install_sh) and removed(cpu_runs) == removed(install_sh)
    assert _env(stages["runtime-cpu"])["LIFT_DEMO"] == "1"  # the CPU image runs `lift serve --demo`


def test_final_image_runs_non_root_with_healthcheck_and_mounted_model() -> None:
    final = _stages()["<final>"]
    users = [a for i, a in final if i == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "last USER must be a numeric non-root uid (runAsNonRoot can verify it)"
    health = " ".join(a for i, a in final if i == "HEALTHCHECK")
    assert "/health" in health and "--start-period=" in health
    env = _env(final)
    assert env["LIFT_MODEL"].startswith("/models/") and env["LIFT_HOST"] == "0.0.0.0"
    assert env["HF_HUB_OFFLINE"] == "1"  # weights never come from a hub at run time
    assert any(i == "VOLUME" and "/models" in a for i, a in final)
    assert ("ENTRYPOINT", '["/usr/local/bin/lift-entrypoint"]') in final
    assert any(i == "EXPOSE" and a == env["LIFT_PORT"] for i, a in final)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern covers its files."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not neg
    return ignored


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert _dockerignored(".venv/bin/python", patterns) and _dockerignored("tests/conftest.py", patterns)
    for ins, args in _instructions():
        if ins != "COPY" or "--from" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            files = [src] if (REPO / src).is_file() else [str(p.relative_to(REPO)) for p in (REPO / src).rglob("*.py")]
            assert files, src
            for f in files:
                assert not _dockerignored(f, patterns), f"COPY {src}: {f} is excluded by .dockerignore"


def _entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # The venv's bin first on PATH, as /opt/venv/bin is in the image: `lift` is the real console script.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full = {k: v for k, v in os.environ.items() if not k.startswith("LIFT_")} | {"PATH": path} | env
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=full, timeout=120)


def test_entrypoint_demo_runs_real_lift_serve_demo() -> None:
    proc = _entrypoint({"LIFT_DEMO": "1"}, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: lift serve" in proc.stdout and "--demo" in proc.stdout


def test_entrypoint_model_mode_passes_model_engine_and_extra_args(tmp_path: Path) -> None:
    proc = _entrypoint({"LIFT_MODEL": str(tmp_path), "LIFT_ENGINE": "transformers"}, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "--engine" in proc.stdout
    # Without --help, the real CLI gets `--model EMPTY_DIR --engine bogus`: argparse refuses the engine,
    # which proves the entrypoint forwarded LIFT_ENGINE as --engine.
    proc = _entrypoint({"LIFT_MODEL": str(tmp_path), "LIFT_ENGINE": "bogus"})
    assert proc.returncode == 2 and "--engine: invalid choice: 'bogus'" in proc.stderr


def test_entrypoint_missing_model_is_one_clear_error(tmp_path: Path) -> None:
    proc = _entrypoint({"LIFT_MODEL": str(tmp_path / "absent")})
    assert proc.returncode == 2
    assert "no model folder" in proc.stderr and "LIFT_DEMO=1" in proc.stderr
