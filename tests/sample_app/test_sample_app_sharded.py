"""The sample app on two shards (``DATABASE_SHARDS``), over HTTP, on real PostgreSQL.

Two fresh databases on the session's server are the shards, with their id
sequences set as the move sets them at cutover (shard *k* hands out ids
``≡ k (mod 2)``).  Every user's rows must land on shard ``user_id % 2`` and be
read back from there; a post looked up by id, a search and the notification
fan-out cross shards.  Without ``DATABASE_SHARDS`` the app is the unsharded one
(the other sample-app tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import psycopg
import pytest

from sample_app import db
from tests.services import Postgres, SampleApp, ScratchDatabase
from z2m import sharding

pytestmark = pytest.mark.services

SHARDS = 2


def shard_database(pg: Postgres, index: int) -> ScratchDatabase:
    """A fresh database with the app's schema as a split leaves shard ``index``.

    Its sequences step by the shard count from a value of its own, and the foreign
    keys that point at another shard's rows are gone.
    """
    scratch = ScratchDatabase.create(pg)
    move = sharding.Move("fixture", sources=1, targets=SHARDS)

    async def prepare() -> None:
        async with await psycopg.AsyncConnection.connect(scratch.url, autocommit=True) as conn:
            await db.migrate(conn)
            for table in move.tables:
                if table.sequence is not None:
                    first, step = sharding.sequence_settings(move, 0, index)
                    await conn.execute(
                        f"ALTER SEQUENCE {table.sequence} INCREMENT BY {step} RESTART WITH {first}"
                    )
            for table_name, constraint in sharding.CROSS_SHARD_FOREIGN_KEYS:
                await conn.execute(f"ALTER TABLE {table_name} DROP CONSTRAINT {constraint}")

    asyncio.run(prepare())
    return scratch


@pytest.fixture
def shard_dbs(pg: Postgres) -> list[ScratchDatabase]:
    return [shard_database(pg, i) for i in range(SHARDS)]


@pytest.fixture
def app(shard_dbs: list[ScratchDatabase], start_app: Callable[..., SampleApp]) -> SampleApp:
    urls = ",".join(s.url for s in shard_dbs)
    return start_app(DATABASE_SHARDS=urls, SECRET_KEY="a-test-secret-key-0123")


def sign_up(app: SampleApp, name: str) -> tuple[httpx.Client, int]:
    client = app.client()
    response = client.post("/api/users", json={"name": name})
    assert response.status_code == 201, response.text
    return client, int(response.json()["id"])


def ids(scratch: ScratchDatabase, sql: str) -> set[int]:
    return {int(row[0]) for row in scratch.query(sql)}


def test_users_and_their_posts_live_on_the_shard_of_their_id(
    app: SampleApp, shard_dbs: list[ScratchDatabase]
) -> None:
    users = dict(sign_up(app, f"user{i}") for i in range(12))
    posts: dict[int, int] = {}
    for client, user in users.items():
        response = client.post("/api/posts", json={"body": f"hello from {user}"})
        assert response.status_code == 201, response.text
        posts[int(response.json()["id"])] = user
    for index, scratch in enumerate(shard_dbs):
        mine = {u for u in users.values() if u % SHARDS == index}
        assert ids(scratch, "SELECT id FROM users") == mine
        assert ids(scratch, "SELECT author_id FROM posts") == mine
    # Both shards took users: the name hash spreads them.
    assert {u % SHARDS for u in users.values()} == {0, 1}
    for client, user in users.items():
        assert client.get("/api/me").json()["id"] == user
        listed = client.get(f"/api/users/{user}/posts").json()
        assert [p["author_id"] for p in listed] == [user]
    for post_id, author in posts.items():
        assert app.client().get(f"/api/posts/{post_id}").json()["author_id"] == author


def test_a_follow_across_shards_notifies_the_follower_on_their_shard(
    app: SampleApp, shard_dbs: list[ScratchDatabase]
) -> None:
    users = [sign_up(app, f"person{i}") for i in range(8)]
    by_shard = {user % SHARDS: (client, user) for client, user in users}
    assert set(by_shard) == {0, 1}, "the names spread over both shards"
    (follower, follower_id), (author, author_id) = by_shard[0], by_shard[1]
    assert follower.post(f"/api/users/{author_id}/follow").status_code == 204
    assert follower.post("/api/users/999999/follow").status_code == 404
    assert ids(shard_dbs[0], "SELECT followee_id FROM follows") == {author_id}
    post = author.post("/api/posts", json={"body": "news for my follower"}).json()
    assert post["fanout"] == "inline"
    notified = follower.get("/api/notifications").json()
    assert [n["post_id"] for n in notified] == [post["id"]]
    assert ids(shard_dbs[0], "SELECT user_id FROM notifications") == {follower_id}
    assert ids(shard_dbs[1], "SELECT user_id FROM notifications") == set()


def test_search_and_readiness_ask_every_shard(app: SampleApp) -> None:
    users = [sign_up(app, f"writer{i}") for i in range(6)]
    for client, user in users:
        client.post("/api/posts", json={"body": f"zebra crossing number {user}"})
    found = app.client().get("/api/search", params={"q": "zebra"}).json()
    assert found["backend"] == "postgres"
    assert {r["author_id"] for r in found["results"]} == {user for _, user in users}
    ready = app.client().get("/readyz").json()
    assert ready["checks"] == {"database": "ok", "shard0": "ok", "shard1": "ok"}


def test_a_shard_whose_ids_are_not_its_own_refuses_the_sign_up(
    pg: Postgres, start_app: Callable[..., SampleApp]
) -> None:
    # Two databases that were never through a move: both hand out 1, 2, 3...
    plain = [ScratchDatabase.create(pg) for _ in range(SHARDS)]
    app = start_app(DATABASE_SHARDS=",".join(s.url for s in plain))
    codes = [app.client().post("/api/users", json={"name": f"n{i}"}).status_code for i in range(8)]
    assert 503 in codes
    for index, scratch in enumerate(plain):
        assert all(u % SHARDS == index for u in ids(scratch, "SELECT id FROM users"))
