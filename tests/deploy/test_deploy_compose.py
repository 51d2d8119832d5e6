"""deploy/compose.yaml through two real compose implementations' `config` (no Docker daemon needed):
Debian's docker-compose 1.29 and Docker Compose v2 (the Go one behind `docker compose`). Each resolves the
file fully (anchors, profiles, paths, env interpolation); the tests then check what it resolved to."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose.yaml"
PROFILES = ["--profile", "gpu", "--profile", "demo", "--profile", "critics"]


def _env() -> dict[str, str]:
    # Resolve with the file's own defaults, not whatever LIFT_* the developer's shell has.
    return {k: v for k, v in os.environ.items() if not k.startswith(("LIFT_", "GRAFANA_", "PROMETHEUS_", "COMPOSE_"))}


def _config(binary: str, *args: str, file: Path = COMPOSE, after: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-f", str(file), "--project-directory", str(file.parent), *args, "config", *after],
                          capture_output=True, text=True, env=_env(), timeout=120)


@pytest.fixture(scope="module", params=["compose_v1", "compose_v2"])
def compose(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def resolved(compose: str) -> dict[str, Any]:
    # Resolved once per implementation; tests read it without changing it.
    proc = _config(compose, *PROFILES)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _env_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def _volume_targets(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target -> {source, read_only}, from either implementation's output form (short string or long map)."""
    out: dict[str, dict[str, Any]] = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = {"source": parts[0], "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}
        else:
            out[v["target"]] = {"source": v["source"], "read_only": bool(v.get("read_only"))}
    return out


def test_config_accepts_the_file(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"lift", "lift-demo", "lift-critics", "prometheus", "grafana"}


SCORING = {"gpu": "lift", "demo": "lift-demo", "critics": "lift-critics"}


def test_profiles_pick_one_service(compose_v2: str) -> None:
    # v2 filters `config` by profile as `up` does (v1 keeps every service in `config`: see the next test).
    for profile, present in SCORING.items():
        proc = _config(compose_v2, "--profile", profile)
        assert proc.returncode == 0, proc.stderr
        services = set(yaml.safe_load(proc.stdout)["services"])
        assert services == {present, "prometheus", "grafana"}, (profile, services)


def test_profiles_are_set(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["lift"]["profiles"] == ["gpu"] and services["lift-demo"]["profiles"] == ["demo"]
    assert services["lift-critics"]["profiles"] == ["critics"]
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]


def test_gpu_service(resolved: dict[str, Any]) -> None:
    lift = resolved["services"]["lift"]
    assert lift["build"]["args"]["VARIANT"] == "gpu"
    assert (Path(lift["build"]["context"]) / lift["build"].get("dockerfile", "Dockerfile")).resolve() == (REPO / "Dockerfile")
    devices = lift["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    model = _volume_targets(lift)["/models/critic"]
    assert model["read_only"], "the critic is mounted read-only"
    # v1 echoes "16gb", v2 normalises to bytes.
    assert str(lift["shm_size"]).lower() in ("16gb", str(16 * 2**30)) and lift["init"] is True
    env = _env_of(lift)
    assert env["LIFT_HOST"] == "0.0.0.0" and str(env["LIFT_PORT"]) == "8000"


def test_critics_service_serves_several_critics_on_the_gpu_service(resolved: dict[str, Any]) -> None:
    from service.app.settings import ServiceSettings

    services = resolved["services"]
    lift, critics = services["lift"], services["lift-critics"]
    # The GPU service itself (image, build, GPUs, shm, restart, port, alias), with other critics and mounts.
    for key in ("image", "build", "deploy", "shm_size", "init", "restart", "ports", "networks"):
        assert critics[key] == lift[key], key
    env = _env_of(critics)
    dirs = ServiceSettings(critics=env["LIFT_CRITICS"]).critic_dirs()  # the real service's reading
    assert list(dirs) == ["lift", "videoscore2"]
    mounts = _volume_targets(critics)
    assert set(mounts) == {"/models"} and mounts["/models"]["read_only"], "one read-only folder of critic folders"
    assert Path(mounts["/models"]["source"]) == REPO / "deploy" / "models"
    assert all(str(d).startswith("/models/") for d in dirs.values())
    # Every setting the GPU service passes through, plus the GPU memory share the critics split.
    assert set(env) == set(_env_of(lift)) | {"LIFT_CRITICS", "LIFT_GPU_MEMORY_UTILIZATION"}
    assert "LIFT_MODEL" not in env  # the entrypoint drops the image's LIFT_MODEL when LIFT_CRITICS is set


def test_critics_follow_the_shell(compose: str) -> None:
    env = _env() | {"LIFT_CRITICS": "videoscore2=/models/vs2,lift=/models/lift-13b", "LIFT_CRITICS_DIR": "/srv/critics",
                    "LIFT_GPU_MEMORY_UTILIZATION": "0.8"}
    proc = subprocess.run([compose, "-f", str(COMPOSE), "--profile", "critics", "config"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    critics = yaml.safe_load(proc.stdout)["services"]["lift-critics"]
    got = _env_of(critics)
    assert got["LIFT_CRITICS"] == "videoscore2=/models/vs2,lift=/models/lift-13b"
    assert str(got["LIFT_GPU_MEMORY_UTILIZATION"]) == "0.8"
    assert _volume_targets(critics)["/models"]["source"] == "/srv/critics"


def test_demo_service(resolved: dict[str, Any]) -> None:
    demo = resolved["services"]["lift-demo"]
    assert demo["build"]["args"]["VARIANT"] == "cpu"
    assert str(_env_of(demo)["LIFT_DEMO"]) == "1"
    assert "deploy" not in demo, "the demo needs no GPU"


def test_prometheus_reaches_either_service_and_grafana_gets_its_files(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("lift", "lift-demo", "lift-critics"):
        assert "lift" in services[name]["networks"]["default"]["aliases"]
        assert any(str(p["target"] if isinstance(p, dict) else p).endswith("8000") for p in services[name]["ports"])
    prom_conf = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom_conf["scrape_configs"] if job["job_name"] == "lift-reward"
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["lift:8000"]

    prom = services["prometheus"]
    mounts = _volume_targets(prom)
    assert Path(mounts["/etc/prometheus"]["source"]) == REPO / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    grafana = _volume_targets(services["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]["source"]) == REPO / "deploy" / "grafana" / "provisioning"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/lift-reward.yaml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert Path(grafana[dash_dir]["source"]) == REPO / "deploy" / "grafana" / "dashboards"
    home = _env_of(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "deploy" / "grafana" / "dashboards" / Path(home).name).is_file()
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_pass_through_settings_follow_the_shell(compose: str) -> None:
    env = _env() | {"LIFT_MAX_INFLIGHT": "7", "LIFT_MODEL_DIR": "/srv/critic"}
    proc = subprocess.run([compose, "-f", str(COMPOSE), "--profile", "gpu", "config"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lift = yaml.safe_load(proc.stdout)["services"]["lift"]
    assert str(_env_of(lift)["LIFT_MAX_INFLIGHT"]) == "7"
    assert _volume_targets(lift)["/models/critic"]["source"] == "/srv/critic"


def test_config_rejects_a_broken_file(compose: str, tmp_path: Path) -> None:
    # The validator is not a no-op: a misspelt service key must be refused by both implementations.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    shm_size: \"16gb\"", "    shm_sise: \"16gb\"", 1))
    proc = _config(compose, *PROFILES, file=broken)
    assert proc.returncode != 0 and "shm_sise" in (proc.stderr + proc.stdout)


def test_v2_json_matches_v1(compose_v1: str, compose_v2: str) -> None:
    # Both implementations agree on the services, images and build variants.
    v1 = yaml.safe_load(_config(compose_v1, *PROFILES).stdout)["services"]
    v2 = json.loads(_config(compose_v2, *PROFILES, after=("--format", "json")).stdout)["services"]
    assert {k: (s.get("image"), (s.get("build") or {}).get("args")) for k, s in v1.items()} == \
           {k: (s.get("image"), (s.get("build") or {}).get("args")) for k, s in v2.items()}
