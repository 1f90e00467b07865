"""The deployment files cover every role, and their probes hit the real endpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ops.roles import ROLE_NAMES

DEPLOY = Path(__file__).parents[2] / "ops" / "deploy"
K8S = DEPLOY / "kubernetes"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_role_has_a_unit_a_compose_service_and_a_workload(role: str) -> None:
    unit = (DEPLOY / "systemd" / f"reconciler-{role}.service").read_text()
    assert f"reconciler run --role {role}\n" in unit
    assert f"reconciler-{role}.service" in (DEPLOY / "systemd" / "reconciler.target").read_text()
    assert f'command: ["run", "--role", "{role}"]' in (DEPLOY / "compose.yaml").read_text()
    workloads = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert f'args: ["run", "--role", "{role}"]' in workloads


def test_each_role_gets_its_own_metrics_port_under_systemd() -> None:
    ports = [re.search(r"RECONCILER_METRICS_ADDR=127.0.0.1:(\d+)", p.read_text())
             for p in (DEPLOY / "systemd").glob("*.service")]
    values = [m.group(1) for m in ports if m]
    assert len(values) == len(ports) and len(set(values)) == len(values)


def test_kubernetes_probes_are_wired_to_health_and_readiness() -> None:
    deployments = [doc for manifest in K8S.glob("*.yaml")
                   for doc in re.split(r"(?m)^---$", manifest.read_text())
                   if re.search(r"(?m)^kind: Deployment$", doc)]
    assert deployments
    for doc in deployments:  # each Deployment on its own, not the file as a whole
        assert "livenessProbe:\n            httpGet: {path: /healthz, port: metrics}" in doc
        assert "readinessProbe:\n            httpGet: {path: /readyz, port: metrics}" in doc
        assert "containerPort: 9464" in doc


def test_compose_redis_keeps_an_append_only_file() -> None:
    assert '"--appendonly", "yes"' in (DEPLOY / "compose.yaml").read_text()


def test_the_dashboard_queries_metrics_that_exist() -> None:
    from prometheus_client import REGISTRY

    import ops.health  # noqa: F401  (registers every metric)

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    known = {m.name + suffix for m in REGISTRY.collect() for suffix in ("", *suffixes.get(m.type, ()))}
    dashboard = json.loads((Path(__file__).parents[2] / "ops/grafana/dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\breconciler_[a-z_]+", expr):
            assert name in known, f"{name} in the dashboard is not a metric"
