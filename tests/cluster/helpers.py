"""Small helpers for operator tests against a real apiserver."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient

from tests.conftest import ROOT, _built_kubectl, eventually, kubectl
from z2m import api, builders, kube

APP_IMAGE = "z2m/sample-app:0.1.0"

GROUP_VERSION = f"{api.GROUP}/{api.VERSION}"


# A small app CPU request, for the real-pod cluster: stage 5, its HPA's extra pods, a
# rollout's surge pod and kind's own control plane must fit one node of two cores (the
# HPA's target is relative to the request). 40m, not 50m: while a move to or from stage 5
# drains one job source, RabbitMQ, its workers, Kafka and its consumer group run side by
# side, and with 50m app and worker pods that peak did not fit (the app's rollout waited
# for CPU that only the retiring source frees, and the source waited for the rollout).
SMALL_APP = {
    "resources": {"requests": {"cpu": "40m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}}
}


def scaling_stage(name: str, stage: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"stage": stage, **spec},
    }


def custom(api_client: ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client)


def create(api_client: ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = custom(api_client).create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, body
    )
    return result


def get(api_client: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(api_client).get_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name
    )
    return result


def set_stage(api_client: ApiClient, namespace: str, name: str, stage: int) -> None:
    custom(api_client).patch_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"spec": {"stage": stage}}
    )


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def wait_ready(
    api_client: ApiClient, namespace: str, name: str, stage: int, timeout: float = 90
) -> dict[str, Any]:
    """Wait until the ScalingStage reports Ready at `stage` for its current generation."""

    def ready() -> dict[str, Any] | None:
        obj = get(api_client, namespace, name)
        st = obj.get("status") or {}
        ok = condition(obj, "Ready")
        if (
            st.get("stage") == stage
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and ok is not None
            and ok["status"] == "True"
        ):
            return obj
        return None

    result: dict[str, Any] = eventually(ready, timeout=timeout)
    return result


def children(k: kube.Kube, namespace: str, name: str) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in k.children(namespace, name)}


def expected(stage: int, name: str, namespace: str, **spec: Any) -> set[tuple[str, str]]:
    from z2m import plan

    p = plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name=name, namespace=namespace)
    return {
        (o["kind"], o["metadata"]["name"])
        for o in builders.build(p, builders.Owner(name, "x"))
        if (o["apiVersion"], o["kind"]) in builders.PRUNABLE
    }


def claims(api_client: ApiClient, namespace: str) -> dict[str, str]:
    core = kubernetes.client.CoreV1Api(api_client)
    return {
        c.metadata.name: c.metadata.uid
        for c in core.list_namespaced_persistent_volume_claim(namespace).items
    }


def versions(k: kube.Kube, namespace: str, name: str) -> dict[tuple[str, str], str]:
    return {
        (o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
        for o in k.children(namespace, name)
    }


# --- real pods (kind) ----------------------------------------------------------------------


@contextlib.contextmanager
def helm_namespace(api_client: ApiClient, kubeconfig: str, prefix: str) -> Iterator[str]:
    """A namespace enforcing `restricted`, with z2m installed by its chart, watching only it."""
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    enforce = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace({"metadata": {"name": name, "labels": enforce}})
    release = f"z2m-{name}"
    helm = str(Path(_built_kubectl()).parent / "helm")
    argv = [helm, "--kubeconfig", kubeconfig, "install", release, str(ROOT / "charts" / "z2m")]
    argv += ["-n", name, "--set", f"watchNamespaces={{{name}}}"]
    argv += ["--set", f"appNamespaces={{{name}}}", "--set", f"fullnameOverride={release}"]
    argv += ["--skip-crds", "--wait", "--timeout", "5m"]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    try:
        yield name
    finally:
        subprocess.run([helm, "--kubeconfig", kubeconfig, "uninstall", release, "-n", name])
        core.delete_namespace(name)
        # The next real-pod test starts on a quiet node, not beside dozens of pods draining.
        eventually(lambda: not _namespace_exists(core, name), timeout=600)


def _namespace_exists(core: kubernetes.client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def restricted_pod(name: str, command: list[str], cpu: str = "50m") -> dict[str, Any]:
    """A sample-app pod that passes the `restricted` level, running `command`."""
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": name,
                    "image": APP_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def load_pod(app: str, name: str, rps: int, *, journal: bool) -> dict[str, Any]:
    """A load generator pod against the app's Service; with `journal`, one JSON line per result."""
    args = ["python", "-m", "sample_app.load", "--url", f"http://{app}-app", "--rps", str(rps)]
    args += ["--duration", "7200", "--users", "5", "--read-ratio", "0.8"]
    return restricted_pod(name, args + (["--journal"] if journal else []))


def journal(kubeconfig: str, namespace: str, pod: str = "load") -> list[dict[str, Any]]:
    """The load pod's journal: {"post": id, "t": ...} per acknowledged write, {"error": ...}."""
    out = kubectl("logs", "-n", namespace, pod, kubeconfig=kubeconfig, check=False)
    events = []
    for line in out.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def pod_exec(kubeconfig: str, namespace: str, pod: str, *argv: str) -> str:
    """Run a command in a pod; its stdout, stripped (empty when it failed)."""
    out = kubectl("exec", "-n", namespace, pod, "--", *argv, kubeconfig=kubeconfig, check=False)
    return str(out.stdout).strip()


def psql(kubeconfig: str, namespace: str, pod: str, sql: str) -> str:
    """One query as the app's role, over the pod's local socket."""
    return pod_exec(kubeconfig, namespace, pod, "psql", "-U", "app", "-d", "app", "-tAc", sql)


def signal_container(
    api_client: ApiClient, namespace: str, pod: str, container: str, signal: str
) -> None:
    """Send `signal` to every process of a container, from its node (STOP freezes it).

    A frozen container is a hung machine: its processes hold their sockets and files but
    answer nothing, and its readiness probe fails. Unlike a crash, the kubelet does not
    restart it, so what happens next is what the rest of the system does about it.
    kind's node is a container of the engine that runs kind (podman here, docker
    elsewhere), with crictl inside.
    """
    core = kubernetes.client.CoreV1Api(api_client)
    node = core.read_namespaced_pod(pod, namespace).spec.node_name
    engine = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "docker")
    labels = f"--label io.kubernetes.pod.name={pod} --label io.kubernetes.pod.namespace={namespace}"
    script = (
        f"id=$(crictl ps -q --name {container} {labels}) && "
        "pid=$(crictl inspect -o go-template --template '{{.info.pid}}' $id) && "
        "ns=$(readlink /proc/$pid/ns/pid) && for p in /proc/[0-9]*; do "
        '[ "$(readlink $p/ns/pid 2>/dev/null)" = "$ns" ] && '
        f'kill -{signal} "${{p#/proc/}}" 2>/dev/null; done; true'
    )
    subprocess.run([engine, "exec", node, "sh", "-c", script], check=True, capture_output=True)
