"""Background jobs on Kafka (stage 5): a topic with partitions and a consumer group.

With ``KAFKA_BOOTSTRAP_SERVERS`` the web process publishes each fan-out job to
the topic (``KAFKA_TOPIC``) and waits for the broker's acknowledgement from all
in-sync replicas; the producer is idempotent, so its own retries add no
duplicates.  Workers (``ROLE=worker``) join the consumer group (``KAFKA_GROUP``)
and commit a partition's offset only after the jobs before it have committed in
PostgreSQL: a worker killed mid-job leaves its offset behind, and the partition's
next owner processes the job again, which `jobs.process` makes a no-op.  So the
effect is exactly once, as with RabbitMQ.

A topic's partitions bound how many workers of a group do work at once; the
operator caps the workers at ``KAFKA_PARTITIONS``, and the first process to start
creates the topic with that many (or adds partitions to an existing one).

Not here: the RabbitMQ path (`jobs`); during a move between the two, each worker
drains the source it was given while the web pods publish to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError

from sample_app import metrics
from sample_app.jobs import FanoutJob, Store, process

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
MAX_RECORDS = 8
"""Records taken per poll: a killed worker repeats at most these few jobs."""
TOPIC_EXISTS = 36
LAG_REFRESH_SECONDS = 5.0
"""A web process reads the group's lag at most this often, however often it is scraped."""
LAG_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Topic:
    """Where the jobs go: the bootstrap servers, the topic and the workers' group."""

    servers: str
    name: str = "z2m.jobs"
    group: str = "z2m.workers"
    partitions: int = 6
    replication: int = 1


async def ensure_topic(topic: Topic) -> None:
    """Create the topic with its partitions, or grow an existing one to that many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=topic.servers, request_timeout_ms=5000)
    await admin.start()
    try:
        created = await admin.create_topics(
            [
                NewTopic(
                    topic.name,
                    num_partitions=topic.partitions,
                    replication_factor=topic.replication,
                )
            ]
        )
        for _name, code, message in created.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise KafkaError(f"creating topic {topic.name!r}: {message} (error {code})")
        described = await admin.describe_topics([topic.name])
        have = len(described[0]["partitions"])
        if have < topic.partitions:
            # Partitions can only grow; fewer asked for than exist changes nothing.
            await admin.create_partitions({topic.name: NewPartitions(total_count=topic.partitions)})
            log.info("topic %s grown from %d to %d partitions", topic.name, have, topic.partitions)
    finally:
        await admin.close()


async def group_lag(topic: Topic) -> int:
    """Records of the topic the group has not committed past (0: fully drained).

    A partition the group never committed on counts from its first record, since that
    is where the group would start (``auto_offset_reset="earliest"``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=topic.servers, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=topic.servers, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        described = await admin.describe_topics([topic.name])
        parts = [TopicPartition(topic.name, p["partition"]) for p in described[0]["partitions"]]
        committed = await _committed(admin, topic.group, parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        lag = 0
        for tp in parts:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            lag += max(ends[tp] - done, 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def _committed(
    admin: AIOKafkaAdminClient, group: str, parts: list[TopicPartition]
) -> dict[TopicPartition, Any]:
    """The group's committed offsets; a coordinator still being elected is waited for.

    The first group query of a fresh cluster creates Kafka's offsets topic, and until its
    leader is elected the coordinator is "not available": retriable, for a few seconds.
    """
    for attempt in range(20):
        try:
            return dict(await admin.list_consumer_group_offsets(group, partitions=parts))
        except KafkaError as exc:
            if not exc.retriable or attempt == 19:
                raise
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")


class Stream:
    """The web side: an idempotent producer, connected in the background."""

    def __init__(self, topic: Topic) -> None:
        """Remember the topic; :meth:`connect_forever` does the work."""
        self.topic = topic
        self.producer: AIOKafkaProducer | None = None
        self._lag: int | None = None
        self._lag_read_at: float | None = None

    async def lag(self) -> int | None:
        """The workers' group lag (:func:`group_lag`): jobs published and not yet done.

        The stage-5 counterpart of RabbitMQ's queue depth, read by the web process so
        that it is known even with no worker running.  Read at most every
        ``LAG_REFRESH_SECONDS`` (one short admin session each time); None if Kafka could
        not be asked within ``LAG_TIMEOUT_SECONDS``.
        """
        now = time.monotonic()
        if self._lag_read_at is not None and now - self._lag_read_at < LAG_REFRESH_SECONDS:
            return self._lag
        self._lag_read_at = now
        try:
            self._lag = await asyncio.wait_for(group_lag(self.topic), LAG_TIMEOUT_SECONDS)
        except Exception:  # a scrape must not fail because Kafka is away
            self._lag = None
        return self._lag

    @property
    def connected(self) -> bool:
        """The producer started (it reconnects by itself after that)."""
        return self.producer is not None

    async def connect_forever(self) -> None:
        """Make sure the topic exists and start the producer, retrying until both work."""
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.topic.servers,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(PUBLISH_TIMEOUT_SECONDS * 1000),
            )
            try:
                await ensure_topic(self.topic)
                await producer.start()
                self.producer = producer
                log.info("connected to Kafka, topic %s", self.topic.name)
                return
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("Kafka unreachable (%r), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def publish(self, job: FanoutJob) -> None:
        """Send the job and wait until every in-sync replica has it."""
        if self.producer is None:
            raise ConnectionError("not connected to Kafka")
        await asyncio.wait_for(
            self.producer.send_and_wait(self.topic.name, job.to_bytes(), key=job.job_id.encode()),
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        metrics.JOBS_PUBLISHED.inc()

    async def close(self) -> None:
        """Flush and stop the producer (errors ignored: Kafka may be gone)."""
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


class StreamWorker:
    """One member of the consumer group: process, commit in PostgreSQL, then the offset."""

    def __init__(self, db: Store, topic: Topic) -> None:
        """Consume ``topic`` as a member of its group, writing through ``db``."""
        self.db = db
        self.topic = topic
        self.joined = False

    async def run(self) -> None:
        """Join the group and consume until cancelled; leaves the group on the way out."""
        await ensure_topic(self.topic)
        consumer = AIOKafkaConsumer(
            self.topic.name,
            bootstrap_servers=self.topic.servers,
            group_id=self.topic.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_RECORDS,
        )
        await consumer.start()
        self.joined = True
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
                for tp, records in batches.items():
                    await self._partition(consumer, tp, records)
                metrics.STREAM_LAG.set(await _local_lag(consumer))
        finally:
            self.joined = False
            # Leaving the group hands its partitions over at once, not after a timeout.
            await consumer.stop()

    async def _partition(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> None:
        done: int | None = None
        for record in records:
            try:
                job = FanoutJob.from_bytes(record.value)
            except ValueError as exc:
                log.error("dropping malformed job at %s:%d: %s", tp, record.offset, exc)
                metrics.JOBS_PROCESSED.labels("invalid").inc()
                done = record.offset + 1
                continue
            try:
                await process(self.db, job)
            except Exception as exc:
                log.warning(
                    "job %s failed (%r); retrying from offset %d", job.job_id, exc, record.offset
                )
                metrics.JOBS_PROCESSED.labels("failed").inc()
                consumer.seek(tp, record.offset)
                await asyncio.sleep(1.0)  # don't spin on a dependency that is down
                break
            done = record.offset + 1
        if done is not None:
            try:
                await consumer.commit({tp: done})
            except CommitFailedError as exc:
                # The partition moved to another worker: it repeats these jobs, idempotently.
                log.warning("commit at %s:%d failed (%r)", tp, done, exc)


async def _local_lag(consumer: AIOKafkaConsumer) -> int:
    """Records behind the end of the partitions this worker holds, as it last saw them."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lag += max(high - await consumer.position(tp), 0)
    return lag
