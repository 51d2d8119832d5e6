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
IMAGE_SH = REPO / "deploy" / "image.sh"
IMAGE_CHECK = REPO / "deploy" / "image_check.py"


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
    scripts = [ENTRYPOINT, REPO / "scripts" / "install_system_tools.sh", IMAGE_SH]
    proc = subprocess.run([python_tool("shellcheck"), "--severity=style", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _args(stage: list[tuple[str, str]]) -> dict[str, str]:
    """ARG NAME=default (or NAME alone: None) of one stage, or of the part before the first FROM."""
    return {a.split("=")[0]: (a.split("=", 1)[1] if "=" in a else None) for i, a in stage if i == "ARG"}


def _runs(stage: list[tuple[str, str]]) -> str:
    return " ".join(a for i, a in stage if i == "RUN")


def test_variants_gpu_default_and_cpu_demo() -> None:
    stages = _stages()
    args = _args(stages["<args>"])
    assert args["VARIANT"] == "gpu"
    assert "vllm/vllm-openai:" in args["VLLM_IMAGE"] and not args["VLLM_IMAGE"].endswith(":latest")
    assert {"runtime-gpu", "build-cpu", "runtime-cpu", "<final>"} <= set(stages)
    assert stages["runtime-gpu"][0][1].startswith("${VLLM_IMAGE}")
    assert stages["<final>"][0][1] == "runtime-${VARIANT}"

    assert 'pip install --no-cache-dir ".[service-gpu]"' in _runs(stages["runtime-gpu"])

    # The CPU image installs the way scripts/install.sh does: same torch and torchvision pins, same removals.
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    cpu_runs = _runs(stages["build-cpu"])
    torch_pin = re.search(r"torch==[0-9.]+\+cpu", install_sh).group(0)
    tv_pin = re.search(r"torchvision==[0-9.]+\+cpu", install_sh).group(0)
    assert torch_pin in cpu_runs and tv_pin in cpu_runs
    assert '".[service-cpu]"' in cpu_runs
    def removed(text: str) -> set[str]:
        return {w for m in re.findall(r"pip uninstall ((?:-\S+ |[a-z][\w-]* ?)+)", text) for w in m.split() if not w.startswith("-")}
    assert removed(install_sh) and removed(install_sh) <= removed(cpu_runs)
    assert _env(stages["runtime-cpu"])["LIFT_DEMO"] == "1"  # the CPU image runs `lift serve --demo`


def test_cpu_stage_takes_everything_it_fetches_as_build_arguments() -> None:
    """A mirror-only network: base image, apt mirror, PyPI mirror, torch's index or wheel folder and the
    torchvision choice are build arguments, and their defaults are what a machine with internet uses."""
    stages = _stages()
    top, build = _args(stages["<args>"]), _args(stages["build-cpu"])
    assert top["CPU_BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert stages["build-cpu"][0][1].startswith("${CPU_BASE_IMAGE} ")
    assert stages["runtime-cpu"][0][1].startswith("${CPU_BASE_IMAGE} ")  # the venv's python comes from the same base
    assert build["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert build["TORCH_FIND_LINKS"] == "" and build["PIP_INDEX_URL"] == "" and build["DEBIAN_MIRROR"] == ""
    assert build["TORCHVISION"] == "auto"
    runs = _runs(stages["build-cpu"])
    # pip reads its sources from the environment, so an empty argument adds nothing (no unreachable index).
    assert 'export PIP_EXTRA_INDEX_URL="$TORCH_CPU_INDEX_URL"' in runs and 'export PIP_FIND_LINKS="$TORCH_FIND_LINKS"' in runs
    assert '[ -n "$TORCH_CPU_INDEX_URL" ]' in runs and '[ -n "$TORCH_FIND_LINKS" ]' in runs
    assert "$DEBIAN_MIRROR" in runs and "$DEBIAN_MIRROR" in _runs(stages["runtime-cpu"])
    assert "DEBIAN_MIRROR" in _args(stages["runtime-cpu"])


def test_cpu_torchvision_fallback_is_install_sh_s() -> None:
    """Same three ways as scripts/install.sh, in the same order: as installed, the real +cpu wheel, the stub."""
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    runs = _runs(_stages()["build-cpu"])
    steps = ['import torchvision"', "torchvision==0.28.0+cpu", "scripts/torchvision_cpu_stub.sh"]
    for text in (install_sh, runs):
        where = [text.find(s) for s in steps]
        assert -1 not in where and where == sorted(where), (steps, where)
    # The stub script is in the build (COPY) and the stage says which way it went.
    assert any(i == "COPY" and "scripts/torchvision_cpu_stub.sh" in a for i, a in _stages()["build-cpu"])
    assert "torchvision imports as installed" in runs and "(clean)" in runs and "(workaround)" in runs
    assert '"$TORCHVISION" != stub' in runs and '"$TORCHVISION" != cpu-wheel' in runs


def test_cpu_runtime_stage_carries_only_the_venv() -> None:
    """No compiler, pip work, sources or CUDA wheels in the CPU image: the runtime stage installs two shared
    libraries and copies the finished venv; the build stage drops the CUDA-only wheels pip may drag in."""
    build, runtime = _stages()["build-cpu"], _stages()["runtime-cpu"]
    copies = [a for i, a in runtime if i in ("COPY", "ADD")]
    assert copies == ["--from=build-cpu /opt/venv /opt/venv"], copies
    runtime_runs = _runs(runtime)
    assert "pip " not in runtime_runs and "gcc" not in runtime_runs
    assert "--no-install-recommends libnuma1 libgomp1" in runtime_runs and "rm -rf /var/lib/apt/lists/*" in runtime_runs
    build_runs = _runs(build)
    assert re.search(r"pip uninstall -y torchaudio torchcodec triton", build_runs)
    assert "nvidia-" in build_runs and "xargs -r pip uninstall -y" in build_runs
    assert _env(build).get("PIP_NO_CACHE_DIR") == "1"
    assert "gcc" in build_runs  # only for the stub, only in the build stage
    # No compiler at run time, so torch.compile (vLLM's sampler uses it even eager) must be off there.
    assert _env(runtime)["TORCHDYNAMO_DISABLE"] == "1"


def test_no_kv_cache_size_baked_in() -> None:
    # The service sizes vLLM's KV cache from the critic's work (LIFT_KV_CACHE_GB overrides): an image-wide
    # VLLM_CPU_KVCACHE_SPACE would override that for every model.
    assert "VLLM_CPU_KVCACHE_SPACE" not in DOCKERFILE.read_text()


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


def test_entrypoint_critics_mode_serves_the_pairs_not_the_images_model(tmp_path: Path) -> None:
    # The image sets LIFT_MODEL=/models/critic; with LIFT_CRITICS the entrypoint must drop it (the service refuses
    # both) and pass no --model: the real CLI then checks the pairs themselves.
    (tmp_path / "lift").mkdir()
    image_env = {"LIFT_MODEL": "/models/critic", "LIFT_ENGINE": "transformers"}
    proc = _entrypoint(image_env | {"LIFT_CRITICS": f"lift={tmp_path / 'lift'},videoscore2={tmp_path / 'absent'}"})
    assert proc.returncode == 2, proc.stderr
    assert f"--critic videoscore2={tmp_path / 'absent'}: not a folder" in proc.stderr
    assert "leave out --model" not in proc.stderr and "no model folder" not in proc.stderr
    proc = _entrypoint(image_env | {"LIFT_CRITICS": f"lift={tmp_path / 'lift'}", "LIFT_ENGINE": "bogus"})
    assert proc.returncode == 2 and "--engine: invalid choice: 'bogus'" in proc.stderr


def test_image_script_passes_only_build_arguments_the_dockerfile_declares() -> None:
    """`make image` and the Dockerfile cannot drift apart: every --build-arg it sets is an ARG of the file."""
    declared = set()
    for stage in _stages().values():
        declared |= set(_args(stage))
    passed = set(re.findall(r'--build-arg "?([A-Z_]+)=', IMAGE_SH.read_text()))
    assert {"VARIANT", "CPU_BASE_IMAGE", "TORCH_CPU_INDEX_URL", "TORCH_FIND_LINKS", "TORCHVISION",
            "PIP_INDEX_URL", "DEBIAN_MIRROR"} <= passed
    assert passed <= declared, passed - declared


def test_image_settings_are_documented() -> None:
    """Every LIFT_* setting the build and check scripts read is in the script's help and in deploy/README.md."""
    used = set(re.findall(r"\b(LIFT_[A-Z_]+)\b", IMAGE_SH.read_text() + IMAGE_CHECK.read_text()))
    used -= {"LIFT_HOST", "LIFT_PORT"}  # the service's own settings, set for the container it runs
    help_text = subprocess.run(["bash", str(IMAGE_SH), "help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0, help_text.stderr
    readme = (REPO / "deploy" / "README.md").read_text()
    assert used and all(v in help_text.stdout for v in used), used - set(re.findall(r"LIFT_[A-Z_]+", help_text.stdout))
    assert all(v in readme for v in used), [v for v in used if v not in readme]
    bad = subprocess.run(["bash", str(IMAGE_SH), "bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "usage:" in bad.stderr and bad.stdout == ""


def test_image_check_reads_the_image_s_own_healthcheck() -> None:
    """image_check runs the HEALTHCHECK stored in the image config; the same conversion Docker does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_check", IMAGE_CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    cmd = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.M).group(1))
    assert mod.healthcheck_argv({"Healthcheck": {"Test": ["CMD", *cmd]}}) == cmd
    assert mod.healthcheck_argv({"Healthcheck": {"Test": ["CMD-SHELL", "exit 1"]}}) == ["/bin/sh", "-c", "exit 1"]
    with pytest.raises(mod.CheckFailed, match="no HEALTHCHECK"):
        mod.healthcheck_argv({})  # an OCI-format build drops it: the check says so instead of passing
    # Why the healthcheck failed is the command's own last line, not the trailer `buildah run` adds.
    stderr = ("Traceback (most recent call last):\n  ...\nurllib.error.URLError: <urlopen error [Errno 111] "
              "Connection refused>\nsubprocess exited with status 1\nsubprocess exited with status 1\n"
              "Error: exit status 1\n")
    assert mod.failure_line(stderr).startswith("urllib.error.URLError")
    assert mod.failure_line("Error: exit status 1\n") == "Error: exit status 1"
