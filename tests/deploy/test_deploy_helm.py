"""The Helm chart, rendered by Helm's own Go engine (helm-python-sdk) for the default values and for values
that turn every feature on, linted, and every rendered Kubernetes object validated against the official
schemas (kubernetes-validate, strict: unknown fields fail) for the oldest and newest supported Kubernetes.
CRD objects (ServiceMonitor, KEDA ScaledObject) have no bundled schema: their required fields are checked
here. Then what the objects mean: probes, /dev/shm, GPUs, non-root, selectors that find the right pods."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "lift-reward"
RELEASE, NAMESPACE = "scoring", "lift"
FULLNAME = f"{RELEASE}-lift-reward"

KUBE_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]

ALL_FEATURES: dict[str, Any] = {
    "replicaCount": 2,
    "image": {"repository": "registry.example.com/lift-reward", "tag": "0.1.0-gpu", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry"}],
    "model": {"path": "/models/lift-critic-40b", "mountPath": "/models",
              "volume": {"nfs": {"server": "nfs.example.com", "path": "/exports/critics", "readOnly": True}}},
    "gpu": {"count": 4},
    "env": {"LIFT_MAX_INFLIGHT": "32", "LIFT_MAX_QUEUE": 128, "LIFT_ALLOW_PRIVATE_URLS": False},
    "apiKeys": {"existingSecret": "lift-api-keys", "key": "keys"},
    "extraEnv": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}],
    "extraArgs": ["--host", "0.0.0.0"],
    "podAnnotations": {"example.com/team": "reward"},
    "podLabels": {"tier": "gpu"},
    "priorityClassName": "gpu-serving",
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "lift-reward"}}}],
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "autoscaling": {"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 8, "targetQueueDepth": 3},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": None},
    "tests": {"enabled": True},
}
KEDA = copy.deepcopy(ALL_FEATURES) | {"autoscaling": {"enabled": True, "mode": "keda", "minReplicas": 1, "maxReplicas": 6,
                                                      "targetQueueDepth": 4}}
DEMO: dict[str, Any] = {"demo": {"enabled": True}}
ALL_OFF: dict[str, Any] = {"podDisruptionBudget": {"enabled": False}, "tests": {"enabled": False},
                           "serviceAccount": {"create": False}}

LABEL_JOB: dict[str, Any] = {
    "apiKeys": {"existingSecret": "lift-api-keys", "key": "keys"},
    "imagePullSecrets": [{"name": "registry"}],
    "labelJob": {"enabled": True, "manifest": "/data/batch7/manifest.jsonl", "shards": 3, "parallelism": 2,
                 "concurrency": 16, "input": {"volume": {"nfs": {"server": "nfs.example.com", "path": "/videos",
                                                                  "readOnly": True}}},
                 "output": {"existingClaim": "lift-labels", "prefix": "batch7"}, "ttlSecondsAfterFinished": 86400,
                 "extraArgs": ["--max-reason-tokens", 64], "tolerations": [{"key": "spot", "operator": "Exists"}]},
}

# Several critics: two critics, one weights claim and one NFS share.
CRITICS: list[dict[str, Any]] = [
    {"name": "lift", "model": {"existingClaim": "lift-critic-weights", "path": "/models/lift/critic"}},
    {"name": "videoscore2", "model": {"volume": {"nfs": {"server": "nfs.example.com", "path": "/exports/vs2",
                                                         "readOnly": True}}}},
]
CRITICS_TOGETHER: dict[str, Any] = {"critics": CRITICS, "criticsMode": "together", "gpu": {"count": 2},
                                    "ingress": {"enabled": True, "className": "nginx", "host": "lift.example.com"}}
CRITICS_SEPARATE: dict[str, Any] = {
    "criticsMode": "separate",
    "critics": [CRITICS[0] | {"replicas": 3, "gpu": {"count": 2}, "env": {"LIFT_MAX_INFLIGHT": "8"},
                              "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "96Gi"}}},
                CRITICS[1] | {"replicas": 1}],
    "env": {"LIFT_MAX_INFLIGHT": "16", "LIFT_MAX_QUEUE": "64"},
    "apiKeys": {"existingSecret": "lift-api-keys", "key": "keys"},
    "ingress": {"enabled": True, "className": "nginx", "host": "lift.example.com",
                "tls": [{"secretName": "lift-tls", "hosts": ["lift.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "autoscaling": {"enabled": True, "mode": "keda", "minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 4},
    "labelJob": LABEL_JOB["labelJob"],
}

VALUE_SETS = {"default": {}, "all-features-hpa": ALL_FEATURES, "all-features-keda": KEDA, "demo": DEMO, "all-off": ALL_OFF,
              "label-job": LABEL_JOB, "critics-together": CRITICS_TOGETHER, "critics-separate": CRITICS_SEPARATE,
              "critics-separate-hpa": CRITICS_SEPARATE | {"autoscaling": ALL_FEATURES["autoscaling"]}}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART) as c:
        yield c


def _render(chart: helm.Chart, values: dict[str, Any], yaml_strict) -> list[dict[str, Any]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    for path, text in manifests.items():
        for doc in yaml_strict(text):  # duplicate keys fail here
            assert isinstance(doc, dict) and "kind" in doc, f"{path}: not a Kubernetes object"
            objects.append(doc)
    return objects


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def _container(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- Helm's own checks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{kube}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
        assert not report["errors"] and not problems, (kube, report)


def test_values_schema_rejects_bad_values(chart: helm.Chart) -> None:
    for bad, where in (({"autoscaling": {"mode": "cpu"}}, "/autoscaling/mode"),
                       ({"replicaCount": -1}, "/replicaCount"),
                       ({"gpu": {"count": 0}}, "/gpu/count"),
                       ({"env": {"MAX_INFLIGHT": "3"}}, "MAX_INFLIGHT"),
                       ({"replicas": 3}, "replicas"),
                       ({"probes": {"readiness": {"path": "ready"}}}, "/probes/readiness/path"),
                       ({"engine": "tensorrt"}, "/engine")):
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)


def test_template_guards_give_clear_errors(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="model.path .* must lie under model.mountPath"):
        chart.render({"model": {"path": "/data/critic"}}, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmRenderError, match="model.existingClaim or model.volume must say where the critic is"):
        chart.render({"model": {"existingClaim": ""}}, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmRenderError, match="maxReplicas must be at least"):
        chart.render({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, name=RELEASE, namespace=NAMESPACE)


def test_values_yaml_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"values.yaml: top-level key without a comment: {line!r}"


# ---- every object valid ----------------------------------------------------------------------------------

def _check_service_monitor(sm: dict[str, Any], service: dict[str, Any]) -> None:
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["name"]
    spec = sm["spec"]
    assert _matches(spec["selector"]["matchLabels"], service["metadata"]["labels"]), "selects the Service"
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert spec["endpoints"], "endpoints is required"
    for ep in spec["endpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert isinstance(ep[key], str) and ep[key][-1] in "smh", ep


def _check_scaled_object(so: dict[str, Any], deploy: dict[str, Any], check_promql, service: str = FULLNAME) -> None:
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"]
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == deploy["metadata"]["name"]  # the one required field of scaleTargetRef
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert isinstance(spec["pollingInterval"], int) and isinstance(spec["cooldownPeriod"], int)
    assert spec["triggers"], "triggers is required"
    for trig in spec["triggers"]:
        assert trig["type"] == "prometheus"
        meta = trig["metadata"]
        # KEDA's trigger metadata is map[string]string: a number here is rejected by the API server.
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert {"serverAddress", "query", "threshold"} <= set(meta)
        assert float(meta["threshold"]) > 0 and meta["serverAddress"].startswith("http")
        assert check_promql(meta["query"], "ScaledObject query") == {"lift_queued_requests"}
        assert f'namespace="{NAMESPACE}"' in meta["query"] and f'service="{service}"' in meta["query"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_are_valid(chart: helm.Chart, name: str, yaml_strict, check_promql) -> None:
    objects = _render(chart, VALUE_SETS[name], yaml_strict)
    crds = {"ServiceMonitor", "ScaledObject"}
    for obj in objects:
        if obj["kind"] in crds:
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, kube, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {kube}: {exc.message}")
    # One Deployment and Service, or with criticsMode separate one of each per critic, of the same name.
    deploys = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert deploys and set(deploys) == set(services)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            for service in services.values():
                _check_service_monitor(obj, service)
        elif obj["kind"] == "ScaledObject":
            target = obj["spec"]["scaleTargetRef"]["name"]
            _check_scaled_object(obj, deploys[target], check_promql, service=target)
        assert obj["metadata"]["name"].startswith(FULLNAME)


def test_schema_validation_is_not_a_no_op(chart: helm.Chart, yaml_strict) -> None:
    # The same rendered Deployment with one misspelt field, and with a wrong type, must be refused.
    deploy = _one(_render(chart, {}, yaml_strict), "Deployment")
    typo = copy.deepcopy(deploy)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(deploy)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBE_VERSIONS[-1], strict=True)


def test_optional_objects_follow_their_flags(chart: helm.Chart, yaml_strict) -> None:
    kinds = {name: _kinds(_render(chart, values, yaml_strict)) for name, values in VALUE_SETS.items()}
    base = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}
    assert kinds["default"] == base
    assert kinds["all-features-hpa"] == base | {"ServiceMonitor", "HorizontalPodAutoscaler"}
    assert kinds["all-features-keda"] == base | {"ServiceMonitor", "ScaledObject"}
    assert kinds["all-off"] == {"Deployment", "Service"}


# ---- what the objects mean -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "all-features-hpa", "demo"])
def test_pod_runs_non_root_with_patient_probes_and_shm(chart: helm.Chart, name: str, yaml_strict) -> None:
    deploy = _one(_render(chart, VALUE_SETS[name], yaml_strict), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = _container(deploy)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["httpGet"]["path"] == "/health"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert all(p["httpGet"]["port"] in port_names for p in probes.values())
    s = probes["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 600, "startup probe must allow at least 10 minutes"
    assert deploy["spec"]["progressDeadlineSeconds"] >= 1200
    assert _env(c)["LIFT_PORT"] == str(port_names["http"]) and _env(c)["LIFT_HOST"] == "0.0.0.0"

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]["name"]]
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    # Read-only root: the places the service writes are volumes.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and {"/tmp", "/home/lift"} <= set(mounts)


def test_gpu_pod_mounts_the_model_and_asks_for_gpus(chart: helm.Chart, yaml_strict) -> None:
    for values, gpus in (({}, 1), (ALL_FEATURES, 4)):
        deploy = _one(_render(chart, values, yaml_strict), "Deployment")
        c = _container(deploy)
        env = _env(c)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert env["LIFT_TENSOR_PARALLEL_SIZE"] == str(gpus) and env["LIFT_DEMO"] == "0"
        assert c["image"].endswith("-gpu")
        model_volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
        assert model_volume == ({"name": "model", "nfs": values["model"]["volume"]["nfs"]} if values else
                                {"name": "model", "persistentVolumeClaim": {"claimName": "lift-critic-weights", "readOnly": True}})
        model_mount = next(m for m in c["volumeMounts"] if m["name"] == "model")
        assert model_mount["readOnly"] is True and env["LIFT_MODEL"].startswith(model_mount["mountPath"] + "/")
    env = _env(c)  # all features: settings, secret and extra env reach the container
    assert env["LIFT_MAX_INFLIGHT"] == "32" and env["LIFT_MAX_QUEUE"] == "128" and env["LIFT_ALLOW_PRIVATE_URLS"] == "false"
    assert env["LIFT_API_KEYS"] == {"secretKeyRef": {"name": "lift-api-keys", "key": "keys"}}
    assert env["VLLM_LOGGING_LEVEL"] == "INFO" and c["args"] == ["--host", "0.0.0.0"]


def test_demo_needs_no_gpu_and_no_model(chart: helm.Chart, yaml_strict) -> None:
    deploy = _one(_render(chart, DEMO, yaml_strict), "Deployment")
    c = _container(deploy)
    assert c["image"] == "lift-reward:0.1.0-cpu" and _env(c)["LIFT_DEMO"] == "1"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {}) and "LIFT_MODEL" not in _env(c)
    assert "model" not in {v["name"] for v in deploy["spec"]["template"]["spec"]["volumes"]}


@pytest.mark.parametrize("name", ["default", "all-features-hpa", "all-features-keda"])
def test_selectors_find_the_scoring_pods_and_only_them(chart: helm.Chart, name: str, yaml_strict) -> None:
    objects = _render(chart, VALUE_SETS[name], yaml_strict)
    deploy, service = _one(objects, "Deployment"), _one(objects, "Service")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert _matches(deploy["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in _container(deploy)["ports"]}
    pdb = _one(objects, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    # The `helm test` pod must not be taken for a scoring pod by the Service or the PDB.
    test_pod = _one(objects, "Pod")
    assert not _matches(service["spec"]["selector"], test_pod["metadata"]["labels"])
    assert not _matches(pdb["spec"]["selector"]["matchLabels"], test_pod["metadata"]["labels"])


def test_chart_test_pod_checks_health_and_ready(chart: helm.Chart, yaml_strict) -> None:
    objects = _render(chart, {}, yaml_strict)
    pod, service = _one(objects, "Pod"), _one(objects, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["securityContext"]["runAsNonRoot"] is True
    script = " ".join(pod["spec"]["containers"][0]["args"])
    base = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert base in script and '"$base/health"' in script and '"$base/ready"' in script and "curl -fsS" in script


def test_autoscaling_owns_replicas(chart: helm.Chart, yaml_strict) -> None:
    assert _one(_render(chart, {"replicaCount": 3}, yaml_strict), "Deployment")["spec"]["replicas"] == 3
    objects = _render(chart, ALL_FEATURES, yaml_strict)
    assert "replicas" not in _one(objects, "Deployment")["spec"]
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "lift_queued_requests"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "3"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in _one(_render(chart, KEDA, yaml_strict), "Deployment")["spec"]


def test_hpa_metric_is_one_the_service_exposes(check_promql) -> None:
    assert check_promql(ALL_FEATURES["autoscaling"].get("hpa", {}).get("metricName", "lift_queued_requests"), "HPA metric")


# ---- the labeling Job (lift label --shard K/N per index) -----------------------------------------------

def _label_argv(container: dict[str, Any], index: int) -> list[str]:
    """The command line one pod runs: Kubernetes expands $(JOB_COMPLETION_INDEX) in args, nothing else."""
    assert container["command"] == ["lift", "label"]
    return ["label", *(a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in container["args"])]


def test_label_job_is_off_by_default(chart: helm.Chart, yaml_strict) -> None:
    for name in ("default", "all-features-hpa", "demo"):
        assert "Job" not in _kinds(_render(chart, VALUE_SETS[name], yaml_strict))


def test_label_job_runs_one_shard_per_index_against_the_service(chart: helm.Chart, yaml_strict) -> None:
    from clients.cli import build_parser
    from clients.shards import Shard

    objects = _render(chart, LABEL_JOB, yaml_strict)
    job, service, deploy = _one(objects, "Job"), _one(objects, "Service"), _one(objects, "Deployment")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 3 and spec["parallelism"] == 2
    assert spec["ttlSecondsAfterFinished"] == 86400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it; a new pod of the same index resumes
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    c = pod["containers"][0]
    assert rules[0]["onExitCodes"]["containerName"] == c["name"]
    assert c["image"] == "lift-reward:0.1.0-cpu"  # the client needs no GPU image
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert _env(c)["LIFT_API_KEY"] == {"secretKeyRef": {"name": "lift-api-keys", "key": "keys"}}

    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["input"]["readOnly"] is True and volumes["input"]["nfs"]["server"] == "nfs.example.com"
    assert volumes["output"]["persistentVolumeClaim"]["claimName"] == "lift-labels"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True

    # Every index's command line is one the real `lift label` parser accepts, with its own shard and file.
    parser = build_parser()
    outs = set()
    base = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for k in range(3):
        args = parser.parse_args(_label_argv(c, k))
        assert args.shard == Shard(k, 3)
        assert args.server == [base] and args.concurrency == 16 and args.max_reason_tokens == 64
        assert str(args.manifest) == "/data/batch7/manifest.jsonl" and args.allow_item_errors and args.no_progress
        assert str(args.out).startswith(mounts["output"]["mountPath"] + "/batch7-")
        outs.add(str(args.out))
    assert len(outs) == 3, "two shards would share one output file"

    # The labeling pods are never taken for scoring pods.
    labels = spec["template"]["metadata"]["labels"]
    assert not _matches(service["spec"]["selector"], labels)
    assert not _matches(deploy["spec"]["selector"]["matchLabels"], labels)
    assert not _matches(_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)


def test_label_job_values_are_checked(chart: helm.Chart) -> None:
    on = {"enabled": True, "input": {"existingClaim": "videos"}, "output": {"existingClaim": "labels"}}
    for bad, where in (({"shards": 0}, "/labelJob/shards"), ({"concurrency": 0}, "/labelJob/concurrency"),
                       ({"parallelism": 0}, "/labelJob/parallelism"), ({"output": {"prefix": "a/b"}}, "/labelJob/output/prefix"),
                       ({"manifest": "manifest.jsonl"}, "/labelJob/manifest"), ({"shard": 3}, "shard"),
                       ({"server": "scoring:8000"}, "/labelJob/server")):
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.render({"labelJob": {**on, **bad}}, name=RELEASE, namespace=NAMESPACE)
    for bad, message in (({"manifest": "/elsewhere/m.jsonl"}, "labelJob.manifest .* must lie under labelJob.input.mountPath"),
                         ({"output": {"existingClaim": ""}}, "labelJob.output.existingClaim"),
                         ({"input": {"existingClaim": ""}}, "labelJob.input.existingClaim or labelJob.input.volume"),
                         ({"shards": 2, "parallelism": 3}, "parallelism .* must not exceed labelJob.shards")):
        with pytest.raises(helm.HelmRenderError, match=message):
            chart.render({"labelJob": {**on, **bad}}, name=RELEASE, namespace=NAMESPACE)


# ---- several critics: together in one pod, or one Deployment per critic ---------------------------------

def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _critic_dirs(env: dict[str, Any]) -> dict[str, Path]:
    """LIFT_CRITICS as the real service reads it (names checked against service.critics)."""
    from service.app.settings import ServiceSettings

    return ServiceSettings(critics=env["LIFT_CRITICS"]).critic_dirs()


def _check_weights_mounted(deploy: dict[str, Any], dirs: dict[str, Path], critics: list[dict[str, Any]]) -> None:
    """Every critic folder lies in (or is) a read-only mount of that critic's own volume, as the values say."""
    pod = deploy["spec"]["template"]["spec"]
    c = _container(deploy)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert "model" not in volumes and "LIFT_MODEL" not in _env(c), "LIFT_CRITICS replaces the single critic"
    assert set(dirs) == {x["name"] for x in critics}
    for critic in critics:
        name = critic["name"]
        mount = mounts[f"model-{name}"]
        assert mount["readOnly"] is True
        folder = str(dirs[name])
        assert folder == mount["mountPath"] or folder.startswith(mount["mountPath"] + "/"), (name, folder, mount)
        volume = volumes[f"model-{name}"]
        if "volume" in critic["model"]:
            assert volume == {"name": f"model-{name}", **critic["model"]["volume"]}
        else:
            assert volume["persistentVolumeClaim"] == {"claimName": critic["model"]["existingClaim"], "readOnly": True}
    # No two critics share a mount point.
    assert len({m["mountPath"] for m in c["volumeMounts"]}) == len(c["volumeMounts"])


def test_critic_names_are_the_services() -> None:
    from service.critics import CRITIC_NAMES

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["critics"]["items"]["properties"]["name"]["enum"] == list(CRITIC_NAMES)


def test_critic_values_leave_the_single_critic_render_alone(chart: helm.Chart) -> None:
    # Without critics, neither criticsMode nor the (disabled) ingress values change a single byte.
    for base in ({}, ALL_FEATURES, KEDA, LABEL_JOB):
        plain = chart.render(base, name=RELEASE, namespace=NAMESPACE)
        for extra in ({"critics": [], "criticsMode": "separate"},
                      {"criticsMode": "together", "ingress": {"enabled": False, "controller": "other"}}):
            assert chart.render(copy.deepcopy(base) | extra, name=RELEASE, namespace=NAMESPACE) == plain


def test_critics_together_one_pod_serves_every_critic(chart: helm.Chart, yaml_strict) -> None:
    objects = _render(chart, CRITICS_TOGETHER, yaml_strict)
    deploy, service = _one(objects, "Deployment"), _one(objects, "Service")
    assert deploy["metadata"]["name"] == service["metadata"]["name"] == FULLNAME  # the single critic's names
    c = _container(deploy)
    env = _env(c)
    dirs = _critic_dirs(env)
    assert list(dirs) == ["lift", "videoscore2"], "the first listed answers requests that name none"
    assert dirs == {"lift": Path("/models/lift/critic"), "videoscore2": Path("/models/videoscore2")}
    _check_weights_mounted(deploy, dirs, CRITICS)
    # One pod, its GPUs shared by both engines (the service splits GPU memory between them).
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2 and env["LIFT_TENSOR_PARALLEL_SIZE"] == "2"
    assert deploy["spec"]["replicas"] == 1
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert _matches(service["spec"]["selector"], pod_labels)
    assert _matches(_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    # The Ingress sends everything to the one Service; requests pick a critic by `model` there.
    ingress = _one(objects, "Ingress")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "lift.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
    assert rule["http"]["paths"] == [{"path": "/", "pathType": "Prefix",
                                      "backend": {"service": {"name": FULLNAME, "port": {"name": "http"}}}}]
    assert "nginx.ingress.kubernetes.io/rewrite-target" not in ingress["metadata"]["annotations"]


def _nginx_route(ingress: dict[str, Any], url_path: str) -> tuple[str, str] | None:
    """(service, path the pod sees) for a request path, as ingress-nginx with use-regex and rewrite-target does:
    the paths are regexes matched at the start, longest first; rewrite-target's $N are the path's groups."""
    import re

    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    target = annotations["nginx.ingress.kubernetes.io/rewrite-target"]
    paths = sorted(ingress["spec"]["rules"][0]["http"]["paths"], key=lambda p: -len(p["path"]))
    for p in paths:
        assert p["pathType"] == "ImplementationSpecific"
        m = re.match(p["path"], url_path, flags=re.IGNORECASE)
        if m:
            rewritten = re.sub(r"\$(\d)", lambda g: m.group(int(g.group(1))) or "", target)
            return p["backend"]["service"]["name"], rewritten
    return None


def test_critics_separate_one_deployment_and_service_per_critic(chart: helm.Chart, yaml_strict) -> None:
    objects = _render(chart, CRITICS_SEPARATE, yaml_strict)
    names = {"lift": f"{FULLNAME}-lift", "videoscore2": f"{FULLNAME}-videoscore2"}
    deploys, services = _by_kind(objects, "Deployment"), _by_kind(objects, "Service")
    assert set(deploys) == set(services) == set(names.values()), "no combined Service: requests for critics differ"
    for critic, values in zip(names, CRITICS_SEPARATE["critics"]):
        deploy = deploys[names[critic]]
        c = _container(deploy)
        env = _env(c)
        dirs = _critic_dirs(env)
        assert list(dirs) == [critic], "each pod serves its own critic, under its name (the /v1/models id)"
        _check_weights_mounted(deploy, dirs, [values])
        gpus = values.get("gpu", {}).get("count", 1)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus and env["LIFT_TENSOR_PARALLEL_SIZE"] == str(gpus)
        assert "replicas" not in deploy["spec"], "the autoscaler owns replicas"
        # The chart's env, with the critic's own over it; the API keys reach every critic.
        assert env["LIFT_MAX_INFLIGHT"] == values.get("env", {}).get("LIFT_MAX_INFLIGHT", "16")
        assert env["LIFT_MAX_QUEUE"] == "64" and env["LIFT_API_KEYS"]["secretKeyRef"]["name"] == "lift-api-keys"
        assert c["resources"]["requests"]["cpu"] == values.get("resources", {}).get("requests", {}).get("cpu", "4")
    lift_c = _container(deploys[names["lift"]])
    assert lift_c["resources"]["limits"]["memory"] == "96Gi" and lift_c["resources"]["requests"]["memory"] == "64Gi"

    # Each Service, PDB and autoscaler finds its own critic's pods and only those.
    pdbs, scalers = _by_kind(objects, "PodDisruptionBudget"), _by_kind(objects, "ScaledObject")
    assert set(pdbs) == set(scalers) == set(names.values())
    for name, deploy in deploys.items():
        own = deploy["spec"]["template"]["metadata"]["labels"]
        assert _matches(deploy["spec"]["selector"]["matchLabels"], own)
        for other_name, other in deploys.items():
            labels = other["spec"]["template"]["metadata"]["labels"]
            same = other_name == name
            assert _matches(services[name]["spec"]["selector"], labels) == same
            assert _matches(pdbs[name]["spec"]["selector"]["matchLabels"], labels) == same
            assert _matches(deploy["spec"]["selector"]["matchLabels"], labels) == same
        assert scalers[name]["spec"]["scaleTargetRef"]["name"] == name
        assert f'service="{name}"' in scalers[name]["spec"]["triggers"][0]["metadata"]["query"]
    # One ServiceMonitor scrapes every critic's Service (each series carries its own `service`).
    monitor = _one(objects, "ServiceMonitor")
    assert all(_matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"]) for s in services.values())

    # The entry point: /critics/<name>/... reaches that critic's Service with the prefix cut off.
    ingress = _one(objects, "Ingress")
    assert ingress["spec"]["tls"] == CRITICS_SEPARATE["ingress"]["tls"]
    assert ingress["spec"]["rules"][0]["host"] == "lift.example.com"
    for p in ingress["spec"]["rules"][0]["http"]["paths"]:
        service = services[p["backend"]["service"]["name"]]
        assert p["backend"]["service"]["port"]["name"] in {x["name"] for x in service["spec"]["ports"]}
    # The largest request the service takes (a base64 video) passes nginx, and a slow score is waited for.
    from service.app.settings import ServiceSettings

    annotations = ingress["metadata"]["annotations"]
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 2**20 >= ServiceSettings().max_body_bytes > (int(body[:-1]) - 1) * 2**20
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > ServiceSettings().request_timeout_s
    assert _nginx_route(ingress, "/critics/lift/v1/score") == (names["lift"], "/v1/score")
    assert _nginx_route(ingress, "/critics/videoscore2/v1/score/batch") == (names["videoscore2"], "/v1/score/batch")
    assert _nginx_route(ingress, "/critics/videoscore2/v1/models") == (names["videoscore2"], "/v1/models")
    assert _nginx_route(ingress, "/critics/lift") == (names["lift"], "/")
    assert _nginx_route(ingress, "/critics/liftx/v1/score") is None
    assert _nginx_route(ingress, "/v1/score") is None

    # `helm test` checks every critic; the labeling Job scores with the first critic unless told otherwise.
    script = " ".join(_one(objects, "Pod")["spec"]["containers"][0]["args"])
    for name in names.values():
        assert f'base="http://{name}:8000"' in script
    assert script.count('"$base/health"') == script.count('"$base/ready"') == 2
    job = _one(objects, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][job["args"].index("--server") + 1] == f"http://{names['lift']}:8000"


def test_ingress_body_size_follows_the_services_limit(chart: helm.Chart, yaml_strict) -> None:
    from service.app.settings import ServiceSettings

    for env in ({"LIFT_MAX_VIDEO_BYTES": "268435456"}, {"LIFT_MAX_VIDEO_BYTES": 1000, "LIFT_MAX_FRAMES_BYTES": "50000000"}):
        ingress = _one(_render(chart, CRITICS_TOGETHER | {"env": env}, yaml_strict), "Ingress")
        body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        limit = ServiceSettings(max_video_bytes=int(env["LIFT_MAX_VIDEO_BYTES"]),
                                max_frames_bytes=int(env.get("LIFT_MAX_FRAMES_BYTES", env["LIFT_MAX_VIDEO_BYTES"]))).max_body_bytes
        assert int(body[:-1]) * 2**20 >= limit > (int(body[:-1]) - 1) * 2**20, (env, body)
    # Annotations given in values win over the chart's own.
    values = CRITICS_TOGETHER | {"ingress": {"enabled": True, "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1g"}}}
    ingress = _one(_render(chart, values, yaml_strict), "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "1g"


def test_critics_separate_without_autoscaling_takes_each_critics_replicas(chart: helm.Chart, yaml_strict) -> None:
    values = CRITICS_SEPARATE | {"autoscaling": {"enabled": False}, "replicaCount": 2,
                                 "critics": [CRITICS[0] | {"replicas": 3}, CRITICS[1]]}
    deploys = _by_kind(_render(chart, values, yaml_strict), "Deployment")
    assert deploys[f"{FULLNAME}-lift"]["spec"]["replicas"] == 3
    assert deploys[f"{FULLNAME}-videoscore2"]["spec"]["replicas"] == 2  # replicaCount when a critic says none


def test_critics_separate_ingress_for_other_controllers(chart: helm.Chart, yaml_strict) -> None:
    values = CRITICS_SEPARATE | {"ingress": {"enabled": True, "controller": "other", "pathPrefix": "/score",
                                             "annotations": {"example.com/strip": "true"}}}
    ingress = _one(_render(chart, values, yaml_strict), "Ingress")
    assert ingress["metadata"]["annotations"] == {"example.com/strip": "true"}  # no nginx rewrite
    assert "ingressClassName" not in ingress["spec"] and "host" not in ingress["spec"]["rules"][0]
    assert [(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]] == \
        [("/score/lift", "Prefix", f"{FULLNAME}-lift"), ("/score/videoscore2", "Prefix", f"{FULLNAME}-videoscore2")]


def test_critics_values_are_checked(chart: helm.Chart) -> None:
    for bad, where in (({"critics": [{"name": "videoscore3", "model": {"existingClaim": "w"}}]}, "/critics/0/name"),
                       ({"critics": [{"name": "lift"}]}, "model"),
                       ({"critics": [{"name": "lift", "model": {"existingClaim": "w", "path": "models"}}]},
                        "/critics/0/model/path"),
                       ({"critics": [{"name": "lift", "model": {"claim": "w"}}]}, "claim"),
                       ({"critics": [{"name": "lift", "model": {"existingClaim": "w"}, "replica": 2}]}, "replica"),
                       ({"critics": [{"name": "lift", "model": {"existingClaim": "w"}, "env": {"MAX": "1"}}]}, "MAX"),
                       ({"criticsMode": "both"}, "/criticsMode"),
                       ({"ingress": {"enabled": True, "controller": "traefik"}}, "/ingress/controller"),
                       ({"ingress": {"enabled": True, "pathPrefix": "critics/"}}, "/ingress/pathPrefix")):
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    lift = {"name": "lift", "model": {"existingClaim": "w"}}
    for bad, message in (({"critics": [lift, lift]}, '"lift" is listed twice'),
                         ({"critics": [{"name": "lift", "model": {"existingClaim": "w", "path": "/data/lift"}}]},
                          r"model.path \(/data/lift\) must be model.mountPath \(/models/lift\) or lie under it"),
                         ({"critics": [{"name": "lift", "model": {"existingClaim": ""}}]},
                          "model.existingClaim or model.volume must say where its weights are"),
                         ({"critics": [lift | {"replicas": 2}]}, r"critics\[0\].replicas is per critic in criticsMode separate"),
                         ({"critics": [lift | {"gpu": {"count": 2}}], "criticsMode": "together"}, r"critics\[0\].gpu is per critic"),
                         ({"critics": [lift], "demo": {"enabled": True}}, "leave critics empty in demo mode"),
                         ({"critics": [lift], "criticsMode": "separate",
                           "autoscaling": {"enabled": True, "keda": {"query": "sum(lift_queued_requests)"}}},
                          "autoscaling.keda.query is one query")):
        with pytest.raises(helm.HelmRenderError, match=message):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)
