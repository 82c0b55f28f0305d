"""The ladder on real pods: a kind cluster, our images, the operator installed by Helm.

The sample app serves a read-heavy mix with writes from a load generator pod for the
whole walk, through the app's Service. After the walk every write the app acknowledged
must be in the primary, and the failed requests of each transition are printed.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import ROOT, _built_kubectl, eventually, kubectl
from z2m import kube

pytestmark = [pytest.mark.cluster, pytest.mark.kind]
NAME = "shop"
WALK = [1, 2, 3, 4, 5, 4, 3, 2, 1]


@pytest.fixture(scope="module")
def kind_api(kind_kubeconfig: str) -> ApiClient:
    return kube.load_config(kind_kubeconfig)


@pytest.fixture(scope="module")
def app_namespace(kind_api: ApiClient, kind_kubeconfig: str) -> Iterator[str]:
    """A namespace with z2m installed from its Helm chart, watching only it."""
    core = kubernetes.client.CoreV1Api(kind_api)
    name = f"walk-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    release = f"z2m-{name}"
    helm = str(_bin("helm"))
    argv = [helm, "--kubeconfig", kind_kubeconfig, "install", release, str(ROOT / "charts" / "z2m")]
    argv += [
        "-n",
        name,
        "--set",
        f"watchNamespaces={{{name}}}",
        "--set",
        f"appNamespaces={{{name}}}",
    ]
    argv += ["--set", f"fullnameOverride={release}", "--skip-crds", "--wait", "--timeout", "5m"]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    yield name
    subprocess.run([helm, "--kubeconfig", kind_kubeconfig, "uninstall", release, "-n", name])
    core.delete_namespace(name)


def _bin(name: str) -> Path:
    return Path(_built_kubectl()).parent / name


def _psql(kubeconfig: str, namespace: str, sql: str, pod: str = f"{NAME}-db-0") -> str:
    out = kubectl(
        "exec",
        "-n",
        namespace,
        pod,
        "--",
        "psql",
        "-U",
        "app",
        "-d",
        "app",
        "-tAc",
        sql,
        kubeconfig=kubeconfig,
        check=False,
    )
    return out.stdout.strip()


def _journal(kubeconfig: str, namespace: str) -> list[dict[str, Any]]:
    out = kubectl("logs", "-n", namespace, "load", kubeconfig=kubeconfig, check=False)
    events = []
    for line in out.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def test_the_walk_under_live_traffic_loses_no_acknowledged_write(
    kind_api: ApiClient, kind_kubeconfig: str, app_namespace: str
) -> None:
    ns, kc = app_namespace, kind_kubeconfig
    h.create(kind_api, ns, h.scaling_stage(NAME, WALK[0]))
    h.wait_ready(kind_api, ns, NAME, WALK[0], timeout=600)
    kubectl(
        "run",
        "load",
        "-n",
        ns,
        "--image=z2m/sample-app:0.1.0",
        "--restart=Never",
        "--image-pull-policy=IfNotPresent",
        "--command",
        "--",
        "python",
        "-m",
        "sample_app.load",
        "--url",
        f"http://{NAME}-app",
        "--rps",
        "8",
        "--duration",
        "7200",
        "--users",
        "5",
        "--read-ratio",
        "0.8",
        "--journal",
        kubeconfig=kc,
    )
    eventually(lambda: any("post" in e for e in _journal(kc, ns)), timeout=300)
    windows: list[tuple[str, float, float]] = []
    for before, stage in itertools.pairwise(WALK):
        started = time.time()
        h.set_stage(kind_api, ns, NAME, stage)
        h.wait_ready(kind_api, ns, NAME, stage, timeout=900)
        # Traffic keeps flowing a little after Ready, so late failures are counted too.
        mark = len([e for e in _journal(kc, ns) if "post" in e])
        eventually(lambda m=mark: len([e for e in _journal(kc, ns) if "post" in e]) > m + 3)
        windows.append((f"{before}->{stage}", started, time.time()))
        if stage == 3 and before == 2:
            replicas = _psql(
                kc, ns, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
            assert replicas == "1", f"stage 3's read replica does not stream: {replicas!r}"
    journal = _journal(kc, ns)
    acked = sorted({int(e["post"]) for e in journal if "post" in e})
    errors = [e for e in journal if "error" in e]
    print(f"\nreal-pod walk {WALK}: {len(acked)} acknowledged writes")
    for label, start, end in windows:
        failed = [e for e in errors if start <= e["t"] <= end]
        kinds = sorted({e["error"] for e in failed})
        print(f"  {label}: {end - start:5.0f} s, {len(failed)} failed requests {kinds}")
    outside = [e for e in errors if not any(s <= e["t"] <= t for _, s, t in windows)]
    print(f"  between transitions: {len(outside)} failed requests")
    stored = _psql(kc, ns, f"SELECT count(*) FROM posts WHERE id IN ({','.join(map(str, acked))})")
    assert acked and stored == str(len(acked)), f"{len(acked)} acknowledged, {stored} stored"
    print(f"  acknowledged writes lost: {len(acked) - int(stored)}")
