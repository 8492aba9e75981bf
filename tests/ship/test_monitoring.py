"""docker-compose.yml, Prometheus and Grafana provisioning: wired together and to the real server.

Every series a dashboard panel or an alert reads is checked against the /metrics of a real
server process, so a renamed metric or label breaks this test, not the dashboard in production.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from server.config import ServerConfig, env_name

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sentiment-service.json"
SELECTOR = re.compile(r"\b(sentiment_[a-z_]+|up)\b(\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? \S+$")


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path, for bind mounts of repository paths."""
    out = {}
    for volume in service.get("volumes", []):
        host, target = volume.split(":")[:2]
        if host.startswith("./"):
            out[target] = REPO / host
    return out


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_compose_services_and_mounts():
    services = compose()["services"]
    assert set(services) == {"server", "prometheus", "grafana"}
    for name, service in services.items():
        for target, host in mounts(service).items():
            if name == "server":
                continue  # ./artifacts/model exists only after training/export
            assert host.exists(), f"{name}: {host} mounted at {target} is missing"
    server = services["server"]
    assert server["build"]["dockerfile"] == "Dockerfile.cpu"
    assert "/models/model" in [v.split(":")[1] for v in server["volumes"]]


def test_compose_server_settings():
    server = compose()["services"]["server"]
    env = server["environment"]
    names = {env_name(f.name) for f in fields(ServerConfig)}
    assert set(env) <= names, set(env) - names
    threads = int(env["SENTIMENT_INFERENCE_WORKERS"]) * int(env["SENTIMENT_INTRA_OP_THREADS"])
    assert threads == int(server["cpus"]), "workers x threads must match the CPU limit"
    grace = float(server["stop_grace_period"].rstrip("s"))
    assert grace > float(env["SENTIMENT_DRAIN_TIMEOUT_S"]), "docker would SIGKILL mid-drain"


def test_prometheus_scrapes_the_server_and_loads_the_rules():
    services = compose()["services"]
    prom_mounts = mounts(services["prometheus"])
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [target] = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    assert host == "server"
    assert f"{port}:{port}" in services["server"]["ports"]  # the server listens on SENTIMENT_PORT (8000)
    for rule_file in config["rule_files"]:
        folder, _, name = rule_file.rpartition("/")
        assert (prom_mounts[folder] / name).is_file(), rule_file


def test_sla_alert_rule():
    rules = {r["alert"]: r for r in alert_rules()}
    sla = rules["SentimentLatencySLABreached"]
    expr = " ".join(sla["expr"].split())
    assert expr.startswith("histogram_quantile(0.95,") and expr.endswith("> 0.2")
    assert "sentiment_request_duration_seconds_bucket" in expr and sla["for"] == "5m"
    assert "> 0.01" in rules["SentimentErrorRateHigh"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_grafana_provisioning_points_at_the_mounts():
    services = compose()["services"]
    graf_mounts = mounts(services["grafana"])
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/sentiment.yml").read_text())["providers"][0]
    assert (graf_mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]


def test_dashboard_has_the_panels_the_sla_needs():
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in ("request rate", "p50 / p95 / p99", "error rate", "batch size", "queue depth", "padding ratio"):
        assert topic in titles, topic
    [latency] = [p for p in board["panels"] if p["title"].lower().startswith("latency p50")]
    exprs = [t["expr"] for t in latency["targets"]]
    assert [e.split(",")[0] for e in exprs] == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.2, "the 200 ms SLA line"
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    for expr in dashboard_exprs():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_dashboard_and_alerts_show_overload_control():
    board = dashboard()
    by_title = {p["title"].lower(): p for p in board["panels"]}
    goodput = next(p for t, p in by_title.items() if t.startswith("goodput"))
    exprs = " ".join(t["expr"] for t in goodput["targets"])
    assert "sentiment_goodput_total" in exprs and "sentiment_rejected_total" in exprs and "overloaded" in exprs
    wait = next(p for t, p in by_title.items() if "predicted queue wait" in t)
    assert "sentiment_predicted_wait_seconds" in " ".join(t["expr"] for t in wait["targets"])
    assert "overloaded" in {r["alert"]: r for r in alert_rules()}["SentimentOverloaded"]["expr"]


def test_dashboard_shows_what_the_model_is_asked_and_answers():
    by_title = {p["title"].lower(): p for p in dashboard()["panels"]}

    def exprs(start: str) -> str:
        panel = next(p for t, p in by_title.items() if t.startswith(start))
        return " ".join(t["expr"] for t in panel["targets"])

    share = exprs("label share")
    assert "sum by (label) (rate(sentiment_predictions_total" in share and "sentiment_reference_label_share" in share
    assert "sentiment_prediction_score_bucket" in exprs("confidence")
    assert "sentiment_input_tokens_bucket" in exprs("input length")
    log = exprs("prediction log")
    for name in ("rows", "dropped", "errors"):
        assert f"sentiment_prediction_log_{name}_total" in log, name


def test_label_share_drift_alert_uses_the_monitors_margin_and_the_models_reference():
    from server.monitor import SHARE_MARGIN, MonitorConfig

    rule = {r["alert"]: r for r in alert_rules()}["SentimentLabelShareDrift"]
    expr = " ".join(rule["expr"].split())
    assert expr.startswith('abs( sum(rate(sentiment_predictions_total{label="positive"}[1h]))')
    assert '- max(sentiment_reference_label_share{label="positive"}) )' in expr
    assert (
        f") > {SHARE_MARGIN} and" in expr and MonitorConfig.__dataclass_fields__["share_margin"].default == SHARE_MARGIN
    )
    assert rule["for"] == "30m" and rule["labels"]["severity"] == "ticket"
    assert (
        "sentiment_prediction_log_dropped_total"
        in {r["alert"]: r for r in alert_rules()}["SentimentPredictionLogLosingRows"]["expr"]
    )


def scrape(url: str) -> list[tuple[str, dict[str, str]]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    series = []
    for line in text.splitlines():
        m = SERIES.match(line)
        if m and not line.startswith("#"):
            labels = dict((k, v) for k, _, v in MATCHER.findall(m.group(3) or ""))
            series.append((m.group(1), labels))
    return series


@pytest.fixture(scope="module")
def scraped(live_server):
    body = json.dumps({"texts": ["A wonderful film.", "A dreadful film, far too long."]}).encode()
    for _ in range(3):
        req = urllib.request.Request(
            live_server.url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=10).read()
    series = scrape(live_server.url)
    series.append(("up", {"job": "sentiment"}))  # Prometheus' own series, not the server's
    return series


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_series_exists_on_a_real_server(scraped, source):
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    checked = 0
    for expr in exprs:
        for name, _, body in SELECTOR.findall(expr):
            candidates = [labels for n, labels in scraped if n == name]
            assert candidates, f"{name} (in {expr!r}) is not exported by the server"
            for label, op, value in MATCHER.findall(body):
                assert any(label in c for c in candidates), f"{name} has no label {label!r}"
                if op == "=":  # equality must hit a real series; regexes may match only on failure
                    assert any(c.get(label) == value for c in candidates), (
                        f'{name}{{{label}="{value}"}} matches nothing'
                    )
            checked += 1
    assert checked >= (10 if source == "dashboard" else 3)
