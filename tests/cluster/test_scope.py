"""z2m touches only what is its own: watches, prunes and namespaces.

Against the real apiserver: foreign objects never reach the operator's child
watches (the label selector goes to the server), pruning spares look-alikes
that another owner controls, and an operator started with `--namespace` lists,
watches and reconciles nothing outside it, even beside another such operator,
and runs with nothing but the namespaced chart's permissions.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests import services
from tests.cluster import helpers as h
from tests.conftest import ROOT, eventually, kubectl
from z2m import builders, kube

pytestmark = pytest.mark.cluster
NAME = "shop"
FOREIGN = 200  # of each kind: ConfigMaps, Services, Deployments


def child_events(resource: str, ours: bool) -> float:
    value = REGISTRY.get_sample_value(
        "z2m_child_events_total", {"resource": resource, "ours": str(ours).lower()}
    )
    return value or 0.0


def foreign_labels(i: int) -> dict[str, str]:
    # Half look like ours to a client-side `part-of` check; none is managed by z2m.
    return {builders.MANAGED_BY: "helm", builders.PART_OF: NAME if i % 2 else "blog"}


def create_foreign_objects(api_client: ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    for i in range(FOREIGN):
        meta = {"name": f"foreign-{i}", "labels": foreign_labels(i)}
        core.create_namespaced_config_map(namespace, {"metadata": meta, "data": {"i": str(i)}})
        core.create_namespaced_service(
            namespace, {"metadata": meta, "spec": {"ports": [{"port": 80}]}}
        )
        pod = {"metadata": {"labels": {"foreign": str(i)}}}
        pod["spec"] = {"containers": [{"name": "c", "image": "example.invalid/c"}]}
        apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": meta,
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"foreign": str(i)}},
                    "template": pod,
                },
            },
        )


def test_foreign_objects_send_the_operator_no_events(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    touched = {"configmaps": "ConfigMap", "services": "Service", "deployments": "Deployment"}
    foreign_before = {r: child_events(r, ours=False) for r in touched}
    create_foreign_objects(api_client, namespace)

    # One watch stream per kind delivers events in order: once an event for an object
    # of ours, made after every foreign object, has arrived, theirs would have too.
    ours_before = {r: child_events(r, ours=True) for r in touched}
    mine = {o["kind"]: o for o in k.children(namespace, NAME)}
    for kind in touched.values():
        obj = mine[kind]
        k.client.resources.get(api_version=obj["apiVersion"], kind=kind).patch(
            name=obj["metadata"]["name"],
            namespace=namespace,
            body={"metadata": {"annotations": {"z2m.dev/touched": "yes"}}},
            content_type="application/merge-patch+json",
        )
    for resource in touched:
        eventually(lambda r=resource: child_events(r, ours=True) > ours_before[r], timeout=30)

    received = {r: child_events(r, ours=False) - foreign_before[r] for r in touched}
    assert received == dict.fromkeys(touched, 0.0), f"events for {FOREIGN} foreign each"


def test_pruning_spares_look_alikes_another_owner_controls(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    other = core.create_namespaced_config_map(namespace, {"metadata": {"name": "other-owner"}})
    ours = builders.labels(NAME, "edge")
    controller = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "other-owner",
        "uid": other.metadata.uid,
        "controller": True,
    }
    look_alikes = {
        "look-alike-no-owner": {"labels": ours},
        "look-alike-other-owner": {"labels": ours, "ownerReferences": [controller]},
    }
    for name, meta in look_alikes.items():
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, **meta}})

    h.set_stage(api_client, namespace, NAME, 2)
    h.wait_ready(api_client, namespace, NAME, 2)
    pruned = h.expected(3, NAME, namespace) - h.expected(2, NAME, namespace)
    assert pruned
    left = h.children(k, namespace, NAME)
    # The stage-3 objects went; the look-alikes, labelled like them, did not.
    assert not pruned & left
    assert {("ConfigMap", name) for name in look_alikes} <= left


# --- namespaced operators ---------------------------------------------------------------------


@pytest.fixture
def other_namespace(api_client: ApiClient) -> Iterator[str]:
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"z2m.dev/test": "true"}}})
    yield name
    with contextlib.suppress(kubernetes.client.ApiException):
        core.delete_namespace(name)


def test_listing_scaling_stages_stays_in_the_operators_namespaces(
    api_client: ApiClient, namespace: str, other_namespace: str
) -> None:
    h.create(api_client, namespace, h.scaling_stage("mine", 1))
    h.create(api_client, other_namespace, h.scaling_stage("theirs", 1))
    scoped = kube.Kube.connect(api_client, namespaces=(namespace,))
    names = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in scoped.list_scaling_stages()
    }
    assert names == {(namespace, "mine")}


class Operator:
    """`z2m run --namespace NS` as a subprocess, with its metrics on a free port."""

    def __init__(self, kubeconfig: str, namespace: str, logs: Path) -> None:
        self.namespace = namespace
        self.metrics_port = services.free_port()
        env = {
            **os.environ,
            "Z2M_RESYNC_SECONDS": "1",
            "Z2M_RETRY_SECONDS": "1",
            "Z2M_WATCH_TIMEOUT": "30",
        }
        env.pop("Z2M_NAMESPACES", None)
        self.log = logs.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "z2m.cli",
                "run",
                "--kubeconfig",
                kubeconfig,
                "--namespace",
                namespace,
                "--bind",
                "127.0.0.1",
                f"--health-port={services.free_port()}",
                f"--metrics-port={self.metrics_port}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def samples(self, metric: str) -> list[tuple[dict[str, str], float]]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return [
            (dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric
        ]

    def passes(self) -> float:
        return sum(v for _, v in self.samples("z2m_reconciles_total"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def two_operators(
    kubeconfig: str, namespace: str, other_namespace: str, tmp_path: Path
) -> Iterator[tuple[Operator, Operator]]:
    first = Operator(kubeconfig, namespace, tmp_path / "first.log")
    second = Operator(kubeconfig, other_namespace, tmp_path / "second.log")
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_two_namespaced_operators_leave_each_others_objects_alone(
    api_client: ApiClient, k: kube.Kube, two_operators: tuple[Operator, Operator]
) -> None:
    first, second = two_operators
    h.create(api_client, first.namespace, h.scaling_stage(NAME, 1))
    h.create(api_client, second.namespace, h.scaling_stage(NAME, 2))
    h.wait_ready(api_client, first.namespace, NAME, 1)
    h.wait_ready(api_client, second.namespace, NAME, 2)

    # Each operator re-checks every ScalingStage it lists every second: after three
    # more passes each, one that listed beyond its namespace would have reconciled it.
    for op in (first, second):
        start = op.passes()
        eventually(lambda o=op, s=start: o.passes() >= s + 3, timeout=60)

    for op in (first, second):
        reconciled = {labels["namespace"] for labels, _ in op.samples("z2m_stage")}
        assert reconciled == {op.namespace}
    assert h.children(k, first.namespace, NAME) == h.expected(1, NAME, first.namespace)
    assert h.children(k, second.namespace, NAME) == h.expected(2, NAME, second.namespace)


# --- the namespaced chart's permissions are enough -----------------------------------------


def helm_binary() -> str:
    if given := os.environ.get("Z2M_HELM"):
        return given
    out = subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh")], check=True, capture_output=True, text=True
    )
    return str(Path(out.stdout.strip()) / "helm")


@pytest.fixture
def namespaced_kubeconfig(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A kubeconfig with the token of the namespaced chart's ServiceAccount, and only its RBAC."""
    release = f"z2m-{namespace}"
    rendered = subprocess.run(
        [
            helm_binary(),
            "template",
            release,
            str(ROOT / "charts" / "z2m"),
            "--namespace",
            namespace,
            "--set",
            "scope=namespaced",
            "--set",
            f"watchNamespaces={{{namespace}}}",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HELM_CACHE_HOME": str(tmp_path), "HELM_CONFIG_HOME": str(tmp_path)},
    ).stdout
    rbac = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] not in ("Deployment", "Service", "ServiceMonitor")
    ]
    kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=yaml.safe_dump_all(rbac))
    token = kubectl("create", "token", release, "-n", namespace, kubeconfig=kubeconfig).stdout
    config = yaml.safe_load(Path(kubeconfig).read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.strip()}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield str(path)
    for kind in ("clusterrolebinding", "clusterrole"):
        kubectl("delete", kind, release, "--ignore-not-found", kubeconfig=kubeconfig)


def test_the_namespaced_charts_permissions_are_enough_to_run_the_operator(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    namespaced_kubeconfig: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "operator.log"
    op = Operator(namespaced_kubeconfig, namespace, log)
    try:
        h.create(api_client, namespace, h.scaling_stage(NAME, 3))
        h.wait_ready(api_client, namespace, NAME, 3)
        h.set_stage(api_client, namespace, NAME, 2)  # a demotion: applies and deletes
        h.wait_ready(api_client, namespace, NAME, 2)
        start = op.passes()
        eventually(lambda: op.passes() >= start + 3, timeout=60)  # periodic re-checks too
    finally:
        op.stop()
    assert h.children(k, namespace, NAME) == h.expected(2, NAME, namespace)
    text = log.read_text()
    assert "Forbidden" not in text and "403" not in text, text[-3000:]
