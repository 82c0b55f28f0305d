"""Fixtures for operator tests that need a real RabbitMQ or Redis Sentinel next to the apiserver.

The operator asks RabbitMQ's management API how many jobs a queue holds before
it removes the queue. In a test the broker's pods are fake (KWOK), so the
ScalingStage's `spec.queue.managementUrl` points at a real RabbitMQ on
loopback instead, configured with the same rabbitmq.conf the queue pod mounts.
Likewise the operator asks Sentinel which Redis pod is the master before Redis
shrinks: `spec.cache.sentinelAddress` points at a real Sentinel on loopback,
watching a real Redis that announces itself under a pod's name. And it asks Kafka
for the consumer group's lag before Kafka goes: `spec.streaming.bootstrapServers`
points at a real single-node Kafka on loopback, run from the Maven Central jars.
At 5 -> 6 and 6 -> 5 it moves the rows between stage 5's database and the shards:
`spec.database.moveUrls` points at real PostgreSQL servers on loopback
(`wal_level = logical`): the source with the sample app's schema, the shards empty.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import kubernetes
import pytest
from kubernetes.client import ApiClient

from sample_app import db
from tests import prometheus as prom
from tests import services
from z2m import api, builders, kube

QUEUE_PASSWORD = "queue-test-password"
REDIS_PASSWORD = "redis-password-test"  # what make_credentials stores


@pytest.fixture(scope="session")
def kind_api(kind_kubeconfig: str) -> ApiClient:
    """An API client for the real-pod (kind) cluster."""
    return kube.load_config(kind_kubeconfig)


@pytest.fixture
def exporter() -> Iterator[prom.Exporter]:
    """A /metrics endpoint whose app signals the test sets (quiet to begin with)."""
    e = prom.Exporter()
    e.set(rps=0.0, cpu_percent=1.0, latency_seconds=0.02)
    yield e
    e.close()


@pytest.fixture
def prometheus(
    exporter: prom.Exporter, namespace: str, tmp_path: Path
) -> Iterator[prom.Prometheus]:
    """A real Prometheus scraping `exporter` as the app pod `shop-app-0` of the namespace."""
    target = prom.Target(exporter.target, namespace, "shop-app-0")
    with prom.prometheus(tmp_path / "prometheus", [target]) as server:
        server.wait_for_value(f'up{{namespace="{namespace}"}} == 1')
        yield server


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real RabbitMQ with the management plugin; yields the management URL."""
    management = services.free_port()
    conf = builders.script("rabbitmq.conf").replace("15672", str(management))
    tmp: Path = tmp_path_factory.mktemp("broker")
    with services.rabbitmq(tmp, config=conf, plugins=("rabbitmq_management",)) as node:
        url = f"http://127.0.0.1:{management}"
        services.wait_for(
            lambda: httpx.get(f"{url}/api/overview", auth=("guest", "guest")).status_code == 200,
            60,
            "management API",
        )
        ctl = [str(services.RABBITMQ_BIN / "rabbitmqctl"), "-n", node.nodename]
        for args in (
            ["add_user", "z2m", QUEUE_PASSWORD],
            ["set_user_tags", "z2m", "management"],
            ["set_permissions", "-p", "/", "z2m", ".*", ".*", ".*"],
        ):
            subprocess.run([*ctl, *args], env=node.env, check=True, capture_output=True, timeout=60)
        # What the workers do when they start: declare the jobs queue (pods are fake here).
        declared = httpx.put(
            f"{url}/api/queues/%2F/{api.QueueSpec().queue_name}",
            json={"durable": True},
            auth=("guest", "guest"),
        )
        assert declared.status_code in (201, 204), declared.text
        yield url


@pytest.fixture(scope="session")
def kafka_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka on loopback (KRaft, one node); yields its bootstrap servers."""
    with services.kafka(tmp_path_factory.mktemp("kafka")) as node:
        yield node.servers


@pytest.fixture
def empty_queue(broker: str, api_client: ApiClient, namespace: str) -> str:
    """The broker's management URL, with the test's credentials Secret made beforehand.

    The operator never overwrites an existing credentials Secret, so the queue
    password it uses is the one the broker knows.
    """
    make_credentials(api_client, namespace, "shop")
    return broker


def make_credentials(api_client: ApiClient, namespace: str, owner: str) -> None:
    data = {k: base64.b64encode(f"{k}-test".encode()).decode() for k in builders.SECRET_KEYS}
    data["queue-password"] = base64.b64encode(QUEUE_PASSWORD.encode()).decode()
    kubernetes.client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        {"metadata": {"name": builders.secret_name(owner)}, "data": data},
    )


@pytest.fixture
def sentinel_watching(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """`sentinel_watching("shop-redis-0.shop-redis")`: the host:port of a real Sentinel.

    It watches a real Redis master (with the credentials Secret's password) that
    announces itself under the given pod name, as a stage-5 Redis pod does.
    """
    with contextlib.ExitStack() as stack:

        def start(announce: str) -> str:
            redis_port, sentinel_port = services.free_port(), services.free_port()
            root = tmp_path / f"sentinel-{sentinel_port}"
            root.mkdir()
            argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--dir", str(root), "--requirepass", REDIS_PASSWORD]
            argv += ["--replica-announce-ip", announce]
            conf = root / "sentinel.conf"
            conf.write_text(
                f"port {sentinel_port}\nbind 127.0.0.1\ndir {root}\n"
                f"sentinel monitor z2m 127.0.0.1 {redis_port} 1\n"
                f"sentinel auth-pass z2m {REDIS_PASSWORD}\n"
            )
            for args, port in ((argv, redis_port), (["redis-sentinel", str(conf)], sentinel_port)):
                process = subprocess.Popen(
                    args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                stack.callback(process.wait, 10)
                stack.callback(process.kill)
                services.wait_for(lambda p=port: services._port_open(p), 20, f"port {port}")
            return f"127.0.0.1:{sentinel_port}"

        yield start


@pytest.fixture(scope="session")
def logical_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[services.Postgres]]:
    """Three PostgreSQL servers with logical WAL: stage 5's database and two shards."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                services.postgres_primary(
                    tmp_path_factory.mktemp(f"pg-move-{i}"), settings=services.LOGICAL
                )
            )
            for i in range(3)
        ]


def _with_schema(server: services.Postgres) -> str:
    """A new database with the sample app's schema (what its migrations make); its URL."""
    import psycopg

    scratch = services.ScratchDatabase.create(server)

    async def migrate() -> None:
        async with await psycopg.AsyncConnection.connect(scratch.url) as conn:
            await db.migrate(conn)

    asyncio.run(migrate())
    return scratch.url


@pytest.fixture
def move_urls(logical_servers: list[services.Postgres]) -> dict[str, object]:
    """`spec.database.moveUrls` for one test: a fresh database with the app's schema, and
    two empty ones for the shards (the move gives them the moved tables' schema)."""
    source, *shards = logical_servers
    empty = [services.ScratchDatabase.create(server).url for server in shards]
    return {"source": _with_schema(source), "shards": empty}
