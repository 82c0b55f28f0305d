"""How far Kafka's consumer group is behind its topic: the `stream-drained` gate's reading.

I/O at the edge, like `kube.queue_depth`: one short admin session with the broker,
asking for the topic's partitions, their first and last offsets and the group's
committed offsets. Lag is what the group would still have to process; 0 means every
record published has been processed and committed, so Kafka may go.

Anything that goes wrong raises, so that the caller keeps Kafka rather than guess:
a topic that does not exist raises too (the workers make it; until then nothing
proves that no job was published).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


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
        described = await admin.describe_topics([topic])
        if not described or described[0].get("error_code"):
            raise LookupError(f"Kafka has no topic {topic!r}")
        parts = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
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
