"""Background jobs: notification fan-out to a new post's followers.

With ``BROKER_URL`` the web process publishes each job to a durable RabbitMQ
queue as a persistent message and waits for the publisher confirm; workers
(``ROLE=worker``) consume with manual acks and ack only after the job's
database transaction has committed.  A worker killed mid-job never acked, so
RabbitMQ redelivers the message to another worker.

With ``KAFKA_BOOTSTRAP_SERVERS`` jobs go to a Kafka topic instead (`streaming`).

Jobs are idempotent: the job id is inserted into ``processed_jobs`` in the
same transaction as the work, so a redelivered job that already committed
does nothing.  With ``DATABASE_SHARDS`` a job runs on every shard, each in its
own transaction with its own ``processed_jobs``: a follower's follows and
notifications live on the follower's shard, so each shard notifies its own
users, exactly once per shard.  Without a broker (or while it is unreachable) the job runs
inline in the request, which is safe for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from sample_app import metrics, shards
from sample_app.db import Database

log = logging.getLogger(__name__)

QUEUE = "z2m.jobs"
# Small prefetch: a killed worker only strands a few unacked messages, and
# they go back to the queue as soon as its connection drops.
PREFETCH = 8
PUBLISH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class FanoutJob:
    """Notify every follower of ``author_id`` about ``post_id``."""

    job_id: str
    post_id: int
    author_id: int

    @classmethod
    def new(cls, post_id: int, author_id: int) -> FanoutJob:
        """A job with a fresh unique id."""
        return cls(job_id=str(uuid.uuid4()), post_id=post_id, author_id=author_id)

    def to_bytes(self) -> bytes:
        """Serialise for the queue."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> FanoutJob:
        """Parse a queued job; raises ValueError if it isn't one."""
        try:
            data = json.loads(body)
            return cls(
                job_id=str(uuid.UUID(data["job_id"])),
                post_id=int(data["post_id"]),
                author_id=int(data["author_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a fan-out job: {exc!r}") from None


Store = Database | shards.ShardedDatabase
"""Where jobs write: the one database, or every shard."""


async def process(db: Store, job: FanoutJob) -> bool:
    """Do the job exactly once (per shard); False if it had already been done everywhere."""
    started = time.perf_counter()
    first_time = False
    for target in db.shards if isinstance(db, shards.ShardedDatabase) else [db]:
        async with target.transaction() as tx:
            done_here = await tx.fetch(
                "INSERT INTO processed_jobs (job_id) VALUES (%s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (job.job_id,),
            )
            if done_here:
                await tx.fetch(
                    "INSERT INTO notifications (user_id, post_id)"
                    " SELECT follower_id, %s FROM follows WHERE followee_id = %s"
                    " ON CONFLICT DO NOTHING",
                    (job.post_id, job.author_id),
                )
        first_time = first_time or bool(done_here)
    metrics.JOB_DURATION.observe(time.perf_counter() - started)
    metrics.JOBS_PROCESSED.labels("done" if first_time else "duplicate").inc()
    return bool(first_time)


async def queue_depth(channel: AbstractChannel, name: str = QUEUE) -> int:
    """Messages ready in the jobs queue, via a passive declare."""
    queue = await channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


class Broker:
    """A robust connection to RabbitMQ, established in the background."""

    def __init__(self, url: str, queue: str = QUEUE) -> None:
        """Remember the URL and the queue's name; :meth:`connect_forever` does the work."""
        self.url = url
        self.queue = queue
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None

    async def connect_forever(self, prefetch: int | None = None) -> AbstractChannel:
        """Connect (retrying with back-off until it works) and declare the queue."""
        delay = 0.5
        while True:
            try:
                # connect_robust reconnects by itself, but only after a first success.
                self.connection = await aio_pika.connect_robust(self.url, timeout=5)
                channel = await self.connection.channel(publisher_confirms=True)
                if prefetch is not None:
                    await channel.set_qos(prefetch_count=prefetch)
                await channel.declare_queue(self.queue, durable=True)
                self.channel = channel
                log.info("connected to the broker")
                return channel
            except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
                log.warning("broker unreachable (%r), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def publish(self, job: FanoutJob) -> None:
        """Publish a persistent message and wait for the broker's confirm."""
        if self.channel is None or self.channel.is_closed:
            raise ConnectionError("not connected to the broker")
        message = aio_pika.Message(
            job.to_bytes(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job.job_id,
            content_type="application/json",
        )
        await self.channel.default_exchange.publish(
            message, routing_key=self.queue, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
        )
        metrics.JOBS_PUBLISHED.inc()

    async def depth(self) -> int | None:
        """Messages ready in the queue; None if the broker couldn't be asked."""
        if self.channel is None or self.channel.is_closed:
            return None
        try:
            return await asyncio.wait_for(queue_depth(self.channel, self.queue), timeout=1.0)
        except Exception:  # a scrape must not fail because the broker is away
            return None

    async def close(self) -> None:
        """Close the connection (errors ignored: it may already be dead)."""
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class Publisher(Protocol):
    """Where jobs go: RabbitMQ (`Broker`) or Kafka (`streaming.Stream`)."""

    async def publish(self, job: FanoutJob) -> None:
        """Hand the job over durably, or raise."""


class Jobs:
    """Where the web process sends jobs: the broker if it can, inline otherwise."""

    def __init__(self, db: Store, broker: Publisher | None) -> None:
        """Use ``broker`` (RabbitMQ or Kafka) when given and connected."""
        self.db = db
        self.broker = broker

    async def submit(self, job: FanoutJob) -> str:
        """Queue or run ``job``; returns ``"queued"`` or ``"inline"``."""
        if self.broker is not None:
            try:
                await self.broker.publish(job)
                return "queued"
            except Exception as exc:  # any publish failure: fall back, the job is idempotent
                log.warning("publish failed (%r); running job %s inline", exc, job.job_id)
        await process(self.db, job)
        return "inline"


class Worker:
    """Consume the jobs queue; ack each message only after its transaction commits."""

    def __init__(self, db: Store, broker: Broker) -> None:
        """Consume from ``broker``, writing through ``db``."""
        self.db = db
        self.broker = broker

    async def run(self) -> None:
        """Connect and consume until cancelled."""
        channel = await self.broker.connect_forever(prefetch=PREFETCH)
        queue = await channel.declare_queue(self.broker.queue, durable=True)
        await queue.consume(self.handle)  # manual acks (no_ack=False is the default)
        await asyncio.Future()  # the robust connection re-registers the consumer

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process one delivery."""
        try:
            job = FanoutJob.from_bytes(message.body)
        except ValueError as exc:
            log.error("dropping malformed job %s: %s", message.message_id, exc)
            metrics.JOBS_PROCESSED.labels("invalid").inc()
            await message.reject(requeue=False)
            return
        try:
            await process(self.db, job)
        except Exception as exc:
            log.warning("job %s failed (%r); requeueing", job.job_id, exc)
            metrics.JOBS_PROCESSED.labels("failed").inc()
            await asyncio.sleep(1.0)  # don't spin on a dependency that is down
            await message.nack(requeue=True)
            return
        await message.ack()
