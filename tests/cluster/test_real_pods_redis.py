"""Redis failover on real pods: the app follows Sentinel, and leaving stage 5 keeps the data.

A kind cluster, our images, the operator installed by Helm into a namespace that
enforces the `restricted` Pod Security level. At stage 5 keys are written to the
Redis master and acknowledged by its replica (`WAIT 1`), then the master stops
answering (`CLIENT PAUSE ... ALL`) for longer than Sentinel's down-after, so
Sentinel promotes the replica. Within 30 s (the issue's bound, the only time bound
here) a post created after that is cached and read back through the app: its
cache writes reach the new master. Keys are written to the new master too; then
the stage is lowered to 4, which leaves one Redis pod (ordinal 0), and every key
written before and after the failover must still be there. How long the app's
cache writes failed, and whether the operator had to fail Redis back over to
ordinal 0 first, are reported.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, kubectl, report

pytestmark = [pytest.mark.cluster, pytest.mark.kind, pytest.mark.timeout(3600)]
NAME = "shop"
KEYS = 20


@pytest.fixture(scope="module")
def app_namespace(kind_api: ApiClient, kind_kubeconfig: str) -> Iterator[str]:
    with h.helm_namespace(kind_api, kind_kubeconfig, "redis") as name:
        yield name


def _client_pod(name: str) -> dict[str, Any]:
    """An idle sample-app pod that the test runs its HTTP probes from."""
    return h.restricted_pod(name, ["python", "-c", "import time; time.sleep(7200)"], cpu="20m")


# Creates a user and a post, then reads the post twice without a session (a session
# would skip the cache): the first read misses and stores it in Redis, the second
# finds it. "hit" on the second read is a cache write that reached the master.
PROBE = f"""
import http.cookiejar, json, urllib.request, uuid
base = "http://{NAME}-app"
def call(opener, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data,
                                 headers={{"Content-Type": "application/json"}})
    with opener.open(req, timeout=5) as r:
        return r.headers.get("X-Cache"), json.loads(r.read() or b"null")
writer = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
call(writer, "/api/users", {{"name": "probe-" + uuid.uuid4().hex[:10]}})
_, post = call(writer, "/api/posts", {{"body": "probe"}})
reader = urllib.request.build_opener()
print(call(reader, "/api/posts/%d" % post["id"])[0], call(reader, "/api/posts/%d" % post["id"])[0])
"""


def _exec(kubeconfig: str, namespace: str, pod: str, *argv: str) -> str:
    out = kubectl("exec", "-n", namespace, pod, "--", *argv, kubeconfig=kubeconfig, check=False)
    return str(out.stdout).strip()


def _redis_cli(kubeconfig: str, namespace: str, pod: str, password: str, *command: str) -> str:
    return _exec(
        kubeconfig, namespace, pod, "env", f"REDISCLI_AUTH={password}", "redis-cli", *command
    )


def _role(kubeconfig: str, namespace: str, pod: str, password: str) -> str:
    out = _redis_cli(kubeconfig, namespace, pod, password, "--raw", "ROLE")
    return out.splitlines()[0] if out else ""


def _redis_pods(api_client: ApiClient, namespace: str) -> list[str]:
    pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=cache"
    )
    return sorted(p.metadata.name for p in pods.items if p.status.phase == "Running")


def _master(api_client: ApiClient, kubeconfig: str, namespace: str, password: str) -> str | None:
    masters = [
        pod
        for pod in _redis_pods(api_client, namespace)
        if _role(kubeconfig, namespace, pod, password) == "master"
    ]
    return masters[0] if len(masters) == 1 else None


def _write_keys(kubeconfig: str, namespace: str, pod: str, password: str, prefix: str) -> None:
    """Write KEYS keys on the master and wait until its replica has them (WAIT 1)."""
    for i in range(KEYS):
        done = _redis_cli(kubeconfig, namespace, pod, password, "SET", f"{prefix}:{i}", str(i))
        assert done == "OK", done
    acked = _redis_cli(kubeconfig, namespace, pod, password, "WAIT", "1", "10000")
    assert acked == "1", f"the replica did not acknowledge the keys: {acked!r}"


def _missing(kubeconfig: str, namespace: str, pod: str, password: str, prefix: str) -> list[int]:
    return [
        i
        for i in range(KEYS)
        if _redis_cli(kubeconfig, namespace, pod, password, "GET", f"{prefix}:{i}") != str(i)
    ]


def test_the_app_follows_a_redis_failover_and_leaving_stage_5_keeps_the_data(
    kind_api: ApiClient, kind_kubeconfig: str, app_namespace: str
) -> None:
    ns, kc = app_namespace, kind_kubeconfig
    core = kubernetes.client.CoreV1Api(kind_api)
    h.create(kind_api, ns, h.scaling_stage(NAME, 5, app=h.SMALL_APP))
    h.wait_ready(kind_api, ns, NAME, 5, timeout=900)
    secret = core.read_namespaced_secret(f"{NAME}-credentials", ns)
    password = base64.b64decode(secret.data["redis-password"]).decode()
    core.create_namespaced_pod(ns, _client_pod("client"))
    eventually(
        lambda: core.read_namespaced_pod("client", ns).status.phase == "Running", timeout=120
    )

    def cache_write_read_back() -> bool:
        return _exec(kc, ns, "client", "python", "-c", PROBE).split()[-1:] == ["hit"]

    eventually(cache_write_read_back, timeout=120)
    old = eventually(lambda: _master(kind_api, kc, ns, password), timeout=60)
    _write_keys(kc, ns, old, password, "before")

    # The master stops answering anyone, Sentinel included, for longer than Sentinel's
    # down-after: Sentinel promotes the other pod, and the app must follow it.
    _redis_cli(kc, ns, old, password, "CLIENT", "PAUSE", "20000", "ALL")
    paused = time.monotonic()
    new = eventually(
        lambda: (m := _master(kind_api, kc, ns, password)) not in (None, old) and m,
        timeout=60,
    )
    eventually(cache_write_read_back, timeout=30)
    report(f"redis failover on real pods: app cache writes back {time.monotonic() - paused:.1f} s")
    report(f"  after the master {old} stopped answering (CLIENT PAUSE 20 s); master now {new}")
    assert _missing(kc, ns, new, password, "before") == []
    # The old master, answering again, is made a replica of the new one by Sentinel.
    eventually(
        lambda: (
            len(_redis_pods(kind_api, ns)) == 2
            and all(
                _role(kc, ns, pod, password) == "slave"
                for pod in _redis_pods(kind_api, ns)
                if pod != new
            )
        ),
        timeout=180,
    )
    _write_keys(kc, ns, new, password, "after")

    demoted = time.monotonic()
    h.set_stage(kind_api, ns, NAME, 4)
    h.wait_ready(kind_api, ns, NAME, 4, timeout=900)
    report(f"  5 -> 4 ready after {time.monotonic() - demoted:.0f} s")
    failovers = [
        e.message
        for e in core.list_namespaced_event(ns).items
        if e.reason == "RedisFailover" and e.involved_object.name == NAME
    ]
    report(f"  operator failed Redis over to ordinal 0 first: {bool(failovers)} {failovers[:1]}")
    if new != f"{NAME}-redis-0":
        assert failovers, "ordinal 1 was the master, yet Redis shrank without a failover"

    remaining = eventually(
        lambda: (pods := _redis_pods(kind_api, ns)) == [f"{NAME}-redis-0"] and pods, timeout=300
    )
    pod = remaining[0]
    eventually(lambda: _role(kc, ns, pod, password) == "master", timeout=120)
    lost = {prefix: _missing(kc, ns, pod, password, prefix) for prefix in ("before", "after")}
    report(f"  keys lost by the demotion: {json.dumps(lost)} (of {KEYS} + {KEYS})")
    assert lost == {"before": [], "after": []}
    eventually(cache_write_read_back, timeout=120)
