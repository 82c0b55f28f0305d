"""Open-loop HTTP load generator for the sample app.

``python -m sample_app.load --url URL [--url URL2 ...] --rps N --duration S
--read-ratio 0.9 --users K`` sends requests at a fixed rate whether or not
earlier ones have finished (open loop), so a slow server shows up as latency
and errors instead of quietly lowering the offered load.  In-flight requests
are capped; a request that would exceed the cap is counted as dropped.

Setup (not measured) signs up ``K`` users who follow each other and post
once.  Writes are posts by those users; reads are anonymous visitors reading
a post or a user's posts, with a skewed popularity (a few hot keys), which is
what a read-heavy feed looks like.  Latency is measured from each request's
scheduled start, so queueing inside the generator counts too.

:func:`run_load` is the importable entry point; it returns a
:class:`LoadResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; 0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured."""

    requests: int
    errors: int
    dropped: int
    duration: float
    latencies: tuple[float, ...] = ()
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration if self.duration > 0 else 0.0

    @property
    def p50(self) -> float:
        """Median latency in seconds."""
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        """95th percentile latency in seconds."""
        return percentile(self.latencies, 95)

    def summary(self) -> str:
        """A short human-readable report."""
        return (
            f"requests={self.requests} throughput={self.throughput:.1f}/s "
            f"p50={self.p50 * 1000:.1f}ms p95={self.p95 * 1000:.1f}ms "
            f"errors={self.errors} dropped={self.dropped} statuses={self.statuses}"
        )


def _skewed_choice(rng: random.Random, items: Sequence[int]) -> int:
    # Zipf-like: item k is picked with weight 1/(k+1), so the first few are hot.
    weights = [1.0 / (k + 1) for k in range(len(items))]
    return rng.choices(items, weights=weights)[0]


@dataclass
class _Run:
    urls: Sequence[str]
    rng: random.Random
    user_ids: list[int] = field(default_factory=list)
    post_ids: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    journal: bool = False
    """Print a JSON line per acknowledged write and per failed request (with its time)."""

    def note(self, **event: object) -> None:
        if self.journal:
            print(json.dumps({"t": time.time(), **event}), flush=True)

    def url(self) -> str:
        return self.rng.choice(self.urls)


async def _setup(run: _Run, users: int, request_timeout: float) -> list[httpx.AsyncClient]:
    """Sign up ``users`` users (each with its own cookie jar), follow, post once."""
    writers = []
    prefix = uuid.uuid4().hex[:8]
    for index in range(users):
        client = httpx.AsyncClient(timeout=request_timeout)
        response = await client.post(f"{run.url()}/api/users", json={"name": f"{prefix}-{index}"})
        response.raise_for_status()
        run.user_ids.append(int(response.json()["id"]))
        writers.append(client)
    for client in writers:
        for followee in run.rng.sample(run.user_ids, min(3, len(run.user_ids))):
            await client.post(f"{run.url()}/api/users/{followee}/follow")
        response = await client.post(f"{run.url()}/api/posts", json={"body": "hello"})
        response.raise_for_status()
        run.post_ids.append(int(response.json()["id"]))
    return writers


async def _one_request(
    run: _Run,
    reader: httpx.AsyncClient,
    writers: Sequence[httpx.AsyncClient],
    read_ratio: float,
    scheduled: float,
) -> None:
    try:
        if run.rng.random() < read_ratio:
            if run.rng.random() < 0.5:
                path = f"/api/posts/{_skewed_choice(run.rng, run.post_ids)}"
            else:
                path = f"/api/users/{_skewed_choice(run.rng, run.user_ids)}/posts"
            response = await reader.get(f"{run.url()}{path}")
        else:
            writer = run.rng.choice(writers)
            response = await writer.post(f"{run.url()}/api/posts", json={"body": "load"})
            if response.status_code == 201:
                created = response.json()
                run.post_ids.append(int(created["id"]))
                # How its fan-out job went: "queued" (RabbitMQ or Kafka) or "inline".
                run.note(post=run.post_ids[-1], fanout=created.get("fanout"))
        run.statuses[str(response.status_code)] += 1
        if response.status_code >= 400:
            run.errors += 1
            run.note(error=str(response.status_code))
    except httpx.HTTPError as exc:
        run.statuses[type(exc).__name__] += 1
        run.errors += 1
        run.note(error=type(exc).__name__)
    run.latencies.append(time.perf_counter() - scheduled)


async def run_load(
    urls: Sequence[str],
    rps: float,
    duration: float,
    read_ratio: float = 0.9,
    users: int = 20,
    max_in_flight: int = 256,
    request_timeout: float = 10.0,
    seed: int | None = None,
    journal: bool = False,
) -> LoadResult:
    """Offer ``rps`` requests per second for ``duration`` seconds to ``urls`` (round-robin)."""
    if not urls or rps <= 0 or duration <= 0 or not 0 <= read_ratio <= 1 or users < 1:
        raise ValueError("need urls, rps > 0, duration > 0, 0 <= read_ratio <= 1, users >= 1")
    run = _Run(urls=[u.rstrip("/") for u in urls], rng=random.Random(seed), journal=journal)  # noqa: S311 -- traffic mix, not crypto
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    writers = await _setup(run, users, request_timeout)
    reader = httpx.AsyncClient(timeout=request_timeout, limits=limits)
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0
    total = int(rps * duration)
    started = time.perf_counter()
    try:
        for index in range(total):
            scheduled = started + index / rps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                dropped += 1
                continue
            task = asyncio.create_task(_one_request(run, reader, writers, read_ratio, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
        elapsed = time.perf_counter() - started
    finally:
        for client in (reader, *writers):
            await client.aclose()
    return LoadResult(
        requests=len(run.latencies),
        errors=run.errors,
        dropped=dropped,
        duration=elapsed,
        latencies=tuple(sorted(run.latencies)),
        statuses=dict(run.statuses),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 if any request failed."""
    parser = argparse.ArgumentParser(prog="python -m sample_app.load", description=__doc__)
    parser.add_argument("--url", action="append", required=True, help="repeat to round-robin")
    parser.add_argument("--rps", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--read-ratio", type=float, default=0.9)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument(
        "--journal",
        action="store_true",
        help="print a JSON line per acknowledged write and per failed request",
    )
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(
            run_load(
                args.url,
                rps=args.rps,
                duration=args.duration,
                read_ratio=args.read_ratio,
                users=args.users,
                max_in_flight=args.max_in_flight,
                journal=args.journal,
            )
        )
    except (httpx.HTTPError, ValueError) as exc:
        # Setup (signing users up) failed: the app is unreachable or not ready.
        print(f"load: {exc!r}", file=sys.stderr)
        return 2
    print(json.dumps({"summary": result.summary()}) if args.journal else result.summary())
    return 1 if result.errors or result.dropped else 0


if __name__ == "__main__":
    sys.exit(main())
