"""The operator moves the rows into the shards at 5 -> 6 and back at 6 -> 5, on KWOK.

The pods are fake (KWOK); the databases are real. Three PostgreSQL servers on
loopback with `wal_level = logical` stand in for stage 5's database and the two
shards, and `spec.database.moveUrls` points the operator's move at them (the
`move_urls` fixture gives the source the sample app's schema; the shards start empty).
Checked: every row ends on its user's shard exactly once and comes back, the app's
Deployments get `DATABASE_SHARDS` only once the source is fenced, and status says
where the move is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import psycopg
import pytest
from kubernetes.client import ApiClient

from sample_app import db
from tests import services
from tests.cluster import helpers as h
from tests.conftest import eventually, report
from z2m import api, kube, sharding

pytestmark = pytest.mark.cluster
NAME = "shop"
USERS = 120
POSTS = 1200
TABLES = {
    "users": "SELECT id, name FROM users",
    "posts": "SELECT id, author_id, body FROM posts",
    "follows": "SELECT follower_id, followee_id FROM follows",
    "notifications": "SELECT user_id, post_id FROM notifications",
}
KEYS = {"users": 0, "posts": 1, "follows": 0, "notifications": 0}
"""Which column of each query above holds the user the row belongs to."""


def seed(url: str) -> None:
    services.seed_users(url, USERS, POSTS, notifications=True)


async def migrate(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await db.migrate(conn)


def rows(url: str) -> dict[str, set[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {t: set(conn.execute(q.encode()).fetchall()) for t, q in TABLES.items()}


def total(found: dict[str, set[tuple[Any, ...]]]) -> int:
    return sum(len(r) for r in found.values())


def fenced(url: str) -> bool:
    """Whether a new session on `url` starts read-only (the move's fence)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW default_transaction_read_only").fetchone()
        return row is not None and row[0] == "on"


def app_env(api_client: ApiClient, namespace: str, deployment: str) -> dict[str, str]:
    apps = kubernetes.client.AppsV1Api(api_client)
    container = apps.read_namespaced_deployment(deployment, namespace).spec.template.spec
    return {e.name: e.value or "" for e in container.containers[0].env}


def events(api_client: ApiClient, namespace: str) -> list[str]:
    found = kubernetes.client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [e.reason for e in sorted(found, key=lambda e: e.metadata.creation_timestamp)]


def watch_move(
    api_client: ApiClient, namespace: str, stage: int, fence_url: str, timeout: float = 180
) -> tuple[dict[str, Any], list[str]]:
    """Poll until Ready at `stage`, recording the DatabaseSharded reasons seen.

    On every poll: if the app's Deployment already carries the layout the move ends
    in, the databases it left must be fenced by then.
    """
    reasons: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        obj = h.get(api_client, namespace, NAME)
        sharded = h.condition(obj, "DatabaseSharded")
        if sharded and (not reasons or reasons[-1] != sharded["reason"]):
            reasons.append(sharded["reason"])
        env = app_env(api_client, namespace, f"{NAME}-app")
        if ("DATABASE_SHARDS" in env) == (stage == 6):
            assert fenced(fence_url), "the app switched before the source was fenced"
        ready = h.condition(obj, "Ready")
        st = obj.get("status") or {}
        if (
            st.get("stage") == stage
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and ready
            and ready["status"] == "True"
        ):
            return obj, reasons
        assert time.monotonic() < deadline, f"not Ready at {stage}; last: {st}"
        time.sleep(0.2)


def test_5_to_6_moves_every_row_onto_its_shard_and_6_to_5_merges_them_back(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    sentinel_watching: Callable[[str], str],
    move_urls: dict[str, Any],
) -> None:
    source, shards = move_urls["source"], move_urls["shards"]
    seed(source)
    before = rows(source)
    spec = {
        "queue": {"managementUrl": empty_queue},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
        "database": {"moveUrls": move_urls},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    obj = h.wait_ready(api_client, namespace, NAME, 5)
    assert h.condition(obj, "DatabaseSharded") is None
    assert "DATABASE_SHARDS" not in app_env(api_client, namespace, f"{NAME}-app")

    started = time.monotonic()
    h.set_stage(api_client, namespace, NAME, 6)
    obj, split_reasons = watch_move(api_client, namespace, 6, source)
    split_seconds = time.monotonic() - started
    st = obj["status"]
    assert st["databaseLayout"] == "shards"
    assert st["databaseMove"]["direction"] == "split" and st["databaseMove"]["phase"] == "done"
    split_fence = st["databaseMove"]["fenceSeconds"]
    assert split_fence is not None and split_fence >= 0
    sharded = h.condition(obj, "DatabaseSharded")
    assert sharded is not None and (sharded["status"], sharded["reason"]) == ("True", "Moved")
    assert split_reasons[-1] == "Moved", split_reasons
    assert set(split_reasons) <= {"NotMoved", "Moving", "Moved"}, split_reasons
    # Every row is on its user's shard, exactly once; nothing is lost.
    on_shards = [rows(url) for url in shards]
    for index, found in enumerate(on_shards):
        for table, got in found.items():
            assert all(sharding.shard_of(r[KEYS[table]], 2) == index for r in got), table
    for table in TABLES:
        assert on_shards[0][table] | on_shards[1][table] == before[table], table
        assert not on_shards[0][table] & on_shards[1][table], table
    assert fenced(source)
    # The shards started empty: the move gave them the moved tables' schema, and the app's
    # own migrations still apply there (what the app runs when it reaches a shard).
    for url in shards:
        with psycopg.connect(url) as conn:
            index = conn.execute("SELECT to_regclass('posts_author_idx')").fetchone()
            assert index is not None and index[0] is not None
        assert asyncio.run(migrate(url)) == [1, 2]
    for deployment in (f"{NAME}-app", f"{NAME}-service-users"):
        urls = app_env(api_client, namespace, deployment)["DATABASE_SHARDS"].split(",")
        assert [u.rsplit("@", 1)[1] for u in urls] == [
            f"{NAME}-db-shard-{i}:5432/app" for i in range(2)
        ]

    # The app writes on the shards after the split (a user's post on their shard).
    with psycopg.connect(shards[1], autocommit=True) as conn:
        conn.execute("INSERT INTO posts (author_id, body) VALUES (1, 'after-the-split')")
    with psycopg.connect(shards[0], autocommit=True) as conn:
        conn.execute("INSERT INTO users (name) VALUES ('new-on-shard-0')")
    now_on_shards = [rows(url) for url in shards]
    expected = {t: now_on_shards[0][t] | now_on_shards[1][t] for t in TABLES}
    assert total(expected) == total(before) + 2

    started = time.monotonic()
    h.set_stage(api_client, namespace, NAME, 5)
    obj, merge_reasons = watch_move(api_client, namespace, 5, shards[0])
    merge_seconds = time.monotonic() - started
    st = obj["status"]
    assert st.get("databaseLayout") == "single"
    assert st["databaseMove"]["direction"] == "merge" and st["databaseMove"]["phase"] == "done"
    merge_fence = st["databaseMove"]["fenceSeconds"]
    sharded = h.condition(obj, "DatabaseSharded")
    assert sharded is not None and sharded["reason"] == "Merged", merge_reasons
    back = rows(source)
    assert back == expected
    assert ("new-on-shard-0" in {r[1] for r in back["users"]}) and not fenced(source)
    assert all(fenced(url) for url in shards)
    assert "DATABASE_SHARDS" not in app_env(api_client, namespace, f"{NAME}-app")
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(5, NAME, namespace, **spec))
    claims = h.claims(api_client, namespace)
    assert {f"data-{NAME}-db-shard-{i}-0" for i in range(2)} <= set(claims)
    seen = events(api_client, namespace)
    assert seen.count("ShardMoveDone") == 2 and seen.count("ShardCutover") == 2, seen
    report(
        f"shard move on KWOK: 5->6 split {total(before)} rows into 2 shards, Ready in "
        f"{split_seconds:.1f} s, writes fenced {split_fence:.3f} s; 6->5 merged "
        f"{total(back)} rows back, Ready in {merge_seconds:.1f} s, fenced {merge_fence:.3f} s; "
        f"DatabaseSharded reasons seen at 5->6 {split_reasons}, at 6->5 {merge_reasons}"
    )


def test_a_move_that_cannot_reach_a_shard_is_a_condition_and_an_event_then_resumes(
    api_client: ApiClient,
    namespace: str,
    operator: Any,
    empty_queue: str,
    sentinel_watching: Callable[[str], str],
    move_urls: dict[str, Any],
) -> None:
    seed(move_urls["source"])
    before = rows(move_urls["source"])
    unreachable = {**move_urls, "shards": [move_urls["shards"][0], "postgresql://127.0.0.1:1/app"]}
    spec = {
        "queue": {"managementUrl": empty_queue},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
        "database": {"moveUrls": unreachable},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5)
    h.set_stage(api_client, namespace, NAME, 6)

    def failed() -> dict[str, Any] | None:
        obj = h.get(api_client, namespace, NAME)
        sharded = h.condition(obj, "DatabaseSharded")
        return obj if sharded and sharded["reason"] == "MoveFailed" else None

    obj = eventually(failed, timeout=90)
    sharded = h.condition(obj, "DatabaseSharded")
    assert sharded is not None and "127.0.0.1" in sharded["message"]
    ready = h.condition(obj, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert "the split of the rows runs: failed" in ready["message"]
    eventually(lambda: "ShardMoveFailed" in events(api_client, namespace))
    # The app was not rewired: it keeps stage 5's database, which still takes writes.
    assert "DATABASE_SHARDS" not in app_env(api_client, namespace, f"{NAME}-app")
    assert not fenced(move_urls["source"])

    h.custom(api_client).patch_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        NAME,
        {"spec": {"database": {"moveUrls": move_urls}}},
    )
    obj, reasons = watch_move(api_client, namespace, 6, move_urls["source"])
    assert h.condition(obj, "DatabaseSharded")["reason"] == "Moved", reasons  # type: ignore[index]
    on_shards = [rows(url) for url in move_urls["shards"]]
    for table in TABLES:
        assert on_shards[0][table] | on_shards[1][table] == before[table], table
