"""Benchmark post search: OpenSearch against PostgreSQL full-text search, in one run.

Not a test: it starts a real PostgreSQL (Debian's) and a real OpenSearch 2.19.6
(its Maven Central jars, as the tests start it), writes one generated corpus of
posts into PostgreSQL, copies it into OpenSearch with the app's own backfill, and
times the same queries against both:

- in-process, through the app's own search code (``sample_app.search``): a
  PostgreSQL pool query against an OpenSearch client request;
- end to end, ``GET /api/search`` on two app processes, one with ``SEARCH_URL``
  and one without.

Queries come in three kinds: one rare word, one common word (it matches a large
share of the corpus, which PostgreSQL must rank row by row) and two words. For
each it prints the median and p95 latency of each backend and their ratio, and
checks that both backends count the same matches.

    .venv/bin/python bench/search_bench.py [--posts 30000] [--queries 60] [--rounds 5]

Everything runs on one machine over loopback; the ratio is the point, not the
absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sample_app import db as app_db  # noqa: E402
from sample_app import search  # noqa: E402
from tests.services import (  # noqa: E402
    ScratchDatabase,
    opensearch,
    postgres_primary,
    sample_app,
)

VOCABULARY = 5000
SEED = 42
LIMIT = 20
# Consonant-vowel syllables with vowels a, o, u only: the words carry no English
# suffix, so PostgreSQL's and OpenSearch's English stemmers leave them alone alike.
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aou"

Query = tuple[str, str]
"""(kind, text)."""


def vocabulary(rng: random.Random) -> list[str]:
    """Distinct made-up words of two to four syllables, most frequent first."""
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        syllables = rng.randint(2, 4)
        words["".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))] = None
    return list(words)


def corpus(rng: random.Random, words: list[str], posts: int) -> list[str]:
    """Post bodies of 8 to 30 words drawn with a Zipf-like skew (word k weighs 1/k)."""
    weights = [1 / (rank + 1) for rank in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(8, 30))) for _ in range(posts)]


def queries(rng: random.Random, words: list[str], count: int) -> list[Query]:
    """A third each: one rare word, one common word, two words (common and middling)."""
    third = max(count // 3, 1)
    rare = [("rare word", w) for w in rng.sample(words[1000:], third)]
    common = [("common word", w) for w in rng.sample(words[:20], min(third, 20))]
    pairs = [
        ("two words", f"{rng.choice(words[:50])} {rng.choice(words[50:500])}") for _ in range(third)
    ]
    return rare + common + pairs


def load_posts(url: str, bodies: list[str]) -> float:
    """Migrate, then COPY the posts in (20 authors); returns the seconds it took."""
    started = time.perf_counter()

    async def migrate() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await app_db.migrate(conn)

    asyncio.run(migrate())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (name) SELECT 'user' || n FROM generate_series(1, 20) n")
        with conn.cursor() as cur, cur.copy("COPY posts (author_id, body) FROM STDIN") as copy:
            for index, body in enumerate(bodies):
                copy.write_row((index % 20 + 1, body))
        conn.execute("ANALYZE posts")
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


Timings = dict[str, dict[str, list[float]]]
"""kind -> backend -> seconds."""


async def time_both(
    qs: list[Query],
    rounds: int,
    calls: dict[str, Callable[[str], Awaitable[object]]],
) -> Timings:
    """Time every query on every backend, ``rounds`` times, alternating which goes first."""
    timings: Timings = {}
    for q in qs:  # warm both up: the first touch of a posting list reads it from disk
        for call in calls.values():
            await call(q[1])
    for round_ in range(rounds):
        for index, (kind, text) in enumerate(qs):
            order = list(calls.items())
            if (round_ + index) % 2:
                order.reverse()
            for backend, call in order:
                started = time.perf_counter()
                await call(text)
                timings.setdefault(kind, {}).setdefault(backend, []).append(
                    time.perf_counter() - started
                )
    return timings


def report(title: str, timings: Timings) -> list[str]:
    """A Markdown table: per kind of query, each backend's median and p95, and the ratio."""
    lines = [
        f"### {title}",
        "",
        "| queries | n | PostgreSQL p50 (ms) | p95 (ms) | OpenSearch p50 (ms) | p95 (ms) "
        "| p50 ratio PG/OS | p95 ratio PG/OS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    every: dict[str, list[float]] = {"postgres": [], "opensearch": []}
    for kind, by_backend in [*timings.items(), ("all", every)]:
        if kind != "all":
            for backend, values in by_backend.items():
                every[backend] += values
        pg, engine = by_backend["postgres"], by_backend["opensearch"]
        pg50, pg95 = statistics.median(pg), percentile(pg, 0.95)
        os50, os95 = statistics.median(engine), percentile(engine, 0.95)
        lines.append(
            f"| {kind} | {len(pg)} | {pg50 * 1000:.2f} | {pg95 * 1000:.2f} | "
            f"{os50 * 1000:.2f} | {os95 * 1000:.2f} | {pg50 / os50:.1f}x | {pg95 / os95:.1f}x |"
        )
    return lines


async def in_process(
    url: str, search_url: str, qs: list[Query], rounds: int
) -> tuple[Timings, dict[str, float]]:
    """Backfill with the app's code, check match counts agree, then time both backends."""
    db = app_db.Database(url)
    await db.open()
    engine = search.SearchEngine(search_url, db, index="bench-posts")
    facts: dict[str, float] = {}
    try:
        await engine.ensure_index()
        started = time.perf_counter()
        facts["backfilled posts"] = await engine.backfill()
        facts["backfill seconds"] = time.perf_counter() - started
        agree = 0
        for _, text in qs:
            rows = await db.read(
                "SELECT count(*) AS n FROM posts"
                " WHERE to_tsvector('english', body) @@ websearch_to_tsquery('english', %s)",
                (text,),
            )
            counted = await engine.client.count(
                index=engine.index,
                body={"query": search.engine_query(text, LIMIT)["query"]},
            )
            agree += int(rows[0]["n"] == counted["count"])
        facts["queries whose match counts agree"] = agree
        facts["queries"] = len(qs)

        async def pg(text: str) -> object:
            return await search.search_postgres(db, text, LIMIT)

        async def os_(text: str) -> object:
            return await engine.search(text, LIMIT)

        timings = await time_both(qs, rounds, {"postgres": pg, "opensearch": os_})
    finally:
        await engine.close()
        await db.close()
    return timings, facts


async def over_http(pg_app: str, os_app: str, qs: list[Query], rounds: int) -> Timings:
    """The same queries through ``GET /api/search`` of two app processes."""
    async with httpx.AsyncClient(timeout=30) as client:

        def caller(base: str, backend: str) -> Callable[[str], Awaitable[object]]:
            async def call(text: str) -> object:
                response = await client.get(f"{base}/api/search", params={"q": text})
                response.raise_for_status()
                assert response.json()["backend"] == backend
                return response

            return call

        return await time_both(
            qs,
            rounds,
            {
                "postgres": caller(pg_app, "postgres"),
                "opensearch": caller(os_app, "opensearch"),
            },
        )


def main() -> int:
    """Start the servers, load the corpus, time both backends, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=30000, help="posts in the corpus")
    parser.add_argument("--queries", type=int, default=60, help="distinct queries")
    parser.add_argument("--rounds", type=int, default=5, help="times each query is timed")
    args = parser.parse_args()
    rng = random.Random(SEED)  # noqa: S311 -- a reproducible corpus, not a secret
    words = vocabulary(rng)
    bodies = corpus(rng, words, args.posts)
    qs = queries(rng, words, args.queries)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="z2m-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with postgres_primary(tmp) as primary:
            t = time.monotonic()
            with opensearch(tmp) as node:
                print(
                    f"OpenSearch answered {time.monotonic() - t:.1f}s after launch "
                    f"(layout included), RSS {node.rss_bytes() / 2**20:.0f} MiB",
                    flush=True,
                )
                db = ScratchDatabase.create(primary)
                loaded = load_posts(db.url, bodies)
                print(f"{len(bodies)} posts into PostgreSQL in {loaded:.1f}s", flush=True)
                timings, facts = asyncio.run(in_process(db.url, node.url, qs, args.rounds))
                print(
                    f"backfilled {facts['backfilled posts']:.0f} posts into OpenSearch in "
                    f"{facts['backfill seconds']:.1f}s; match counts agree on "
                    f"{facts['queries whose match counts agree']:.0f} of {facts['queries']:.0f} "
                    "queries",
                    flush=True,
                )
                with (
                    sample_app(tmp, DATABASE_URL=db.url) as pg_app,
                    sample_app(
                        tmp, DATABASE_URL=db.url, SEARCH_URL=node.url, SEARCH_INDEX="bench-posts"
                    ) as os_app,
                ):
                    _wait_engine(os_app.url)
                    http = asyncio.run(over_http(pg_app.url, os_app.url, qs, args.rounds))
                rss = node.rss_bytes()
    print()
    print(
        f"corpus: {len(bodies)} posts of 8-30 words from {VOCABULARY} made-up words "
        f"(Zipf-like); {len(qs)} queries x {args.rounds} rounds, top {LIMIT}, sequential"
    )
    print()
    print("\n".join(report("in-process (the app's search code)", timings)))
    print()
    print("\n".join(report("end to end (GET /api/search)", http)))
    print()
    print(f"OpenSearch RSS after the run: {rss / 2**20:.0f} MiB")
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


def _wait_engine(base: str, timeout: float = 120) -> None:
    """Wait until the app says its engine is usable (it backfills the index first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checks = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
        if checks.get("search") == "ok":
            return
        time.sleep(0.5)
    raise TimeoutError("the app's search engine never became usable")


if __name__ == "__main__":
    sys.exit(main())
