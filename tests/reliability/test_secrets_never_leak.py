"""The generated passwords never show: not in logs, Events, status or `kubectl describe`.

The operator runs as a real subprocess (`z2m run --verbose`, Kopf's debug logs
included) and makes the credentials Secret itself. A walk 1..5..1 runs every
code path that reads the Secret: the queue's depth before RabbitMQ goes (a real
RabbitMQ, told the generated queue password) and Sentinel's master before Redis
shrinks (a real Redis, told the generated Redis password). Then every password,
as text and as base64, is searched for in all the output a person could see.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import kubernetes
import pytest
import redis
from kubernetes.client import ApiClient

from tests import services
from tests.cluster import conftest as cluster
from tests.cluster import helpers as h
from tests.conftest import eventually, kubectl, report
from z2m import builders

pytestmark = [pytest.mark.cluster, pytest.mark.reliability]
NAME = "shop"
WALK = [1, 2, 3, 4, 5, 4, 3, 2, 1]
KINDS = "scalingstages,deployments,statefulsets,services,configmaps,pdb,hpa,secrets"


@pytest.fixture
def operator_process(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """`z2m run --verbose --namespace NS` as a subprocess; yields its log file."""
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "Z2M_RESYNC_SECONDS": "2",
        "Z2M_RETRY_SECONDS": "1",
        "Z2M_QUEUE_QUIET_SECONDS": "6",
    }
    argv = [sys.executable, "-m", "z2m.cli", "run", "--verbose", "--kubeconfig", kubeconfig]
    argv += ["--namespace", namespace, "--bind", "127.0.0.1"]
    argv += [f"--health-port={services.free_port()}", f"--metrics-port={services.free_port()}"]
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield log
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode in (0, -15), log.read_text()[-3000:]


def passwords(api_client: ApiClient, namespace: str) -> dict[str, str]:
    """The generated passwords; empty until the operator has made the Secret."""
    try:
        secret = kubernetes.client.CoreV1Api(api_client).read_namespaced_secret(
            builders.secret_name(NAME), namespace
        )
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def test_generated_passwords_never_show_in_logs_events_status_or_describe(
    api_client: ApiClient,
    kubeconfig: str,
    namespace: str,
    operator_process: Path,
    broker: str,
    sentinel_watching: Callable[[str], str],
) -> None:
    sentinel = sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")
    spec = {"queue": {"managementUrl": broker}, "cache": {"sentinelAddress": sentinel}}
    h.create(api_client, namespace, h.scaling_stage(NAME, WALK[0], **spec))
    secrets = eventually(lambda: passwords(api_client, namespace), timeout=60)
    assert set(secrets) == set(builders.SECRET_KEYS)

    # The real RabbitMQ and Redis learn the passwords the operator generated.
    guest = ("guest", "guest")
    user = f"{broker}/api/users/z2m"
    httpx.put(
        user, json={"password": secrets["queue-password"], "tags": "management"}, auth=guest
    ).raise_for_status()
    host, _, port = sentinel.rpartition(":")
    with redis.Redis(host=host, port=int(port)) as watcher:
        address, master_port = watcher.sentinel_get_master_addr_by_name("z2m")
    with redis.Redis(host=address, port=master_port, password=cluster.REDIS_PASSWORD) as master:
        master.config_set("requirepass", secrets["redis-password"])

    seen: list[str] = []
    try:
        for stage in WALK:
            if stage != WALK[0]:
                h.set_stage(api_client, namespace, NAME, stage)
            h.wait_ready(api_client, namespace, NAME, stage, timeout=120)
            described = kubectl("describe", KINDS, "-n", namespace, kubeconfig=kubeconfig)
            seen.append(described.stdout)
    finally:
        # The broker is shared by the session: give the next test its password back.
        httpx.put(
            user, json={"password": cluster.QUEUE_PASSWORD, "tags": "management"}, auth=guest
        ).raise_for_status()
    for what in ("events", "scalingstages"):
        seen.append(
            kubectl("get", what, "-n", namespace, "-o", "yaml", kubeconfig=kubeconfig).stdout
        )
    seen.append(operator_process.read_text())

    text = "\n".join(seen)
    needles = {
        form
        for value in secrets.values()
        for form in (value, base64.b64encode(value.encode()).decode())
    }
    found = sorted(n for n in needles if n in text)
    report(
        f"password leak scan: {len(needles)} forms of {len(secrets)} generated passwords "
        f"searched in {len(text.encode())} bytes (operator log, Events, status, describe of "
        f"every object at each of {len(WALK)} stages): {len(found)} found"
    )
    assert "Stage" in text and "Pruned" in text  # the scan saw the walk's output
    assert not found
