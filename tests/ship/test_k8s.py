"""Kubernetes manifests: schema-valid (kubernetes-validate, offline) and wired together."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.config import ServerConfig, env_name
from server.metrics import METRIC_NAMES

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we support; the manifests use nothing newer


def documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def container() -> dict:
    [c] = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict:
    return {e["name"]: e for e in c["env"]}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_schema_valid(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_broken_manifests():
    """The validation is live: wrong types and unknown fields fail it."""
    bad_type = copy.deepcopy(by_kind("Deployment"))
    bad_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad_type, K8S_VERSION, strict=True)
    unknown = copy.deepcopy(by_kind("Service"))
    unknown["spec"]["selectr"] = {"app": "x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


def test_expected_objects():
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_labels_and_selectors_match():
    dep = by_kind("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert by_kind("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], target["apiVersion"]) == ("Deployment", dep["metadata"]["name"], "apps/v1")


def test_ports_and_probes():
    c = container()
    [port] = c["ports"]
    env = env_of(c)
    assert int(env["SENTIMENT_PORT"]["value"]) == port["containerPort"]
    assert env["SENTIMENT_HOST"]["value"] == "0.0.0.0"
    [svc_port] = by_kind("Service")["spec"]["ports"]
    assert svc_port["targetPort"] in (port["name"], port["containerPort"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_env_names_are_server_settings():
    names = {env_name(f.name) for f in fields(ServerConfig)}
    for name in env_of(container()):
        assert name in names, f"{name} is not a server setting"


def test_threads_follow_the_cpu_limit():
    c = container()
    env = env_of(c)
    ref = env["SENTIMENT_INFERENCE_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref["containerName"] == c["name"] and str(ref["divisor"]) == "1"
    assert env["SENTIMENT_INTRA_OP_THREADS"]["value"] == "1"
    # A whole-core limit, so workers x threads equals the cores the pod may use.
    limit = str(c["resources"]["limits"]["cpu"])
    assert limit.isdigit() and int(limit) >= 1
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"]
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys() <= c["resources"]["limits"].keys()


def test_grace_period_covers_prestop_and_drain():
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    c = container()
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env_of(c)["SENTIMENT_DRAIN_TIMEOUT_S"]["value"])
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= float(pre_stop[1]) + drain, "SIGKILL would cut the drain short"
    assert grace <= float(pre_stop[1]) + drain + 10, "a stuck pod would hold a rollout for long"


def test_hpa_scales_on_the_admission_signal_with_cpu_as_fallback():
    spec = by_kind("HorizontalPodAutoscaler")["spec"]
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    pods, cpu = spec["metrics"]
    assert cpu["resource"]["name"] == "cpu" and cpu["resource"]["target"]["averageUtilization"] <= 80
    # The custom metric is a real server metric, served by the adapter rules, with a target under the budget.
    name = pods["pods"]["metric"]["name"]
    assert name in METRIC_NAMES
    target = pods["pods"]["target"]["averageValue"]
    budget_ms = float(env_of(container())["SENTIMENT_LATENCY_BUDGET_MS"]["value"])
    assert target.endswith("m") and 0 < int(target[:-1]) < budget_ms
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = [rule["name"]["as"] for rule in adapter["rules"]["custom"]]
    assert name in served
    for rule in adapter["rules"]["custom"]:
        assert rule["seriesQuery"].split("{")[0] in {f"{m}" for m in METRIC_NAMES}
