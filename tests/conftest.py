"""Shared fixtures: the cluster, a namespace per test, and z2m running in-process.

By default the session starts the local control plane (`hack/cluster.sh up`,
real apiserver and friends, KWOK nodes) and stops it at the end. With
`--kubeconfig PATH` the same tests run against any cluster, kind included;
`kind`-marked tests, which need real pods, run only then.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from z2m import kube

ROOT = Path(__file__).resolve().parent.parent
FIGURES: list[str] = []
"""Measured figures tests report; printed at the end of the run, whatever the capture mode."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures the tests measured (the walk's errors, failover times...)."""
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def report(line: str) -> None:
    """Record a measured figure: shown now with -s, and in the run's summary always."""
    print(line)
    FIGURES.append(line)


# `--kubeconfig PATH` (pytest-kind's option) runs every cluster test, fake-pod and
# real-pod alike, against that cluster instead of the ones the session makes.


@pytest.fixture(scope="session")
def kubeconfig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A kubeconfig for the cluster under test, with the ScalingStage CRD installed."""
    given = request.config.getoption("kubeconfig")
    env = dict(os.environ)
    if given:
        path = str(given)
    else:
        state = ROOT / ".cluster" / f"test-{os.getpid()}"
        env.update(Z2M_CLUSTER_DIR=str(state), Z2M_CLUSTER_NAME=f"z2m-test-{os.getpid()}")
        subprocess.run([str(ROOT / "hack" / "cluster.sh"), "up"], check=True, env=env)
        path = str(state / "kubeconfig")
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"), kubeconfig=path)
    kubectl("wait", "--for=condition=Established", "crd/scalingstages.z2m.dev", kubeconfig=path)
    yield path
    if not given:
        subprocess.run([str(ROOT / "hack" / "cluster.sh"), "down"], check=False, env=env)


def kubectl(
    *args: str, kubeconfig: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the kubectl built with the control plane (or the PATH's, for --kubeconfig)."""
    binary = os.environ.get("Z2M_KUBECTL") or _built_kubectl()
    return subprocess.run(
        [binary, "--kubeconfig", kubeconfig, *args],
        check=check,
        capture_output=True,
        text=True,
        input=stdin,
    )


def _built_kubectl() -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh")], check=True, capture_output=True, text=True
    )
    return str(Path(out.stdout.strip()) / "kubectl")


@pytest.fixture(scope="session")
def kind_kubeconfig(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real-pod kind cluster through pytest-kind, with our images loaded and the CRD.

    Where Docker runs, pytest-kind's stock kind and node image; here, podman as kind's
    provider and the node image hack/kind.sh assembles. metrics-server is added so HPAs
    see real CPU. `--keep-cluster` keeps it for the next run.
    """
    from pytest_kind import KindCluster

    given = request.config.getoption("kubeconfig")
    if given:
        yield str(given)
        return
    env = _kind_env()
    os.environ.update(env)
    bin_dir = Path(_built_kubectl()).parent
    image = _hack("kind.sh", "node-image") or None
    name = request.config.getoption("cluster_name")
    name = "z2m-test" if name == "pytest-kind" else name
    path = ROOT / ".kind" / f"kubeconfig-{name}"
    path.parent.mkdir(exist_ok=True)
    cluster = KindCluster(
        name, path, image=image, kind_path=bin_dir / "kind", kubectl_path=bin_dir / "kubectl"
    )
    cluster.create(config_file=ROOT / "hack" / "kind" / "cluster.yaml" if image else None)
    os.environ["Z2M_KIND_CLUSTER"] = name
    _hack("kind.sh", "addons")
    _hack("images.sh", "build")
    _hack("images.sh", "load", name)
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"), kubeconfig=str(path))
    kubectl(
        "wait", "--for=condition=Ready", "node", "--all", "--timeout=300s", kubeconfig=str(path)
    )
    yield str(path)
    if not request.config.getoption("keep_cluster"):
        cluster.delete()


def _kind_env() -> dict[str, str]:
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"source {ROOT}/hack/lib.sh; [ $(z2m_engine) = podman ] && z2m_podman_env; env",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wanted = ("CONTAINERS_CONF", "KIND_EXPERIMENTAL_PROVIDER")
    return dict(
        line.split("=", 1) for line in out.stdout.splitlines() if line.split("=", 1)[0] in wanted
    )


def _hack(script: str, *args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / script), *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


@pytest.fixture(scope="session")
def api_client(kubeconfig: str) -> ApiClient:
    return kube.load_config(kubeconfig)


@pytest.fixture(scope="session")
def k(api_client: ApiClient) -> kube.Kube:
    return kube.Kube.connect(api_client)


@pytest.fixture
def namespace(api_client: ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"z2m.dev/test": "true"}}})
    yield name
    with contextlib.suppress(kubernetes.client.ApiException):
        core.delete_namespace(name)


@pytest.fixture
def operator(kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """z2m running in-process through kopf.testing.KopfRunner, watching the test namespace."""
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setenv("Z2M_KUBECONFIG", kubeconfig)
    monkeypatch.setenv("Z2M_NAMESPACES", namespace)  # what `z2m run --namespace` sets
    monkeypatch.setenv("Z2M_RESYNC_SECONDS", "2")
    monkeypatch.setenv("Z2M_RETRY_SECONDS", "1")
    monkeypatch.setenv("Z2M_WATCH_TIMEOUT", "30")
    monkeypatch.setenv("Z2M_QUEUE_QUIET_SECONDS", "6")
    args = ["run", "--standalone", "--namespace", namespace, "-m", "z2m.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output


def eventually(check: Callable[[], Any], timeout: float = 60, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s; last: {last!r}")
