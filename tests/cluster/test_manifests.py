"""The plain manifests install, and the operator's ServiceAccount has least privilege."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import kubectl

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
