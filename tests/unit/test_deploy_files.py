"""The deployment files in conf/: Prometheus alert rules, the Grafana dashboard and the
Kubernetes manifests parse, hang together, and query only metrics the gateway registers."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.config import Config, load_config
from gateway.observability.metrics import BREAKER_STATES, Metrics

CONF = Path(__file__).resolve().parents[2] / "conf"
# PromQL words that are not metric names (functions, aggregations, operators).
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "time",
    "clamp_min", "clamp_max", "topk", "bottomk", "abs", "by", "without", "and", "or", "unless", "on",
    "ignoring", "bool", "group_left", "group_right", "offset",
}  # fmt: skip
SCRAPE_LABELS = {"le", "instance", "job", "pod", "namespace"}  # added by histograms or by Prometheus
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def registered() -> tuple[set[str], set[str]]:
    """(every sample name, every label name) that the gateway's metrics expose."""
    metrics = Metrics()
    names = {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))
    }
    labels = {
        label
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for label in value._labelnames
    }
    return names, labels


def promql_refs(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a PromQL expression refers to."""
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= set(re.findall(r"[A-Za-z_]\w*", group))
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", bare)
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*\b(?!\s*\()", bare))
    return words - PROMQL_WORDS, labels


def test_promql_refs_finds_names_and_labels() -> None:
    names, labels = promql_refs(
        'histogram_quantile(0.99, sum by (le, op) (rate(x_seconds_bucket{tier="hot"}[5m]))) / y > 0.5 and z'
    )
    assert names == {"x_seconds_bucket", "y", "z"} and labels == {"le", "op", "tier"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((CONF / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads((CONF / "grafana" / "strata-dashboard.json").read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_use_only_registered_metrics_and_labels(source: str) -> None:
    names, labels = registered()
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    assert exprs
    for expr in exprs:
        used_names, used_labels = promql_refs(expr)
        assert used_names, expr
        assert used_names <= names, (expr, used_names - names)
        assert used_labels <= labels | SCRAPE_LABELS, (expr, used_labels - labels - SCRAPE_LABELS)


def test_alert_rules_cover_the_required_conditions() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"page", "warn"} and rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
    expr = {name: " ".join(r["expr"].split()) for name, r in rules.items()}
    errors = expr["StrataUploadErrorRateHigh"]
    assert "upload_errors_total" in errors and "upload_requests_total" in errors and errors.endswith("> 0.01")
    assert expr["StrataUploadLatencyP99High"].startswith("histogram_quantile(0.99,")
    assert "upload_duration_seconds_bucket" in expr["StrataUploadLatencyP99High"]
    capacity = expr["StrataStorageCapacityHigh"]
    assert (
        "storage_used_bytes" in capacity
        and "storage_capacity_bytes" in capacity
        and capacity.endswith("> 0.8")
    )
    pool = expr["StrataMetadataPoolExhausted"]
    assert "metadata_pool_in_use" in pool and "metadata_pool_size" in pool
    assert expr["StrataBackendCircuitOpen"] == f"max(circuit_breaker_state) == {BREAKER_STATES['open']}"


def test_dashboard_is_importable() -> None:
    doc = json.loads((CONF / "grafana" / "strata-dashboard.json").read_text())
    assert doc["title"] and doc["uid"] and doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert (
            set(panel["gridPos"]) == {"h", "w", "x", "y"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
    shown = " ".join(dashboard_exprs())
    for metric in ("upload_errors_total", "concurrent_uploads", "dedup_ratio", "compression_ratio",
                   "storage_by_tier", "circuit_breaker_state", "metadata_pool_in_use"):  # fmt: skip
        assert metric in shown


def k8s() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((CONF / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def _env_names() -> set[str]:
    names = {"STRATA_KMS"}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            names.add(f"STRATA_{section.name}_{f.name}".upper())
    return names


def test_k8s_manifests_fit_together(tmp_path: Path) -> None:
    docs = k8s()
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    deploy, service, hpa, cm = (
        docs["Deployment"],
        docs["Service"],
        docs["HorizontalPodAutoscaler"],
        docs["ConfigMap"],
    )
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]
    assert port["containerPort"] == 9000 and service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"] for e in container["env"]}
    assert env <= _env_names(), env - _env_names()
    # The config file the container is told to read is the ConfigMap's, and it is valid.
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    toml = tmp_path / config_path.name
    toml.write_text(cm["data"][config_path.name])
    config = load_config(toml, env={})
    assert config.server.host == "0.0.0.0" and config.server.port == 9000
    assert config.redis.url and config.kafka.bootstrap and config.backend.endpoint
    # The HPA scales this Deployment on CPU and on uploads in flight.
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "concurrent_uploads"
    assert "concurrent_uploads" in registered()[0]
    comment = " ".join(line.lstrip("# ") for line in (CONF / "k8s" / "hpa.yaml").read_text().splitlines())
    assert "needs a custom-metrics adapter" in comment
