"""Stage 5's monitoring against a real apiserver, both ways.

Without the Prometheus Operator, z2m runs its own Prometheus. Its pods are fake
here, so the test plays the pod: it takes a token of the ServiceAccount z2m made,
runs the discovery script from the ConfigMap z2m wrote against the apiserver,
and starts the Debian Prometheus with that ConfigMap's configuration, which must
then name the app's and workers' pods as its targets and load the alert rules.
(The scrapes themselves fail: the pods' addresses are fake.)

With the Prometheus Operator's CRDs installed (from its Go module), z2m writes a
PodMonitor and a PrometheusRule, which the apiserver validates against the
upstream schemas, and runs no Prometheus.

The promotion loop asks z2m's own Prometheus when no URL is given, and only
where z2m runs one.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests import prometheus as prom
from tests.cluster import helpers as h
from tests.conftest import ROOT, eventually, kubectl
from tests.services import free_port
from z2m import api, builders, kube, plan

pytestmark = pytest.mark.cluster
NAME = "shop"
CRDS = ("podmonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")


def install_crds(kubeconfig: str) -> None:
    paths = subprocess.run(
        [str(ROOT / "hack" / "prometheus-operator-crds.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(paths) == len(CRDS), paths
    for path in paths:
        kubectl("apply", "--server-side", "-f", path, kubeconfig=kubeconfig)
    for crd in CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", kubeconfig=kubeconfig)


def remove_crds(kubeconfig: str, api_client: ApiClient) -> None:
    for crd in CRDS:
        kubectl("delete", f"crd/{crd}", "--wait=true", "--ignore-not-found", kubeconfig=kubeconfig)
    # The client library shares its discovery cache between clients of one apiserver,
    # through a file: rewrite it, so that the next test's clients find no such kinds.
    kube.Kube.connect(api_client).client.resources.invalidate_cache()


@pytest.fixture
def prometheus_operator_crds(kubeconfig: str, api_client: ApiClient) -> Iterator[None]:
    """The Prometheus Operator's PodMonitor and PrometheusRule CRDs, for one test."""
    install_crds(kubeconfig)
    yield
    remove_crds(kubeconfig, api_client)


@pytest.fixture
def z2m(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings for the operator fixture: the promotion loop lists every half second."""
    monkeypatch.setenv("Z2M_PROMOTION_TICK", "0.5")


def configmap(api_client: ApiClient, namespace: str, name: str) -> dict[str, str]:
    cm = kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    return dict(cm.data)


def scraped_pods(api_client: ApiClient, namespace: str) -> dict[str, str]:
    """The app's and workers' pods: name -> address of their `http` port."""
    out = {}
    for pod in kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(namespace).items:
        if pod.metadata.labels.get(builders.COMPONENT) not in builders.SCRAPED:
            continue
        (port,) = [p for c in pod.spec.containers for p in c.ports or [] if p.name == "http"]
        out[pod.metadata.name] = f"{pod.status.pod_ip}:{port.container_port}"
    return out


def discover(
    api_client: ApiClient, script: Path, env: dict[str, str], token: Path, namespace: str
) -> subprocess.CompletedProcess[str]:
    """Run the discovery sidecar's script once, as the pod would, against the apiserver."""
    config = api_client.configuration
    return subprocess.run(
        ["/bin/sh", str(script)],
        env={
            "PATH": os.environ["PATH"],
            **env,
            "SD_ONCE": "1",
            "SD_API": config.host,
            "SD_CA_FILE": config.ssl_ca_cert,
            "SD_NAMESPACE": namespace,
            "SD_TOKEN_FILE": str(token),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stage_5_prometheus_finds_the_app_and_worker_pods_with_its_own_service_account(
    api_client: ApiClient, namespace: str, operator: Any, tmp_path: Path
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 5))
    h.wait_ready(api_client, namespace, NAME, 5)
    name = builders.child(NAME, "prometheus")
    files = configmap(api_client, namespace, name)
    sts = kubernetes.client.AppsV1Api(api_client).read_namespaced_stateful_set(name, namespace)
    (sidecar,) = [c for c in sts.spec.template.spec.containers if c.name == "discovery"]
    env = {e.name: e.value for e in sidecar.env}
    env["SD_FILE"] = str(tmp_path / "sd" / "targets.json")
    script = tmp_path / "prometheus-sd.sh"
    script.write_text(files["prometheus-sd.sh"])
    account = sts.spec.template.spec.service_account_name
    token = kubernetes.client.CoreV1Api(api_client).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 600}}
    )
    token_file = tmp_path / "token"
    token_file.write_text(token.status.token)

    done = discover(api_client, script, env, token_file, namespace)
    assert done.returncode == 0, done.stderr
    targets = json.loads(Path(env["SD_FILE"]).read_text())
    pods = scraped_pods(api_client, namespace)
    assert len(pods) >= 6  # four app pods (the HPA's minimum) and two Kafka consumers
    assert {t["labels"]["pod"]: t["targets"][0] for t in targets} == pods
    assert {t["labels"]["namespace"] for t in targets} == {namespace}
    # Stage 5 streams its jobs: its workers are Kafka's consumer group, RabbitMQ's are gone.
    assert {t["labels"]["component"] for t in targets} == {"app", "stream-worker"}

    # Its Role is this namespace's alone: elsewhere the listing is refused, the list kept.
    before = Path(env["SD_FILE"]).read_text()
    refused = discover(api_client, script, env, token_file, "default")
    assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr
    assert Path(env["SD_FILE"]).read_text() == before

    # The Debian Prometheus takes the configuration as z2m wrote it, paths moved to tmp.
    config = json.loads(files["prometheus.yml"])
    (alerts := tmp_path / "alerts.yml").write_text(files["alerts.yml"])
    config["rule_files"] = [str(alerts)]
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [env["SD_FILE"]]
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    server = prom.Prometheus(
        port=free_port(),
        config=tmp_path / "prometheus.yml",
        data=tmp_path / "data",
        log=tmp_path / "prometheus.log",
    )
    server.start()
    try:

        def active() -> dict[str, str] | None:
            body = httpx.get(f"{server.url}/api/v1/targets", timeout=5).json()
            found = {
                t["labels"]["pod"]: t["labels"]["instance"]
                for t in body["data"]["activeTargets"]
                if t["labels"].get("namespace") == namespace
            }
            return found if found == pods else None

        eventually(active, timeout=30)
        rules = httpx.get(f"{server.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} == {
            "Z2MHighLatency",
            "Z2MHighErrorRate",
            "Z2MQueueBacklog",
        }
    finally:
        server.stop()


def label_selector(selector: dict[str, Any]) -> str:
    terms = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In"
        terms.append(f"{e['key']} in ({','.join(e['values'])})")
    return ",".join(terms)


def test_where_the_prometheus_operator_is_served_stage_5_writes_its_kinds_and_runs_none(
    api_client: ApiClient,
    namespace: str,
    prometheus_operator_crds: None,
    z2m: None,
    operator: Any,
) -> None:
    labels = {"release": "kube-prometheus-stack"}
    body = h.scaling_stage(NAME, 5, monitoring={"labels": labels}, promotion={"mode": "recommend"})
    h.create(api_client, namespace, body)
    h.wait_ready(api_client, namespace, NAME, 5)
    spec = api.ScalingStageSpec.model_validate(body["spec"])
    the_plan = plan.resolve(spec, name=NAME, namespace=namespace)
    wanted = {
        (o["kind"], o["metadata"]["name"])
        for o in builders.build(the_plan, builders.Owner(NAME, "x"), prometheus_operator=True)
    }
    children = h.children(kube.Kube.connect(api_client), namespace, NAME)
    assert children == wanted
    assert {("PodMonitor", "shop-monitoring"), ("PrometheusRule", "shop-monitoring")} <= children
    assert not {k for k in children if k[1] == "shop-prometheus"}

    custom = h.custom(api_client)
    group, version = builders.MONITORING_API.split("/")
    monitor = custom.get_namespaced_custom_object(
        group, version, namespace, "podmonitors", "shop-monitoring"
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=label_selector(monitor["spec"]["selector"])
    )
    assert {p.metadata.name for p in selected.items} == set(scraped_pods(api_client, namespace))
    rule = custom.get_namespaced_custom_object(
        group, version, namespace, "prometheusrules", "shop-monitoring"
    )
    assert rule["spec"]["groups"] == builders.alert_rules(the_plan)

    # z2m runs no Prometheus here, and was given no URL: it says so rather than guess one.
    def no_prometheus() -> dict[str, Any] | None:
        c = h.condition(h.get(api_client, namespace, NAME), "MetricsAvailable")
        return c if c and (c["status"], c["reason"]) == ("False", "NoPrometheus") else None

    eventually(no_prometheus, timeout=30)


def test_without_a_url_promotion_asks_z2ms_own_prometheus_once_stage_5_runs_it(
    api_client: ApiClient, namespace: str, z2m: None, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, promotion={"mode": "recommend"}))
    h.wait_ready(api_client, namespace, NAME, 4)

    def metrics(reason: str, text: str = "") -> Any:
        def check() -> dict[str, Any] | None:
            c = h.condition(h.get(api_client, namespace, NAME), "MetricsAvailable")
            ok = c and (c["status"], c["reason"]) == ("False", reason) and text in c["message"]
            return c if ok else None

        return check

    eventually(metrics("NoPrometheus"), timeout=30)
    h.set_stage(api_client, namespace, NAME, 5)
    # The Service's DNS name resolves only inside the cluster: unreachable from here, but
    # the message names the address the loop chose.
    url = f"http://shop-prometheus.{namespace}.svc:9090/api/v1/query"
    eventually(metrics("PrometheusUnreachable", url), timeout=60)


def test_children_are_still_listed_after_the_prometheus_operators_crds_are_removed(
    api_client: ApiClient, kubeconfig: str, namespace: str
) -> None:
    install_crds(kubeconfig)
    try:
        client = kube.Kube.connect(api_client)
        assert client.prometheus_operator()
        assert client.children(namespace, NAME) == []  # discovery now names the kinds
    finally:
        remove_crds(kubeconfig, api_client)
    # This client's discovery is stale: listing a kind that is gone answers 404.
    assert client.children(namespace, NAME) == []
    assert not client.prometheus_operator()
