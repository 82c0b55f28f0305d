"""Post search: PostgreSQL full-text search, or OpenSearch when ``SEARCH_URL`` is set.

Below the search stage the app searches posts with PostgreSQL's full-text search
(an expression GIN index on ``to_tsvector('english', body)``, made by migration 2).
With ``SEARCH_URL`` it keeps an OpenSearch index of the posts and answers from it:

- each new post is indexed as it is written (doc id = post id, so indexing twice
  is harmless); a post whose indexing fails waits in memory for the next pass,
  and while the engine is unreachable none is tried;
- a background pass checks the engine every few seconds; when the index is new,
  or the engine comes back after being unreachable, it copies every post from
  PostgreSQL into it (posts written meanwhile, by any app process, get in too);
- searches go to the engine only while it is reachable and that copy is done,
  so its answers are complete; otherwise, or when it fails a search, PostgreSQL
  answers. Search degrades, it never fails because the engine is away.

Both backends match the same way: every word of the query, English stemming and
stop words, ranked by relevance, newest first among equals. Which backend answered
is in the response and in ``app_search_requests_total{backend}``.

Not here: the engine's deployment (the operator's ``builders/search.py``), and
deletes or edits of posts (the app has neither).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

from opensearchpy import AsyncOpenSearch, helpers
from opensearchpy.exceptions import OpenSearchException, TransportError

from sample_app import metrics, shards
from sample_app.db import Database, Row

log = logging.getLogger(__name__)
# The client logs every failed request with its traceback; ours say it once, shorter.
logging.getLogger("opensearch").setLevel(logging.ERROR)

Backend = Literal["opensearch", "postgres"]

DEFAULT_INDEX = "posts"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_LENGTH = 200
CHECK_INTERVAL_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 2.0
BACKFILL_PAGE = 2000

# One statement, the query's tsquery computed once; relevance, then newest first.
PG_SEARCH_SQL = """
SELECT id, author_id, body, created_at
FROM posts, websearch_to_tsquery('english', %s) AS query
WHERE to_tsvector('english', body) @@ query
ORDER BY ts_rank(to_tsvector('english', body), query) DESC, id DESC
LIMIT %s
"""

INDEX_BODY: dict[str, Any] = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "id": {"type": "long"},
            "author_id": {"type": "long"},
            "body": {"type": "text", "analyzer": "english"},
            "created_at": {"type": "keyword", "index": False},
        },
    },
}


def engine_query(q: str, limit: int) -> dict[str, Any]:
    """The OpenSearch request body matching :data:`PG_SEARCH_SQL`'s semantics."""
    return {
        "size": limit,
        "query": {"match": {"body": {"query": q, "operator": "and"}}},
        "sort": [{"_score": "desc"}, {"id": "desc"}],
        "_source": ["id", "author_id", "body", "created_at"],
    }


def document(post: Row) -> dict[str, Any]:
    """A post as the index stores it (``created_at`` as the API shows it)."""
    created = post["created_at"]
    return {
        "id": int(post["id"]),
        "author_id": int(post["author_id"]),
        "body": str(post["body"]),
        "created_at": created if isinstance(created, str) else created.isoformat(),
    }


# The same, with the rank, to merge the shards' answers (ts_rank reads only the row).
PG_SEARCH_RANKED_SQL = """
SELECT id, author_id, body, created_at, ts_rank(to_tsvector('english', body), query) AS rank
FROM posts, websearch_to_tsquery('english', %s) AS query
WHERE to_tsvector('english', body) @@ query
ORDER BY rank DESC, id DESC
LIMIT %s
"""


async def search_postgres(
    db: Database | shards.ShardedDatabase, q: str, limit: int, *, primary: bool = False
) -> list[Row]:
    """Full-text search in PostgreSQL (a replica when one is usable), or on every shard."""
    if not isinstance(db, shards.ShardedDatabase):
        return await db.read(PG_SEARCH_SQL, (q, limit), primary=primary)
    found: list[Row] = []
    for shard in db.shards:
        found += await shard.read(PG_SEARCH_RANKED_SQL, (q, limit), primary=True)
    found.sort(key=lambda row: (float(row["rank"]), int(row["id"])), reverse=True)
    return [{k: v for k, v in row.items() if k != "rank"} for row in found[:limit]]


class SearchEngine:
    """The OpenSearch side: the index, indexing on write, backfill, health."""

    def __init__(self, url: str, db: Database, index: str = DEFAULT_INDEX) -> None:
        """Talk to the engine at ``url``; copy posts from ``db``."""
        self.db = db
        self.index = index
        self.client = AsyncOpenSearch(
            hosts=[url], timeout=REQUEST_TIMEOUT_SECONDS, max_retries=0, retry_on_timeout=False
        )
        self.reachable = False
        self.complete = False
        """The index holds every post written before the last backfill began."""
        self.pending: set[int] = set()

    @property
    def usable(self) -> bool:
        """Whether searches should go to the engine."""
        return self.reachable and self.complete

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()

    async def ensure_index(self) -> bool:
        """Create the index if it is missing; True if this call created it."""
        if await self.client.indices.exists(index=self.index):
            return False
        try:
            await self.client.indices.create(index=self.index, body=INDEX_BODY)
        except TransportError as exc:
            # Another app process made it first.
            if exc.error != "resource_already_exists_exception":
                raise
            return False
        return True

    async def index_post(self, post: Row) -> bool:
        """Index one post now; False if it waits for a later pass instead.

        While the engine is unreachable nothing is tried (a write must not wait on
        it): the backfill that follows its return copies the post.
        """
        doc = document(post)
        if not self.reachable:
            metrics.SEARCH_INDEXED.labels("deferred").inc()
            return False
        try:
            await self.client.index(index=self.index, id=str(doc["id"]), body=doc)
        except (TimeoutError, OpenSearchException, OSError) as exc:
            log.warning("indexing post %s failed (%r); retrying later", doc["id"], exc)
            self.pending.add(doc["id"])
            metrics.SEARCH_INDEXED.labels("failed").inc()
            return False
        metrics.SEARCH_INDEXED.labels("indexed").inc()
        return True

    async def backfill(self) -> int:
        """Copy every post into the index, page by page in id order; returns the count."""
        started = time.perf_counter()
        total, after = 0, 0
        while True:
            rows = await self.db.read(
                "SELECT id, author_id, body, created_at FROM posts WHERE id > %s"
                " ORDER BY id LIMIT %s",
                (after, BACKFILL_PAGE),
                primary=True,
            )
            if not rows:
                break
            await self._bulk(rows)
            total += len(rows)
            after = int(rows[-1]["id"])
        await self.client.indices.refresh(index=self.index)
        metrics.SEARCH_INDEXED.labels("backfilled").inc(total)
        log.info("search index backfilled: %d posts in %.1fs", total, time.perf_counter() - started)
        return total

    async def _bulk(self, rows: Sequence[Row]) -> None:
        actions = [
            {"_index": self.index, "_id": str(row["id"]), "_source": document(row)} for row in rows
        ]
        await helpers.async_bulk(self.client, actions, request_timeout=30)

    async def check(self) -> None:
        """One pass: health, index, backfill when needed, then the pending posts."""
        try:
            await self.client.cluster.health()
        except (TimeoutError, OpenSearchException, OSError) as exc:
            if self.reachable:
                log.warning("search engine unreachable (%r); searching PostgreSQL", exc)
            self.reachable = False
            self.complete = False
            return
        self.reachable = True
        created = await self.ensure_index()
        if created or not self.complete:
            # Taken before the copy: whatever fails during it is retried after.
            self.pending.clear()
            await self.backfill()
            self.complete = True
            return
        if self.pending:
            ids = sorted(self.pending)
            rows = await self.db.read(
                "SELECT id, author_id, body, created_at FROM posts WHERE id = ANY(%s)",
                (ids,),
                primary=True,
            )
            await self._bulk(rows)
            self.pending.difference_update(ids)

    async def watch(self, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """Run :meth:`check` forever (a background task)."""
        while True:
            try:
                await self.check()
            except Exception as exc:  # a failed pass must not end the task
                log.warning("search pass failed (%r)", exc)
                self.complete = False
            await asyncio.sleep(interval)

    async def search(self, q: str, limit: int) -> list[Row]:
        """Search the engine; raises if it fails (the caller falls back)."""
        response = await self.client.search(index=self.index, body=engine_query(q, limit))
        return [hit["_source"] for hit in response["hits"]["hits"]]


async def search(
    db: Database | shards.ShardedDatabase,
    engine: SearchEngine | None,
    q: str,
    limit: int,
    *,
    primary: bool = False,
) -> tuple[Backend, list[Row]]:
    """Search posts with the engine when it is usable, else with PostgreSQL."""
    if engine is not None and engine.usable:
        started = time.perf_counter()
        try:
            rows = await engine.search(q, limit)
        except (TimeoutError, OpenSearchException, OSError) as exc:
            log.warning("search engine failed a query (%r); searching PostgreSQL", exc)
            engine.reachable = False
            engine.complete = False
        else:
            metrics.SEARCH_REQUESTS.labels("opensearch").inc()
            metrics.SEARCH_DURATION.labels("opensearch").observe(time.perf_counter() - started)
            return "opensearch", rows
    started = time.perf_counter()
    rows = await search_postgres(db, q, limit, primary=primary)
    metrics.SEARCH_REQUESTS.labels("postgres").inc()
    metrics.SEARCH_DURATION.labels("postgres").observe(time.perf_counter() - started)
    return "postgres", rows
