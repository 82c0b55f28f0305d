"""Fixtures for the reliability suite: z2m as a real process, and faults of the control plane.

The operator runs as `python -m z2m.cli run`, as it runs in a pod, so that a
test can SIGKILL it, restart it, or run two replicas of it side by side. The
local control plane's components (`hack/cluster.sh`, kwokctl's binary runtime)
are processes too: `ControlPlane.restart` kills one (kube-apiserver, etcd) and
starts it again with the same command line, as a crash and a supervisor would.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import services

# The real RabbitMQ and Sentinel the walk's demotions ask (see tests/cluster/conftest.py).
from tests.cluster.conftest import (
    broker,
    empty_queue,
    exporter,
    kafka_servers,
    prometheus,
    sentinel_watching,
)
from tests.conftest import eventually, report

__all__ = [
    "broker",
    "empty_queue",
    "exporter",
    "kafka_servers",
    "prometheus",
    "sentinel_watching",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.cluster)


@dataclass
class OperatorProcess:
    """`z2m run --namespace NS [args]` as a subprocess, its output appended to `log`."""

    kubeconfig: str
    namespace: str
    log: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> OperatorProcess:
        self.metrics_port = services.free_port()
        env = {
            **os.environ,
            "Z2M_RESYNC_SECONDS": "2",
            "Z2M_RETRY_SECONDS": "1",
            "Z2M_WATCH_TIMEOUT": "30",
            "Z2M_QUEUE_QUIET_SECONDS": "6",
            **self.env,
        }
        env.pop("Z2M_NAMESPACES", None)
        argv = [sys.executable, "-m", "z2m.cli", "run", "--kubeconfig", self.kubeconfig]
        argv += ["--namespace", self.namespace, "--bind", "127.0.0.1"]
        argv += [f"--health-port={services.free_port()}", f"--metrics-port={self.metrics_port}"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([*argv, *self.args], env=env, stdout=out, stderr=out)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup handler runs, no Lease is released."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def samples(self, metric: str) -> list[tuple[dict[str, str], float]]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return [
            (dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric
        ]

    def serving(self) -> bool:
        """Whether it is up far enough to serve its metrics."""
        try:
            httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        except httpx.HTTPError:
            return False
        return True

    def total(self, metric: str) -> float:
        return sum(v for _, v in self.samples(metric))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def operator_process(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """One operator process (not started); stopped at the end, its log printed on failure."""
    op = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    try:
        yield op
    finally:
        op.stop()


@dataclass
class Component:
    """One process of the local control plane, as kwokctl's binary runtime started it."""

    cluster: Path
    """kwokctl's directory of the cluster: pids/, logs/, kwok.yaml."""
    name: str

    @property
    def _pid_file(self) -> Path:
        return self.cluster / "pids" / f"{self.name}.pid"

    @property
    def pid(self) -> int:
        return int(self._pid_file.read_text().strip())

    def alive(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)
        return False

    def command(self) -> tuple[list[str], Path]:
        """Its command line and working directory, as kwokctl's kwok.yaml records them."""
        with (self.cluster / "kwok.yaml").open() as f:
            for doc in yaml.safe_load_all(f):
                for c in (doc or {}).get("components") or []:
                    if c["name"] == self.name:
                        return [c["binary"], *c.get("args", [])], Path(c["workDir"])
        raise LookupError(f"kwok.yaml has no component {self.name}")

    def stop(self) -> tuple[list[str], Path]:
        """SIGKILL the component; returns its command line and working directory."""
        argv, cwd = self.command()
        os.kill(self.pid, signal.SIGKILL)
        eventually(lambda: not self.alive(), timeout=30)
        return argv, cwd

    def start(self, argv: list[str], cwd: Path) -> None:
        """Start it again as kwokctl did: same arguments, same log, a new pid file."""
        with (self.cluster / "logs" / f"{self.name}.log").open("ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(process.pid))


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    return True


@dataclass
class ControlPlane:
    """The local control plane's processes, with a supervisor that restarts what exits.

    kube-scheduler and kube-controller-manager exit when they cannot renew their
    own Leases (client-go's way), during an outage or up to a renew deadline
    after it. On a real node kubelet restarts them; kwokctl's binary runtime does
    not, so `supervise` does, for every component not held down by `outage`.
    """

    cluster: Path
    kubeconfig: str
    held: set[str] = field(default_factory=set)
    restarted: list[str] = field(default_factory=list)

    def component(self, name: str) -> Component:
        return Component(self.cluster, name)

    def components(self) -> list[str]:
        return sorted(p.stem for p in (self.cluster / "pids").glob("*.pid"))

    def ready(self) -> bool:
        from tests.conftest import kubectl

        answer = kubectl("get", "--raw", "/readyz", kubeconfig=self.kubeconfig, check=False)
        return answer.returncode == 0

    def settled(self) -> bool:
        """The API is ready and the scheduler and controller manager lead again (renewed now)."""
        if not self.ready():
            return False
        from tests.conftest import kubectl

        now = datetime.datetime.now(datetime.UTC)
        for lease in ("kube-scheduler", "kube-controller-manager"):
            out = kubectl(
                *("get", "lease", lease, "-n", "kube-system"),
                *("-o", "jsonpath={.spec.renewTime}"),
                kubeconfig=self.kubeconfig,
                check=False,
            )
            if out.returncode != 0 or not out.stdout:
                return False
            renewed = datetime.datetime.fromisoformat(out.stdout.replace("Z", "+00:00"))
            if (now - renewed).total_seconds() > 10:
                return False
        return True

    def outage(self, name: str, seconds_down: float) -> float:
        """Kill `name`, keep it down until `seconds_down` passed, start it, wait for /readyz.

        Returns how long the API was unavailable, as measured here.
        """
        started = time.monotonic()
        with self.down(name):
            # The fault itself lasts a set time: this wait is the outage, not a synchronisation.
            time.sleep(max(0.0, seconds_down - (time.monotonic() - started)))
        return time.monotonic() - started

    @contextlib.contextmanager
    def down(self, name: str) -> Iterator[None]:
        """Kill `name` and wait until the API is not ready; start it again and wait for /readyz."""
        component = self.component(name)
        self.held.add(name)
        try:
            argv, cwd = component.stop()
            eventually(lambda: not self.ready(), timeout=30)
            try:
                yield
            finally:
                component.start(argv, cwd)
        finally:
            self.held.discard(name)
        eventually(self.ready, timeout=120, interval=0.5)

    def etcd_delete(self, key: str) -> int:
        """Delete one key from etcd itself (its v3 JSON gateway), behind the apiserver's back.

        Returns how many keys were deleted.
        """
        argv, _ = self.component("kube-apiserver").command()
        servers = next(a.split("=", 1)[1] for a in argv if a.startswith("--etcd-servers="))
        answer = httpx.post(
            f"{servers.split(',')[0]}/v3/kv/deleterange",
            json={"key": base64.b64encode(key.encode()).decode()},
            timeout=10,
        )
        answer.raise_for_status()
        return int(answer.json().get("deleted", 0))

    @contextlib.contextmanager
    def supervise(self) -> Iterator[ControlPlane]:
        commands = {c: self.component(c).command() for c in self.components()}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                for name, (argv, cwd) in commands.items():
                    if name not in self.held and not self.component(name).alive():
                        self.component(name).start(argv, cwd)
                        self.restarted.append(name)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()


@pytest.fixture(autouse=True)
def supervised(kubeconfig: str) -> Iterator[ControlPlane | None]:
    """Every reliability test runs with the local control plane supervised, if it is ours.

    On a loaded machine kube-scheduler or kube-controller-manager may miss their own
    renew deadline and exit; on a real node kubelet would restart them, and so does this.
    """
    clusters = list((Path(kubeconfig).parent / "kwok" / "clusters").glob("*/kwok.yaml"))
    if len(clusters) != 1:
        yield None
        return
    with ControlPlane(clusters[0].parent, kubeconfig).supervise() as plane:
        # A fault left by the test before (components restarted, Leases re-acquired) is over.
        eventually(plane.settled, timeout=180, interval=1)
        yield plane
    if plane.restarted:
        report(f"  control plane: restarted {', '.join(plane.restarted)} (exited on their own)")


@pytest.fixture
def control_plane(supervised: ControlPlane | None) -> ControlPlane:
    """The local control plane's processes; skipped against a cluster given by --kubeconfig."""
    if supervised is None:
        pytest.skip("needs the local control plane that this session started")
    return supervised
