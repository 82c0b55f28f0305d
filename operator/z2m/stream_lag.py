"""How far Kafka's consumer group is behind its topic: the `stream-drained` gate's reading.

I/O at the edge, like `kube.queue_depth`: one short admin session with the broker,
asking for the topic's partitions, their first and last offsets and the group's
committed offsets. Lag is what the group would still have to process; 0 means every
record published has been processed and committed, so Kafka may go.

Anything that goes wrong raises, so that the caller keeps Kafka rather than guess.
A topic that does not exist holds no job (z2m's Kafka creates no topic by itself, and
one deleted took its records with it): its lag is 0, or a demotion from a stage-5 app
that never published would wait forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

UNKNOWN_TOPIC = 3


def group_lag(servers: str, topic: str, group: str, timeout: float = 10.0) -> int:
    """Records of `topic` that `group` has not committed past, summed over partitions.

    Synchronous (the reconciler runs in a thread of its own); `timeout` bounds it all.
    """
    return asyncio.run(asyncio.wait_for(_lag(servers, topic, group), timeout))


async def _lag(servers: str, topic: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    try:
        await admin.start()
        await consumer.start()
        (described,) = await admin.describe_topics([topic])
        if described.get("error_code") == UNKNOWN_TOPIC:
            return 0
        if described.get("error_code"):
            raise LookupError(f"describing topic {topic!r}: error {described['error_code']}")
        parts = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        if not parts:
            raise LookupError(f"topic {topic!r} has no partitions yet")
        committed = await _committed(admin, group, parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
    finally:
        await consumer.stop()
        await admin.close()
    lag = 0
    for tp in parts:
        meta = committed.get(tp)
        # Where the group never committed it would start at the first record kept.
        done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        lag += max(ends[tp] - done, 0)
    return lag


async def _committed(
    admin: AIOKafkaAdminClient, group: str, parts: list[TopicPartition]
) -> dict[TopicPartition, Any]:
    # A fresh cluster makes its offsets topic on the first group query; until its leader
    # is elected the coordinator is "not available", which is retriable.
    for attempt in range(20):
        try:
            return dict(await admin.list_consumer_group_offsets(group, partitions=parts))
        except KafkaError as exc:
            if not exc.retriable or attempt == 19:
                raise
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")
