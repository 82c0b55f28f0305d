"""The plain manifests install, and the operator's ServiceAccount has least privilege.

Both installs: cluster-wide (`manifests/`) and namespaced (`manifests/namespaced/`,
the chart's `scope: namespaced`: a Role per served namespace, no cluster-wide write).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import helpers as h
from tests.cluster.test_scope import Operator
from tests.conftest import eventually, kubectl
from z2m import kube

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SA = "system:serviceaccount:z2m-system:z2m-operator"


@pytest.fixture(scope="module")
def installed(kubeconfig: str) -> str:
    out = kubectl("apply", "--server-side", "-f", str(ROOT / "manifests"), kubeconfig=kubeconfig)
    assert "deployment.apps/z2m-operator serverside-applied" in out.stdout
    return kubeconfig


def can(kubeconfig: str, *args: str) -> bool:
    out = kubectl("auth", "can-i", "--as", SA, *args, kubeconfig=kubeconfig, check=False)
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(
    "args",
    [
        ("patch", "deployments.apps", "-n", "shop"),
        ("delete", "statefulsets.apps", "-n", "shop"),
        ("create", "horizontalpodautoscalers.autoscaling", "-n", "shop"),
        ("patch", "scalingstages.z2m.dev/status", "-n", "shop"),
        ("watch", "scalingstages.z2m.dev", "--all-namespaces"),
        ("create", "secrets", "-n", "shop"),
        ("create", "persistentvolumeclaims", "-n", "shop"),
        ("create", "events", "-n", "shop"),
        ("get", "secrets", "-n", "default"),
        ("create", "leases.coordination.k8s.io", "-n", "z2m-system"),
        ("update", "leases.coordination.k8s.io/z2m-operator", "-n", "z2m-system"),
    ],
)
def test_the_operator_may_do_its_job(installed: str, args: tuple[str, ...]) -> None:
    assert can(installed, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("*", "*", "--all-namespaces"),
        ("get", "secrets", "-n", "kube-system"),
        ("list", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", "shop"),
        ("delete", "persistentvolumeclaims", "-n", "shop"),
        ("delete", "secrets", "-n", "default"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("create", "pods", "-n", "shop"),
        ("delete", "nodes"),
        ("update", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system"),
        ("update", "leases.coordination.k8s.io/someone-else", "-n", "z2m-system"),
        ("create", "leases.coordination.k8s.io", "-n", "shop"),
    ],
)
def test_the_operator_may_not_go_beyond_it(installed: str, args: tuple[str, ...]) -> None:
    assert not can(installed, *args)


def test_the_operator_runs_two_replicas_behind_a_lease_and_rolls(installed: str) -> None:
    out = kubectl(
        "get",
        "deployment",
        "z2m-operator",
        "-n",
        "z2m-system",
        "-o",
        "jsonpath={.spec.replicas} {.spec.strategy.type} {.spec.template.spec.containers[0].args}",
        kubeconfig=installed,
    )
    replicas, strategy, args = out.stdout.split(" ", 2)
    assert (replicas, strategy) == ("2", "RollingUpdate")
    assert "--leader-elect" in args


def test_the_operator_deployment_runs_as_non_root_with_a_read_only_root(installed: str) -> None:
    out = kubectl(
        "get",
        "deployment",
        "z2m-operator",
        "-n",
        "z2m-system",
        "-o",
        "jsonpath={.spec.template.spec.securityContext.runAsNonRoot} "
        "{.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem}",
        kubeconfig=installed,
    )
    assert out.stdout == "true true"


# --- the namespaced install: manifests/namespaced/ -------------------------------------------

NAMESPACED = ROOT / "manifests" / "namespaced"
CLUSTER_ONLY = {"namespaces", "customresourcedefinitions", "storageclasses", "nodes"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for f in sorted(path.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def test_the_namespaced_role_has_the_cluster_roles_rules_and_no_cluster_wide_write() -> None:
    cluster, namespaced = docs(ROOT / "manifests"), docs(NAMESPACED)
    wide = one(cluster, "ClusterRole", "z2m-operator")["rules"]
    per_namespace = [r for r in wide if not CLUSTER_ONLY & set(r["resources"])]
    for rule in per_namespace:
        if rule["resources"] == ["secrets"]:
            rule["verbs"] = ["create", "get", "patch"]  # the credentials ClusterRole's, bound here
    assert one(namespaced, "Role", "z2m-operator")["rules"] == per_namespace
    reads = one(namespaced, "ClusterRole", "z2m-operator-reads")["rules"]
    assert reads == [r for r in wide if CLUSTER_ONLY & set(r["resources"])]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in reads)
    # The operator's Deployment is the cluster-wide one with the namespaces as arguments.
    wide_op = one(cluster, "Deployment", "z2m-operator")
    scoped_op = one(namespaced, "Deployment", "z2m-operator")
    args = scoped_op["spec"]["template"]["spec"]["containers"][0].pop("args")
    assert args == [*wide_op["spec"]["template"]["spec"]["containers"][0].pop("args"),
                    "--namespace=shop"]  # fmt: skip
    assert scoped_op == wide_op
    # Both keep a follower through a drain: a budget over exactly the operator's pods.
    for objs, op in ((cluster, wide_op), (namespaced, scoped_op)):
        budget = one(objs, "PodDisruptionBudget", "z2m-operator")
        assert budget["spec"] == {"maxUnavailable": 1, "selector": op["spec"]["selector"]}


def rewritten(operator_ns: str, app_ns: str, suffix: str) -> list[dict[str, Any]]:
    """manifests/namespaced/ with its namespaces, and its cluster-wide names, made unique."""
    out = []
    for d in docs(NAMESPACED):
        if d["kind"] == "Namespace":
            continue
        meta = d["metadata"]
        if "namespace" in meta:
            meta["namespace"] = app_ns if d["kind"] in ("Role", "RoleBinding") else operator_ns
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            meta["name"] += suffix
        if d["kind"] == "ClusterRoleBinding":
            d["roleRef"]["name"] += suffix
        for subject in d.get("subjects") or []:
            subject["namespace"] = operator_ns
        if d["kind"] == "Deployment":
            continue  # its pod cannot run on fake nodes; the tests run `z2m run` as this SA
        out.append(d)
    return out


@pytest.fixture(scope="module")
def namespaced_install(kubeconfig: str) -> Iterator[tuple[str, str, str]]:
    suffix = f"-{uuid.uuid4().hex[:6]}"
    operator_ns, app_ns = f"z2m-op{suffix}", f"shop{suffix}"
    for ns in (operator_ns, app_ns):
        kubectl("create", "namespace", ns, kubeconfig=kubeconfig)
    objs = rewritten(operator_ns, app_ns, suffix)
    kubectl("apply", "--server-side", "-f", "-", kubeconfig=kubeconfig,
            stdin=yaml.safe_dump_all(objs))  # fmt: skip
    yield operator_ns, app_ns, suffix
    for name in ("clusterrolebinding", "clusterrole"):
        kubectl("delete", name, f"z2m-operator-reads{suffix}", "--ignore-not-found",
                kubeconfig=kubeconfig)  # fmt: skip
    for ns in (operator_ns, app_ns):
        kubectl("delete", "namespace", ns, "--wait=false", kubeconfig=kubeconfig)


@pytest.mark.parametrize(
    ("allowed", "args"),
    [
        (True, ("patch", "deployments.apps", "-n", "{app}")),
        (True, ("delete", "statefulsets.apps", "-n", "{app}")),
        (True, ("watch", "scalingstages.z2m.dev", "-n", "{app}")),
        (True, ("patch", "scalingstages.z2m.dev/status", "-n", "{app}")),
        (True, ("create", "secrets", "-n", "{app}")),
        (True, ("get", "secrets", "-n", "{app}")),
        (True, ("get", "storageclasses.storage.k8s.io")),
        (False, ("create", "deployments.apps", "-n", "kube-system")),
        (False, ("create", "deployments.apps", "-n", "default")),
        (False, ("create", "secrets", "-n", "default")),
        (False, ("list", "scalingstages.z2m.dev", "--all-namespaces")),
        (False, ("list", "secrets", "-n", "{app}")),
        (False, ("delete", "secrets", "-n", "{app}")),
        (False, ("delete", "persistentvolumeclaims", "-n", "{app}")),
        (False, ("create", "clusterrolebindings.rbac.authorization.k8s.io")),
        (False, ("*", "*", "--all-namespaces")),
    ],
)
def test_the_namespaced_manifests_grant_writes_only_in_the_served_namespace(
    kubeconfig: str, namespaced_install: tuple[str, str, str], allowed: bool, args: tuple[str, ...]
) -> None:
    operator_ns, app_ns, _ = namespaced_install
    sa = f"system:serviceaccount:{operator_ns}:z2m-operator"
    out = kubectl("auth", "can-i", "--as", sa, *(a.format(app=app_ns) for a in args),
                  kubeconfig=kubeconfig, check=False)  # fmt: skip
    assert (out.stdout.strip() == "yes") == allowed


def test_the_namespaced_manifests_permissions_are_enough_to_run_the_operator(
    kubeconfig: str, namespaced_install: tuple[str, str, str], tmp_path: Path
) -> None:
    operator_ns, app_ns, _ = namespaced_install
    token = kubectl("create", "token", "z2m-operator", "-n", operator_ns, kubeconfig=kubeconfig)
    config = yaml.safe_load(Path(kubeconfig).read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.stdout.strip()}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    scoped = tmp_path / "operator.kubeconfig"
    scoped.write_text(yaml.safe_dump(config))
    api_client = kube.load_config(kubeconfig)
    log = tmp_path / "operator.log"
    op = Operator(str(scoped), app_ns, log)
    try:
        h.create(api_client, app_ns, h.scaling_stage("shop", 3))
        h.wait_ready(api_client, app_ns, "shop", 3)
        h.set_stage(api_client, app_ns, "shop", 2)  # a demotion: applies and deletes
        h.wait_ready(api_client, app_ns, "shop", 2)
        start = op.passes()
        eventually(lambda: op.passes() >= start + 3, timeout=60)  # periodic re-checks too
    finally:
        op.stop()
    k = kube.Kube.connect(api_client)
    assert h.children(k, app_ns, "shop") == h.expected(2, "shop", app_ns)
    text = log.read_text()
    # "403" alone would also match a log line's milliseconds (04:57:54,403).
    assert not re.search(r"Forbidden|\b(status|code|HTTP)\W{0,3}403\b", text), text[-3000:]
