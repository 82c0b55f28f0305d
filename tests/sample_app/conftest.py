"""Fixtures for the sample app tests: real services and real app processes.

PostgreSQL (primary + streaming replica), Redis, RabbitMQ, Kafka and OpenSearch
are started once per session, each when a test first asks for it; each test gets a
fresh database on them, an empty Redis and an empty jobs queue.  The app runs as
``python -m sample_app`` subprocesses on free ports, driven over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/ is not a package; make `tests.services` importable (it is shared with
# the operator's tests).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.services import (  # noqa: E402
    Kafka,
    OpenSearch,
    Postgres,
    RabbitMQ,
    Redis,
    SampleApp,
    ScratchDatabase,
    kafka,
    opensearch,
    postgres_primary,
    postgres_replica,
    rabbitmq,
    redis_server,
    sample_app,
)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    with postgres_primary(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(scope="session")
def pg_replica(pg: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    with postgres_replica(pg, tmp_path_factory.mktemp("pg-replica")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    with rabbitmq(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


@pytest.fixture(scope="session")
def opensearch_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSearch]:
    with opensearch(tmp_path_factory.mktemp("opensearch")) as node:
        yield node


@pytest.fixture
def search_node(opensearch_service: OpenSearch) -> Iterator[OpenSearch]:
    """The OpenSearch node, running (a test may stop it; it is started again after)."""
    if opensearch_service.process is None:
        opensearch_service.start()
    yield opensearch_service
    if opensearch_service.process is None:
        opensearch_service.start()


@pytest.fixture(scope="session")
def kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    with kafka(tmp_path_factory.mktemp("kafka")) as server:
        yield server


@pytest.fixture
def database(pg: Postgres) -> ScratchDatabase:
    """A fresh, empty database (also visible on the replica)."""
    return ScratchDatabase.create(pg)


@pytest.fixture
def redis_url(redis_service: Redis) -> Iterator[str]:
    """The Redis server, empty (post ids restart at 1 in every test database)."""
    import redis

    if redis_service.process is None:  # a previous test left it stopped
        redis_service.start()
    with redis.Redis.from_url(redis_service.url) as client:
        client.flushall()
    yield redis_service.url
    if redis_service.process is None:
        redis_service.start()


@pytest.fixture
def broker_url(rabbitmq_service: RabbitMQ) -> str:
    """The broker, with the jobs queue empty (leftovers reference other test databases)."""
    import aio_pika

    from sample_app.jobs import QUEUE

    async def purge() -> None:
        connection = await aio_pika.connect(rabbitmq_service.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(QUEUE, durable=True)
            await queue.purge()

    asyncio.run(purge())
    return rabbitmq_service.url


# --------------------------------------------------------------------------- app processes


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., SampleApp]]:
    """Start app processes; all are stopped at the end of the test.

    ``start_app(DATABASE_URL=..., ...)`` returns once ``/readyz`` answers 200
    (pass ``ready="/healthz"`` to wait only for the process to serve).
    """
    with contextlib.ExitStack() as stack:

        def start(ready: str = "/readyz", **variables: str) -> SampleApp:
            return stack.enter_context(sample_app(tmp_path, ready=ready, **variables))

        yield start
