"""Post search against real PostgreSQL and a real OpenSearch node on loopback.

The node is OpenSearch 2.19.6 from its Maven Central jars, started by its real
bootstrap (tests/services.py). Each test uses its own database and its own index.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from sample_app import db as app_db
from tests.conftest import eventually
from tests.services import OpenSearch, SampleApp, ScratchDatabase

pytestmark = pytest.mark.services

StartApp = Callable[..., SampleApp]

# Words chosen so that PostgreSQL's and OpenSearch's English stemmers agree on them.
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a brown bear eats honey in the forest",
    "foxes are quick and clever animals",
    "the lazy cat sleeps all day",
    "honey bees make honey in summer",
    "a quick walk in the forest at dawn",
    "dogs and cats sleep in the sun",
    "clever crows solve puzzles",
]
QUERIES = ["quick", "brown fox", "honey", "lazy", "forest quick", "sleeping", "cats", "puzzle"]


def sign_up(app: SampleApp, name: str) -> httpx.Client:
    client = app.client()
    response = client.post("/api/users", json={"name": name})
    assert response.status_code == 201, response.text
    return client


def write_corpus(app: SampleApp, corpus: list[str] = CORPUS) -> list[int]:
    client = sign_up(app, f"writer-{uuid.uuid4().hex[:6]}")
    ids = []
    for body in corpus:
        response = client.post("/api/posts", json={"body": body})
        assert response.status_code == 201, response.text
        ids.append(int(response.json()["id"]))
    return ids


def search(app: SampleApp, q: str, limit: int = 100) -> dict[str, Any]:
    response = httpx.get(f"{app.url}/api/search", params={"q": q, "limit": limit}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["X-Search-Backend"] == response.json()["backend"]
    body: dict[str, Any] = response.json()
    return body


def found(app: SampleApp, q: str) -> set[int]:
    return {int(hit["id"]) for hit in search(app, q)["results"]}


def search_check(app: SampleApp) -> str:
    return str(httpx.get(f"{app.url}/readyz", timeout=5).json()["checks"]["search"])


def engine_app(start_app: StartApp, database: ScratchDatabase, node: OpenSearch) -> SampleApp:
    app = start_app(
        DATABASE_URL=database.url, SEARCH_URL=node.url, SEARCH_INDEX=f"posts-{uuid.uuid4().hex}"
    )
    eventually(lambda: search_check(app) == "ok", timeout=60)
    return app


# --------------------------------------------------------------------------- PostgreSQL


def test_without_an_engine_postgres_finds_posts_holding_every_word_of_the_query(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url)
    ids = write_corpus(app)
    answer = search(app, "quick fox")
    assert answer["backend"] == "postgres"
    assert {hit["id"] for hit in answer["results"]} == {ids[0], ids[2]}  # "foxes" stems to fox
    assert found(app, "sleeping") == {ids[3], ids[6]}
    assert found(app, "zebra") == set()
    assert app.metric("app_search_requests_total", backend="postgres") == 3


def test_search_rejects_an_empty_query_and_a_bad_limit(
    database: ScratchDatabase, start_app: StartApp
) -> None:
    app = start_app(DATABASE_URL=database.url)
    assert httpx.get(f"{app.url}/api/search", params={"q": " "}).status_code == 400
    assert httpx.get(f"{app.url}/api/search", params={"q": "a", "limit": "0"}).status_code == 400
    assert httpx.get(f"{app.url}/api/search", params={"q": "a", "limit": "x"}).status_code == 400


def test_search_migration_applies_once_on_a_database_that_already_holds_posts(
    database: ScratchDatabase,
) -> None:
    first_sql = app_db.MIGRATIONS[0][1]
    database.query(first_sql)
    database.query(
        "CREATE TABLE schema_version (version int PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    database.query("INSERT INTO schema_version (version) VALUES (1)")
    database.query("INSERT INTO users (name) VALUES ('old')")
    database.query("INSERT INTO posts (author_id, body) VALUES (1, 'written before search')")

    async def migrate() -> list[int]:
        async with await psycopg.AsyncConnection.connect(database.url, autocommit=True) as conn:
            return await app_db.migrate(conn)

    assert asyncio.run(migrate()) == [2]
    assert asyncio.run(migrate()) == []
    assert database.query("SELECT count(*) FROM pg_indexes WHERE indexname = 'posts_body_fts_idx'")
    assert database.query(
        "SELECT id FROM posts WHERE to_tsvector('english', body)"
        " @@ websearch_to_tsquery('english', 'searching')"
    ) == [(1,)]


# --------------------------------------------------------------------------- OpenSearch


def test_both_backends_find_the_same_posts_for_the_same_queries(
    database: ScratchDatabase, start_app: StartApp, search_node: OpenSearch
) -> None:
    with_engine = engine_app(start_app, database, search_node)
    without = start_app(DATABASE_URL=database.url)
    write_corpus(with_engine)
    search_node_refresh(search_node)
    for q in QUERIES:
        engine_answer, pg_answer = search(with_engine, q), search(without, q)
        assert engine_answer["backend"] == "opensearch"
        assert pg_answer["backend"] == "postgres"
        assert engine_answer["results"], q
        engine_hits = sorted(engine_answer["results"], key=lambda hit: hit["id"])
        pg_hits = sorted(pg_answer["results"], key=lambda hit: hit["id"])
        assert engine_hits == pg_hits, q


def search_node_refresh(node: OpenSearch) -> None:
    """Make what was indexed searchable now, not at the next periodic refresh."""
    httpx.post(f"{node.url}/_refresh", timeout=10).raise_for_status()


def test_a_new_index_is_backfilled_with_the_posts_written_before_it(
    database: ScratchDatabase, start_app: StartApp, search_node: OpenSearch
) -> None:
    before = start_app(DATABASE_URL=database.url)
    bodies = [f"backfill post number {n} about gardening" for n in range(150)]
    ids = write_corpus(before, bodies)
    app = engine_app(start_app, database, search_node)
    answer = search(app, "gardening")
    assert answer["backend"] == "opensearch"
    assert {hit["id"] for hit in answer["results"]} == set(ids[-100:])
    assert app.metric("app_search_indexed_posts_total", how="backfilled") == len(ids)


def test_when_the_engine_stops_postgres_answers_and_the_engine_catches_up_when_back(
    database: ScratchDatabase, start_app: StartApp, search_node: OpenSearch
) -> None:
    app = engine_app(start_app, database, search_node)
    ids = write_corpus(app)
    search_node_refresh(search_node)
    assert search(app, "honey")["backend"] == "opensearch"

    search_node.stop()
    answer = search(app, "honey")
    assert answer["backend"] == "postgres"
    assert {hit["id"] for hit in answer["results"]} == {ids[1], ids[4]}
    client = sign_up(app, "during-outage")
    late = client.post("/api/posts", json={"body": "honey written while the engine was away"})
    assert late.status_code == 201, late.text
    assert search_check(app) == "down"
    assert found(app, "honey") == {ids[1], ids[4], late.json()["id"]}
    assert app.metric("app_search_requests_total", backend="postgres") >= 2

    search_node.start()
    eventually(lambda: search_check(app) == "ok", timeout=60)
    answer = search(app, "honey")
    assert answer["backend"] == "opensearch"
    assert {hit["id"] for hit in answer["results"]} == {ids[1], ids[4], late.json()["id"]}
