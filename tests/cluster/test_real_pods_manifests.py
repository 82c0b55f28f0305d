"""The plain-manifests install on real pods: `kubectl apply -f manifests/`, then a stage.

The Helm install is what the walk uses; this is the other way the README offers. The
operator runs from its image in `z2m-system`, watching every namespace, and brings an
application namespace (given its credentials RoleBinding, as the manifests say) to
stage 2 with pods that answer a write and a read over HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import ROOT, kubectl
from z2m import kube

# The first kind test also pays for the session's cluster, image builds and loads.
pytestmark = [pytest.mark.cluster, pytest.mark.kind, pytest.mark.timeout(3600)]
NAME = "plain"


@pytest.fixture(scope="module")
def installed(kind_kubeconfig: str) -> Iterator[ApiClient]:
    """manifests/ applied as a user would; removed afterwards, the CRD kept."""
    kubectl("apply", "--server-side", "-f", str(ROOT / "manifests"), kubeconfig=kind_kubeconfig)
    kubectl(
        "rollout",
        "status",
        "-n",
        "z2m-system",
        "deployment/z2m-operator",
        "--timeout=300s",
        kubeconfig=kind_kubeconfig,
    )
    yield kube.load_config(kind_kubeconfig)
    for f in ("03-operator.yaml", "02-rbac.yaml", "01-namespace.yaml"):
        kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            str(ROOT / "manifests" / f),
            kubeconfig=kind_kubeconfig,
            check=False,
        )


def test_manifests_install_brings_an_app_to_stage_2_on_real_pods(
    installed: ApiClient, kind_kubeconfig: str
) -> None:
    ns = f"plain-{uuid.uuid4().hex[:6]}"
    core = kubernetes.client.CoreV1Api(installed)
    core.create_namespace({"metadata": {"name": ns}})
    try:
        # The manifests' own per-namespace RoleBinding, pointed at this namespace.
        with (ROOT / "manifests" / "02-rbac.yaml").open() as f:
            binding = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "RoleBinding")
        binding["metadata"]["namespace"] = ns
        kubectl("apply", "-f", "-", kubeconfig=kind_kubeconfig, stdin=json.dumps(binding))
        h.create(installed, ns, h.scaling_stage(NAME, 2))
        h.wait_ready(installed, ns, NAME, 2, timeout=600)
        code = (
            "import httpx\n"
            f"r = httpx.post('http://{NAME}-app/api/users', json={{'name': 'plain'}})\n"
            "print(r.status_code)\n"
            f"print(httpx.get('http://{NAME}-app/api/users/1/posts').status_code)\n"
        )
        out = kubectl(
            *("run", "ask", "-n", ns, "--image=z2m/sample-app:0.1.0", "--restart=Never"),
            *("--image-pull-policy=IfNotPresent", "--rm", "-i", "--quiet", "--command", "--"),
            *("python", "-c", code),
            kubeconfig=kind_kubeconfig,
        )
        assert out.stdout.split() == ["201", "200"], out.stdout + out.stderr
        users = kubectl(
            *("exec", "-n", ns, f"{NAME}-db-0", "--", "psql", "-U", "app", "-d", "app"),
            *("-tAc", "SELECT name FROM users"),
            kubeconfig=kind_kubeconfig,
        )
        assert "plain" in users.stdout.split()
    finally:
        core.delete_namespace(ns)
