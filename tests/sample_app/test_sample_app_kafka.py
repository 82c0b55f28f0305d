"""The sample app's Kafka path against a real single-node KRaft Kafka on loopback.

Kafka runs from its Maven Central jars with the image's own start script
(`tests.services.kafka`). Every test gets a topic and a consumer group of its own.
Asserted: jobs published to the topic are processed by the group and their offsets
committed; a worker killed mid-job loses no job and the effect happens once; a
restarted broker keeps its topic and offsets; and moving between RabbitMQ and Kafka
in either direction loses no accepted job, the old source drained by its workers.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import psycopg
import pytest

from sample_app.jobs import QUEUE, FanoutJob, queue_depth
from sample_app.streaming import Stream, Topic, group_lag
from tests.conftest import report
from tests.sample_app.test_sample_app_services import post, sign_up
from tests.services import Kafka, SampleApp, ScratchDatabase, kafka, wait_for

pytestmark = pytest.mark.services

StartApp = Callable[..., SampleApp]


@pytest.fixture
def topic(kafka_service: Kafka) -> Topic:
    """A topic and group no other test uses, with three partitions."""
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    return Topic(kafka_service.servers, name, f"workers-{name}", partitions=3)


def kafka_env(topic: Topic) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": topic.servers,
        "KAFKA_TOPIC": topic.name,
        "KAFKA_GROUP": topic.group,
        "KAFKA_PARTITIONS": str(topic.partitions),
    }


def lag(topic: Topic) -> int:
    return asyncio.run(group_lag(topic))


def done_jobs(database: ScratchDatabase) -> int:
    return int(database.query("SELECT count(*) FROM processed_jobs")[0][0])


def notified_posts(database: ScratchDatabase) -> set[int]:
    return {int(r[0]) for r in database.query("SELECT DISTINCT post_id FROM notifications")}


def author_and_fan(app: SampleApp) -> tuple[object, int]:
    author, author_id = sign_up(app, "author")
    fan, _ = sign_up(app, "fan")
    assert fan.post(f"/api/users/{author_id}/follow").status_code == 204
    return author, author_id


def test_jobs_published_to_the_topic_are_processed_and_their_offsets_committed(
    database: ScratchDatabase, topic: Topic, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, **kafka_env(topic)}
    app = start_app(ready="/readyz?strict=1", **env)
    author, _ = author_and_fan(app)
    created = [post(author, f"post {i}") for i in range(10)]  # type: ignore[arg-type]
    assert {c["fanout"] for c in created} == {"queued"}
    assert lag(topic) == 10  # nobody consumed yet: every job waits in the topic
    worker = start_app(ready="/readyz?strict=1", ROLE="worker", **env)
    wait_for(lambda: done_jobs(database) == 10, 30, "ten jobs done")
    assert notified_posts(database) == {int(c["id"]) for c in created}  # type: ignore[call-overload]
    wait_for(lambda: lag(topic) == 0, 20, "offsets committed")
    assert worker.metric("app_jobs_processed_total", outcome="done") == 10
    assert app.metric("app_jobs_published_total") == 10


def test_the_web_process_exports_the_group_lag_as_the_queue_depth_promotion_reads(
    database: ScratchDatabase, topic: Topic, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, **kafka_env(topic)}
    app = start_app(ready="/readyz?strict=1", **env)
    author, _ = author_and_fan(app)
    for i in range(7):
        assert post(author, f"post {i}")["fanout"] == "queued"  # type: ignore[arg-type]
    # No worker yet: the jobs wait in the topic, and the web process says so.
    wait_for(lambda: app.metric("app_queue_depth") == 7, 20, "depth 7 with no worker")
    assert lag(topic) == 7
    start_app(ready="/readyz?strict=1", ROLE="worker", **env)
    wait_for(lambda: done_jobs(database) == 7, 30, "seven jobs done")
    wait_for(lambda: app.metric("app_queue_depth") == 0, 30, "depth 0 once the group caught up")


def test_a_worker_killed_mid_job_loses_no_job_and_the_job_is_done_once(
    database: ScratchDatabase, topic: Topic, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, **kafka_env(topic)}
    app = start_app(**env)
    doomed = start_app(ready="/readyz?strict=1", ROLE="worker", **env)
    author, _ = author_and_fan(app)
    with psycopg.connect(database.url) as blocker:
        blocker.execute("LOCK TABLE notifications IN EXCLUSIVE MODE")
        created = post(author, "fan-out")  # type: ignore[arg-type]
        assert created["fanout"] == "queued"
        wait_for(
            lambda: (
                database.query(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO notifications%'"
                )
                == [(1,)]
            ),
            15,
            "worker blocked mid-job",
        )
        doomed.kill(signal.SIGKILL)
        blocker.rollback()
    assert done_jobs(database) == 0
    assert lag(topic) == 1  # the offset was never committed
    survivor = start_app(ROLE="worker", **env)
    wait_for(lambda: done_jobs(database) == 1, 60, "the job taken over by the group")
    assert survivor.metric("app_jobs_processed_total", outcome="done") == 1
    wait_for(lambda: lag(topic) == 0, 20, "offset committed")


def test_a_job_delivered_twice_is_done_once(
    database: ScratchDatabase, topic: Topic, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, **kafka_env(topic)}
    app = start_app(**env)
    _, author_id = author_and_fan(app)
    post_id = int(
        database.query("INSERT INTO posts (author_id, body) VALUES (1, 'x') RETURNING id")[0][0]
    )
    job = FanoutJob.new(post_id=post_id, author_id=author_id)

    async def publish_twice() -> None:
        stream = Stream(topic)
        await stream.connect_forever()
        try:
            await stream.publish(job)
            await stream.publish(job)
        finally:
            await stream.close()

    asyncio.run(publish_twice())
    worker = start_app(ROLE="worker", **env)
    wait_for(
        lambda: worker.metric("app_jobs_processed_total", outcome="duplicate") == 1, 30, "both"
    )
    assert worker.metric("app_jobs_processed_total", outcome="done") == 1
    assert notified_posts(database) == {post_id}


def test_workers_beyond_the_partitions_get_no_partition_and_the_group_still_drains(
    database: ScratchDatabase, topic: Topic, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, **kafka_env(topic)}
    app = start_app(**env)
    workers = [start_app(ready="/readyz?strict=1", ROLE="worker", **env) for _ in range(4)]
    author, _ = author_and_fan(app)
    for i in range(30):
        post(author, f"post {i}")  # type: ignore[arg-type]
    wait_for(lambda: done_jobs(database) == 30, 60, "thirty jobs done")
    per_worker = [w.metric("app_jobs_processed_total", outcome="done") for w in workers]
    report(f"kafka: 30 jobs over 3 partitions and 4 workers: {per_worker}")
    assert sum(per_worker) == 30
    assert per_worker.count(0) >= 1  # three partitions keep at most three workers busy


def test_a_restarted_broker_keeps_its_topic_and_the_jobs_not_yet_consumed(
    database: ScratchDatabase, tmp_path: Path, start_app: StartApp
) -> None:
    with kafka(tmp_path) as own:
        topic = Topic(own.servers, "jobs", "workers", partitions=2)
        env = {"DATABASE_URL": database.url, **kafka_env(topic)}
        app = start_app(ready="/readyz?strict=1", **env)
        author, _ = author_and_fan(app)
        created = [post(author, f"post {i}") for i in range(5)]  # type: ignore[arg-type]
        assert {c["fanout"] for c in created} == {"queued"}
        report(f"kafka: broker RSS {own.rss_bytes() / 2**20:.0f} MiB after use (-Xmx384m)")
        own.stop()
        started = time.monotonic()
        own.start()  # the same data dir: not formatted again
        report(f"kafka: restart on its old data took {time.monotonic() - started:.1f} s")
        assert "Formatting" not in own.output()
        start_app(ROLE="worker", **env)
        wait_for(lambda: done_jobs(database) == 5, 60, "the five jobs from before the restart")
        wait_for(lambda: lag(topic) == 0, 20, "offsets committed")


# --------------------------------------------------------------------------- moves


def rabbit_depth(url: str) -> int:
    async def ask() -> int:
        connection = await aio_pika.connect(url)
        async with connection:
            return await queue_depth(await connection.channel(), QUEUE)

    return asyncio.run(ask())


def test_moving_from_rabbitmq_to_kafka_and_back_loses_no_accepted_job(
    database: ScratchDatabase, topic: Topic, broker_url: str, start_app: StartApp
) -> None:
    """Each move as z2m makes it: the old source's workers drain it while new jobs go on."""
    rabbit = {"DATABASE_URL": database.url, "BROKER_URL": broker_url}
    stream = {"DATABASE_URL": database.url, **kafka_env(topic)}
    # Stage 4: web pods publish to RabbitMQ; its worker is held back so jobs wait there.
    old_app = start_app(**rabbit)
    author, _ = author_and_fan(old_app)
    accepted = [post(author, f"4: {i}")["id"] for i in range(8)]  # type: ignore[arg-type]
    assert rabbit_depth(broker_url) == 8
    # 4 -> 5: the new web pod publishes to Kafka while RabbitMQ still holds jobs.
    new_app = start_app(ready="/readyz?strict=1", **stream)
    new_author = new_app.client()
    new_author.cookies.update(author.cookies)  # type: ignore[attr-defined]
    for i in range(8):
        created = post(new_author, f"5: {i}")
        assert created["fanout"] == "queued"
        accepted.append(created["id"])
    old_app.kill(signal.SIGTERM)
    # RabbitMQ's worker drains it; Kafka's group takes the topic.
    start_app(ROLE="worker", **rabbit)
    start_app(ROLE="worker", **stream)
    wait_for(lambda: rabbit_depth(broker_url) == 0, 30, "RabbitMQ drained")
    wait_for(lambda: lag(topic) == 0, 30, "Kafka's group caught up")
    wait_for(lambda: done_jobs(database) == 16, 30, "sixteen jobs done")
    # 5 -> 4: RabbitMQ again; the topic keeps jobs that only the group can drain.
    back_app = start_app(ready="/readyz?strict=1", **rabbit)
    back_author = back_app.client()
    back_author.cookies.update(author.cookies)  # type: ignore[attr-defined]
    for i in range(8):
        created = post(back_author, f"4 again: {i}")
        assert created["fanout"] == "queued"
        accepted.append(created["id"])
    for i in range(4):
        accepted.append(post(new_author, f"5, late: {i}")["id"])
    wait_for(lambda: lag(topic) == 0 and rabbit_depth(broker_url) == 0, 30, "both drained")
    wait_for(lambda: done_jobs(database) == 28, 30, "every accepted job done")
    assert notified_posts(database) == {int(i) for i in accepted}  # type: ignore[call-overload]
