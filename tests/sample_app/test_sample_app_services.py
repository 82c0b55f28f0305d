"""End-to-end tests of the sample app against real PostgreSQL, Redis and RabbitMQ.

Every app here is a real ``python -m sample_app`` process; assertions read its
HTTP answers, its /metrics and the databases themselves.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aio_pika
import httpx
import psycopg
import pytest

from sample_app import db as app_db
from sample_app.jobs import QUEUE, FanoutJob
from sample_app.load import run_load
from tests.conftest import eventually, report
from tests.services import (
    Postgres,
    RabbitMQ,
    Redis,
    SampleApp,
    ScratchDatabase,
    sentinel_group,
    wait_for,
)

pytestmark = pytest.mark.services

StartApp = Callable[..., SampleApp]
QUERIES = "app_db_queries_total"


def sign_up(app: SampleApp, name: str) -> tuple[httpx.Client, int]:
    client = app.client()
    response = client.post("/api/users", json={"name": name})
    assert response.status_code == 201, response.text
    return client, int(response.json()["id"])


def post(client: httpx.Client, body: str) -> dict[str, object]:
    response = client.post("/api/posts", json={"body": body})
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()
    return data


def queries(app: SampleApp) -> tuple[float, float]:
    return app.metric(QUERIES, target="primary"), app.metric(QUERIES, target="replica")


# --------------------------------------------------------------------------- stages


def test_app_starts_with_only_database_url_and_serves_writes_and_reads(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url)
    ready = httpx.get(f"{app.url}/readyz").json()
    assert ready["checks"] == {"database": "ok"}
    alice, alice_id = sign_up(app, "alice")
    created = post(alice, "stage two")
    anonymous = app.client()
    response = anonymous.get(f"/api/users/{alice_id}/posts")
    assert [p["body"] for p in response.json()] == ["stage two"]
    assert response.headers["x-cache"] == "off"
    assert created["fanout"] == "inline"
    assert queries(app)[1] == 0
    assert database.query("SELECT count(*) FROM posts") == [(1,)]


def test_app_starts_with_the_full_stage_five_environment(
    database: ScratchDatabase,
    pg_replica: Postgres,
    redis_url: str,
    broker_url: str,
    start_app: StartApp,
) -> None:
    replica_url = pg_replica.dsn_for(database.name)
    full = {
        "DATABASE_URL": database.url,
        "DATABASE_REPLICA_URLS": f"{replica_url},{replica_url}",
        "REDIS_URL": redis_url,
        "BROKER_URL": broker_url,
        "SECRET_KEY": "stage-five-secret-key",
    }
    app = start_app(ready="/readyz?strict=1", **full)
    worker = start_app(ready="/readyz?strict=1", ROLE="worker", **full)
    ready = httpx.get(f"{app.url}/readyz?strict=1").json()
    assert ready["checks"] == {
        "database": "ok",
        "replica0": "ok",
        "replica1": "ok",
        "redis": "ok",
        "broker": "ok",
    }
    author, author_id = sign_up(app, "author")
    fan, _ = sign_up(app, "fan")
    assert fan.post(f"/api/users/{author_id}/follow").status_code == 204
    created = post(author, "to the followers")
    assert created["fanout"] == "queued"
    wait_for(lambda: fan.get("/api/notifications").json() != [], 20, "notification")
    assert fan.get("/api/notifications").json()[0]["post_id"] == created["id"]
    assert app.metric("app_jobs_published_total") == 1
    assert worker.metric("app_jobs_processed_total", outcome="done") == 1
    assert httpx.get(f"{worker.url}/healthz").status_code == 200


# --------------------------------------------------------------------------- replicas


def test_writes_land_on_the_primary_and_anonymous_reads_on_the_replica(
    database: ScratchDatabase, pg_replica: Postgres, start_app: StartApp
) -> None:
    app = start_app(
        DATABASE_URL=database.url, DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name)
    )
    wait_for(lambda: app.client().get("/readyz").json()["checks"]["replica0"] == "ok", 10, "rep")
    writer, writer_id = sign_up(app, "writer")
    primary_before, replica_before = queries(app)
    post(writer, "replicated")
    primary_after_write, replica_after_write = queries(app)
    assert primary_after_write > primary_before
    assert replica_after_write == replica_before
    pg_replica.wait_replayed()
    reader = app.client()
    for _ in range(5):
        assert reader.get(f"/api/users/{writer_id}/posts").json()[0]["body"] == "replicated"
    primary_after_reads, replica_after_reads = queries(app)
    assert replica_after_reads - replica_after_write == 5
    assert primary_after_reads == primary_after_write
    assert pg_replica.execute("SELECT body FROM posts", database.name) == [("replicated",)]


def test_writer_reads_its_own_write_from_the_primary_right_after_writing(
    database: ScratchDatabase, pg_replica: Postgres, start_app: StartApp
) -> None:
    app = start_app(
        DATABASE_URL=database.url, DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name)
    )
    wait_for(lambda: app.client().get("/readyz").json()["checks"]["replica0"] == "ok", 10, "rep")
    writer, writer_id = sign_up(app, "writer")
    post(writer, "mine")
    primary_before, replica_before = queries(app)
    assert writer.get(f"/api/users/{writer_id}/posts").json()[0]["body"] == "mine"
    primary_after, replica_after = queries(app)
    assert (primary_after - primary_before, replica_after - replica_before) == (1, 0)
    # Someone else, who wrote nothing, is served by the replica.
    app.client().get(f"/api/users/{writer_id}/posts")
    assert queries(app)[1] == replica_after + 1


def test_lagging_replica_is_skipped_and_reads_still_see_new_data(
    database: ScratchDatabase, pg_replica: Postgres, start_app: StartApp
) -> None:
    app = start_app(
        DATABASE_URL=database.url, DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name)
    )
    writer, writer_id = sign_up(app, "writer")
    pg_replica.wait_replayed()  # the schema and the user are on the replica
    pg_replica.execute("SELECT pg_wal_replay_pause()")
    try:
        post(writer, "while paused")
        wait_for(
            lambda: app.client().get("/readyz").json()["checks"]["replica0"] == "lagging",
            15,
            "replica reported lagging",
        )
        replica_before = queries(app)[1]
        posts = app.client().get(f"/api/users/{writer_id}/posts").json()
        assert [p["body"] for p in posts] == ["while paused"]
        assert queries(app)[1] == replica_before
        assert pg_replica.execute("SELECT count(*) FROM posts", database.name) == [(0,)]
    finally:
        pg_replica.execute("SELECT pg_wal_replay_resume()")


def test_a_replica_cut_off_from_its_primary_is_not_taken_for_current(
    database: ScratchDatabase, pg_replica: Postgres, start_app: StartApp
) -> None:
    """Disconnected, a replica has replayed all it received: its own LSNs say "no lag".
    The app must not believe that, and must read new data from the primary."""
    app = start_app(
        DATABASE_URL=database.url, DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name)
    )
    writer, writer_id = sign_up(app, "writer")
    pg_replica.wait_replayed()
    reader = app.client()
    wait_for(lambda: reader.get("/readyz").json()["checks"]["replica0"] == "ok", 10, "replica ok")
    ((conninfo,),) = pg_replica.execute("SHOW primary_conninfo")
    pg_replica.execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'")
    pg_replica.execute("SELECT pg_reload_conf()")
    try:
        wait_for(
            lambda: (
                not pg_replica.execute(
                    "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"
                )
            ),
            30,
            "replica cut off",
        )
        post(writer, "after the cut")
        wait_for(
            lambda: reader.get("/readyz").json()["checks"]["replica0"] == "lagging",
            15,
            "cut-off replica reported lagging",
        )
        posts = reader.get(f"/api/users/{writer_id}/posts").json()
        assert [p["body"] for p in posts] == ["after the cut"]
    finally:
        escaped = conninfo.replace("'", "''")
        pg_replica.execute(f"ALTER SYSTEM SET primary_conninfo = '{escaped}'")
        pg_replica.execute("SELECT pg_reload_conf()")
        wait_for(
            lambda: (
                pg_replica.execute("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
            ),
            30,
            "replica streaming again",
        )
    wait_for(lambda: reader.get("/readyz").json()["checks"]["replica0"] == "ok", 15, "replica back")


def test_stopped_replica_does_not_fail_reads_and_is_used_again_once_back(
    database: ScratchDatabase, pg_replica: Postgres, start_app: StartApp
) -> None:
    app = start_app(
        DATABASE_URL=database.url, DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name)
    )
    writer, writer_id = sign_up(app, "writer")
    post(writer, "survives")
    pg_replica.wait_replayed()
    reader = app.client()
    wait_for(lambda: reader.get("/readyz").json()["checks"]["replica0"] == "ok", 10, "replica ok")
    reader.get(f"/api/users/{writer_id}/posts")  # warm the replica pool
    pg_replica.stop()
    try:
        for _ in range(10):
            response = reader.get(f"/api/users/{writer_id}/posts")
            assert response.status_code == 200
            assert response.json()[0]["body"] == "survives"
        ready = reader.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["replica0"] == "down"
        assert reader.get("/readyz?strict=1").status_code == 503
    finally:
        pg_replica.start()
    wait_for(lambda: reader.get("/readyz").json()["checks"]["replica0"] == "ok", 15, "replica back")
    replica_before = queries(app)[1]
    reader.get(f"/api/users/{writer_id}/posts")
    assert queries(app)[1] == replica_before + 1


# --------------------------------------------------------------------------- cache


def test_second_read_is_a_cache_hit_and_a_write_invalidates_it(
    database: ScratchDatabase, redis_url: str, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url, REDIS_URL=redis_url)
    writer, writer_id = sign_up(app, "writer")
    post(writer, "first")
    reader = app.client()
    path = f"/api/users/{writer_id}/posts"
    assert reader.get(path).headers["x-cache"] == "miss"
    queries_before = queries(app)[0]
    second = reader.get(path)
    assert second.headers["x-cache"] == "hit"
    assert queries(app)[0] == queries_before  # served without touching the database
    assert app.metric("app_cache_requests_total", result="hit") == 1
    post(writer, "second")
    after_write = reader.get(path)
    assert after_write.headers["x-cache"] == "miss"
    assert [p["body"] for p in after_write.json()] == ["second", "first"]


def test_concurrent_misses_on_a_hot_key_share_one_database_query(
    database: ScratchDatabase, redis_url: str, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url, REDIS_URL=redis_url)
    writer, writer_id = sign_up(app, "writer")
    post(writer, "hot")
    before = queries(app)[0]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get(f"/api/users/{writer_id}/posts") for _ in range(30))
            )
        return [r.status_code for r in responses]

    # Stall the load with a table lock so all 30 requests miss at the same time.
    with psycopg.connect(database.url) as blocker, ThreadPoolExecutor(1) as pool:
        blocker.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
        statuses = pool.submit(lambda: asyncio.run(burst()))
        # Every request has looked in Redis, missed, and joined (or started) a load.
        wait_for(lambda: app.metric("app_cache_requests_total") >= 30, 15, "all 30 missed")
        waiting = database.query(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT id, author_id%'"
        )
        blocker.rollback()
        assert statuses.result(timeout=30) == [200] * 30
    # Without single-flight every miss would query (30, capped by the pool at 10 at once).
    assert waiting == [(1,)]
    assert queries(app)[0] - before == 1


def test_redis_down_still_serves_requests_and_the_cache_returns_when_redis_does(
    database: ScratchDatabase, redis_service: Redis, redis_url: str, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url, REDIS_URL=redis_url)
    writer, writer_id = sign_up(app, "writer")
    reader = app.client()
    redis_service.stop()
    try:
        started = time.monotonic()
        post(writer, "no cache")
        for _ in range(10):
            response = reader.get(f"/api/users/{writer_id}/posts")
            assert response.status_code == 200
            assert response.headers["x-cache"] == "error"
        assert (
            time.monotonic() - started < 15
        )  # no hang on the dead cache (a hang would be unbounded)
        assert app.metric("app_cache_requests_total", result="error") == 10
        ready = reader.get("/readyz")
        assert (ready.status_code, ready.json()["down"]) == (200, ["redis"])
        assert reader.get("/readyz?strict=1").status_code == 503
    finally:
        redis_service.start()
    path = f"/api/users/{writer_id}/posts"
    wait_for(lambda: reader.get(path).headers["x-cache"] == "hit", 40, "cache back in use")


def test_after_a_sentinel_failover_cache_writes_reach_the_new_master(
    database: ScratchDatabase, start_app: StartApp, tmp_path: Path
) -> None:
    with sentinel_group(tmp_path) as group:
        app = start_app(
            DATABASE_URL=database.url,
            REDIS_SENTINELS=group.sentinels,
            REDIS_MASTER_NAME="z2m",
            REDIS_PASSWORD=group.password,
        )
        writer, writer_id = sign_up(app, "writer")
        reader = app.client()
        path, key = f"/api/users/{writer_id}/posts", f"user_posts:{writer_id}"
        post(writer, "before")
        assert reader.get(path).headers["x-cache"] == "miss"
        assert reader.get(path).headers["x-cache"] == "hit"
        old, new = group.redis_ports
        assert group.master_port() == old and group.client(old).exists(key)

        group.kill(old)
        killed = time.monotonic()

        attempts = iter(range(10**6))

        def written_on_the_new_master() -> bool:
            # A post drops the cached list; the next read misses and stores it again, so
            # the new post's body on the promoted Redis proves a write that reached it.
            body = f"after {next(attempts)}"
            post(writer, body)
            reader.get(path)
            promoted = group.client(new)
            cached = promoted.get(key)
            return promoted.info("replication")["role"] == "master" and body in str(cached)

        eventually(written_on_the_new_master, timeout=30)
        seconds = time.monotonic() - killed
        report(
            f"sentinel failover: cache writes reach the new master {seconds:.1f} s after SIGKILL"
        )
        assert reader.get(path).headers["x-cache"] == "hit"
        assert app.metric("app_cache_requests_total", result="hit") >= 2


# --------------------------------------------------------------------------- jobs


def _notifications(database: ScratchDatabase, post_id: object) -> int:
    rows = database.query(f"SELECT count(*) FROM notifications WHERE post_id = {int(post_id)}")
    return int(rows[0][0])


def test_worker_killed_mid_job_loses_no_job_and_the_job_is_done_once(
    database: ScratchDatabase, broker_url: str, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, "BROKER_URL": broker_url}
    app = start_app(**env)
    doomed = start_app(ROLE="worker", **env)
    author, author_id = sign_up(app, "author")
    for name in ("fan1", "fan2"):
        fan, _ = sign_up(app, name)
        assert fan.post(f"/api/users/{author_id}/follow").status_code == 204
    # Hold a lock that the job's INSERT into notifications must wait for, so the
    # worker is provably in the middle of the job when it is killed.
    with psycopg.connect(database.url) as blocker:
        blocker.execute("LOCK TABLE notifications IN EXCLUSIVE MODE")
        created = post(author, "fan-out")
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
    assert _notifications(database, created["id"]) == 0
    survivor = start_app(ROLE="worker", **env)
    wait_for(lambda: _notifications(database, created["id"]) == 2, 20, "job redelivered")
    assert database.query("SELECT count(*) FROM processed_jobs") == [(1,)]
    assert survivor.metric("app_jobs_processed_total", outcome="done") == 1


def test_a_job_delivered_twice_is_done_once(
    database: ScratchDatabase, rabbitmq_service: RabbitMQ, broker_url: str, start_app: StartApp
) -> None:
    env = {"DATABASE_URL": database.url, "BROKER_URL": broker_url}
    app = start_app(**env)
    _, author_id = sign_up(app, "author")
    fan, _ = sign_up(app, "fan")
    fan.post(f"/api/users/{author_id}/follow")
    post_id = int(
        database.query("INSERT INTO posts (author_id, body) VALUES (1, 'x') RETURNING id")[0][0]
    )
    job = FanoutJob.new(post_id=post_id, author_id=author_id)

    async def publish_twice() -> None:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            for _ in range(2):
                message = aio_pika.Message(job.to_bytes(), delivery_mode=2)
                await channel.default_exchange.publish(message, routing_key=QUEUE)

    asyncio.run(publish_twice())
    worker = start_app(ROLE="worker", **env)
    wait_for(
        lambda: worker.metric("app_jobs_processed_total", outcome="duplicate") == 1, 20, "both"
    )
    assert worker.metric("app_jobs_processed_total", outcome="done") == 1
    assert _notifications(database, post_id) == 1


def test_broker_down_runs_jobs_inline_and_queueing_resumes_when_it_returns(
    database: ScratchDatabase, rabbitmq_service: RabbitMQ, broker_url: str, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url, BROKER_URL=broker_url)
    author, author_id = sign_up(app, "author")
    fan, _ = sign_up(app, "fan")
    fan.post(f"/api/users/{author_id}/follow")
    rabbitmq_service.stop()
    try:
        started = time.monotonic()
        created = post(author, "broker is down")
        assert time.monotonic() - started < 20  # no hang waiting for the dead broker
        assert created["fanout"] == "inline"
        assert _notifications(database, created["id"]) == 1
        ready = app.client().get("/readyz")
        assert (ready.status_code, ready.json()["down"]) == (200, ["broker"])
    finally:
        rabbitmq_service.start()
    wait_for(lambda: app.client().get("/readyz").json()["down"] == [], 60, "broker back")
    assert post(author, "broker is back")["fanout"] == "queued"


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    "secret_key", ["shared-secret-key-123", None], ids=["SECRET_KEY", "db-key"]
)
def test_two_app_processes_share_sessions(
    database: ScratchDatabase, start_app: StartApp, secret_key: str | None
) -> None:
    env = {"DATABASE_URL": database.url}
    if secret_key:
        env["SECRET_KEY"] = secret_key
    first, second = start_app(**env), start_app(**env)
    client, user_id = sign_up(first, "roamer")
    cookie = client.cookies["z2m_session"]
    other = httpx.Client(base_url=second.url, cookies={"z2m_session": cookie})
    assert other.get("/api/me").json()["id"] == user_id
    assert httpx.get(f"{second.url}/api/me").status_code == 401


def test_session_signed_by_an_app_with_another_key_is_rejected(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    first = start_app(DATABASE_URL=database.url, SECRET_KEY="first-secret-key-000")
    second = start_app(DATABASE_URL=database.url, SECRET_KEY="second-secret-key-00")
    client, _ = sign_up(first, "roamer")
    other = httpx.Client(
        base_url=second.url, cookies={"z2m_session": client.cookies["z2m_session"]}
    )
    assert other.get("/api/me").status_code == 401


# --------------------------------------------------------------------------- migrations


def test_concurrent_migrations_apply_each_version_exactly_once(database: ScratchDatabase) -> None:
    async def migrate_once() -> list[int]:
        async with await psycopg.AsyncConnection.connect(database.url, autocommit=True) as conn:
            return await app_db.migrate(conn)

    async def migrate_concurrently() -> list[list[int]]:
        return await asyncio.gather(*(migrate_once() for _ in range(8)))

    results = asyncio.run(migrate_concurrently())
    versions = [v for v, _ in app_db.MIGRATIONS]
    assert sorted(v for applied in results for v in applied) == versions
    assert database.query("SELECT version FROM schema_version ORDER BY 1") == [
        (v,) for v in versions
    ]


def test_app_processes_starting_together_on_an_empty_database_all_become_ready(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    with ThreadPoolExecutor(4) as pool:
        apps = list(pool.map(lambda _: start_app(DATABASE_URL=database.url), range(4)))
    assert all(httpx.get(f"{a.url}/readyz").status_code == 200 for a in apps)
    assert database.query("SELECT count(*) FROM schema_version") == [(len(app_db.MIGRATIONS),)]


# --------------------------------------------------------------------------- edges


def test_readyz_is_503_naming_the_database_when_the_primary_is_unreachable(
    start_app: StartApp,
) -> None:
    app = start_app(ready="/healthz", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    response = httpx.get(f"{app.url}/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["database"]
    assert httpx.get(f"{app.url}/api/users/1/posts").status_code == 503


def test_static_assets_are_served_with_a_one_year_immutable_cache_header(
    start_app: StartApp,
) -> None:
    app = start_app(ready="/healthz")
    response = httpx.get(f"{app.url}/static/app.css")
    assert response.status_code == 200
    assert "body" in response.text
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_metrics_expose_every_name_the_operator_queries(
    database: ScratchDatabase,
    pg_replica: Postgres,
    redis_url: str,
    broker_url: str,
    start_app: StartApp,
) -> None:
    app = start_app(
        DATABASE_URL=database.url,
        DATABASE_REPLICA_URLS=pg_replica.dsn_for(database.name),
        REDIS_URL=redis_url,
        BROKER_URL=broker_url,
    )
    writer, writer_id = sign_up(app, "writer")
    post(writer, "metrics")
    app.client().get(f"/api/users/{writer_id}/posts")
    text = httpx.get(f"{app.url}/metrics").text
    for name in (
        'app_http_requests_total{method="POST",route="/api/posts",status="201"}',
        'app_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/api/posts"}',
        "app_http_requests_in_flight ",
        'app_db_queries_total{target="primary"}',
        'app_db_query_duration_seconds_count{target="primary"}',
        'app_db_pool_connections{state="in_use",target="primary"}',
        'app_db_pool_connections{state="idle",target="replica"}',
        'app_cache_requests_total{result="miss"}',
        "app_queue_depth ",
        "app_jobs_published_total ",
        "app_job_duration_seconds_count ",
    ):
        assert name in text, name
    assert "app_jobs_processed_total" in text or "app_jobs_processed" in text


def test_load_generator_reports_throughput_latency_and_no_errors(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url)
    result = asyncio.run(run_load([app.url], rps=40, duration=2, users=3, seed=1))
    assert result.errors == 0 and result.dropped == 0
    assert result.requests == 80
    # Latency is a benchmark figure, not a test bound; here only that it is measured.
    assert 0 < result.p50 <= result.p95
    assert set(result.statuses) <= {"200", "201"}
    posts = database.query("SELECT count(*) FROM posts")[0][0]
    assert posts > 3  # the 3 set-up posts plus the load's writes


def test_sigterm_drains_keep_alive_clients_off_the_pod_then_stops(
    start_app: Callable[..., SampleApp],
) -> None:
    """Told to stop, the web server keeps answering, leaves the load balancer (readyz 503)
    and closes each connection after its response, then exits by itself."""
    app = start_app()
    with httpx.Client(base_url=app.url, timeout=10) as client:
        before = client.get("/healthz")
        assert before.status_code == 200 and before.headers.get("connection") != "close"
        app.process.send_signal(signal.SIGTERM)
        wait_for(lambda: client.get("/readyz").status_code == 503, 10, "draining")
        during = client.get("/healthz")
        assert during.status_code == 200 and during.headers["connection"] == "close"
    assert app.process.wait(timeout=30) == 0, app.output()
