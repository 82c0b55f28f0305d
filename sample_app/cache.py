"""Cache-aside over Redis that degrades to "no cache" instead of failing.

Reads check Redis, and on a miss load from the database and store the result
with a jittered TTL.  Concurrent misses for one key in this process share a
single load (single-flight), so a hot key expiring sends one query, not one
per waiting request.  Redis calls have a 100 ms timeout and sit behind a
circuit breaker: after a failure we stop asking Redis for a growing back-off
period and go straight to the database.

The client is built from one URL (one Redis) or from a Sentinel list: then
every new connection asks a Sentinel where the master is now, and a
connection to a master that went away or was demoted is dropped, so after a
failover writes reach the new master as soon as the breaker lets them. At
stage 6 it is a Redis Cluster client (`from_cluster`): it learns the slot map
from any node it is given and sends each key to the primary that owns it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sample_app import metrics, policy

log = logging.getLogger(__name__)

Result = Literal["hit", "miss", "error"]
Loader = Callable[[], Awaitable[Any]]

REDIS_TIMEOUT_SECONDS = 0.1
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# No retries: a retry doubles the time a request waits on a dead Redis, and the
# breaker already handles recovery.
_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    "retry": Retry(NoBackoff(), 0),
}


class Cache:
    """Redis cache-aside with single-flight loads and a circuit breaker."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        ttl: float = policy.CACHE_TTL_SECONDS,
        *,
        owned: tuple[aioredis.Redis, ...] = (),
    ) -> None:
        """Wrap a client; ``owned`` are further clients closed with it (the Sentinels)."""
        self.client = client
        self.ttl = ttl
        self.breaker = policy.CircuitBreaker()
        self._loads: dict[str, asyncio.Task[Any]] = {}
        self._owned = owned

    @classmethod
    def from_url(cls, url: str, ttl: float = policy.CACHE_TTL_SECONDS) -> Cache:
        """One Redis at ``url``; connects lazily on first use."""
        return cls(aioredis.Redis.from_url(url, **_CLIENT_OPTIONS), ttl)

    @classmethod
    def from_sentinels(
        cls,
        sentinels: Sequence[tuple[str, int]],
        master_name: str,
        password: str | None = None,
        ttl: float = policy.CACHE_TTL_SECONDS,
    ) -> Cache:
        """The master that ``sentinels`` name ``master_name``, followed across failovers."""
        # Sentinels are asked with the same short timeout: a dead one costs 100 ms, and
        # the next one in the list is asked.
        watcher = Sentinel(  # type: ignore[no-untyped-call]
            list(sentinels), sentinel_kwargs=dict(_CLIENT_OPTIONS)
        )
        client = watcher.master_for(master_name, password=password, **_CLIENT_OPTIONS)
        return cls(client, ttl, owned=tuple(watcher.sentinels))

    @classmethod
    def from_cluster(
        cls,
        nodes: Sequence[tuple[str, int]],
        password: str | None = None,
        ttl: float = policy.CACHE_TTL_SECONDS,
    ) -> Cache:
        """A Redis Cluster that ``nodes`` belong to; connects lazily on first use."""
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            password=password,
            **_CLIENT_OPTIONS,
        )
        return cls(client, ttl)

    async def close(self) -> None:
        """Close the connection pools."""
        await self.client.aclose()
        for other in self._owned:
            await other.aclose()

    async def get_or_load(self, key: str, loader: Loader) -> tuple[Any, Result]:
        """Return the cached value for ``key`` or load, store and return it."""
        result: Result = "error"
        if self.breaker.allow(time.monotonic()):
            try:
                raw = await self.client.get(key)
                self.breaker.record_success()
                if raw is not None:
                    metrics.CACHE_REQUESTS.labels("hit").inc()
                    return json.loads(raw), "hit"
                result = "miss"
            except _REDIS_ERRORS as exc:
                self._failed("GET", exc)
        metrics.CACHE_REQUESTS.labels(result).inc()
        load = self._loads.get(key)
        if load is None:
            load = asyncio.ensure_future(self._load_and_store(key, loader, store=result == "miss"))
            self._loads[key] = load
            load.add_done_callback(lambda _: self._loads.pop(key, None))
        # shield: one waiter being cancelled must not cancel the shared load.
        return await asyncio.shield(load), result

    async def _load_and_store(self, key: str, loader: Loader, *, store: bool) -> Any:
        value = await loader()
        # None (not found) isn't cached: the row may be created a moment later.
        if store and value is not None and self.breaker.allow(time.monotonic()):
            try:
                await self.client.set(key, json.dumps(value), ex=policy.ttl_with_jitter(self.ttl))
            except _REDIS_ERRORS as exc:
                self._failed("SET", exc)
        return value

    async def invalidate(self, *keys: str) -> None:
        """Delete ``keys`` after a write; if Redis is down, TTLs bound the staleness."""
        if not keys or not self.breaker.allow(time.monotonic()):
            return
        try:
            await self.client.delete(*keys)
            self.breaker.record_success()
        except _REDIS_ERRORS as exc:
            self._failed("DEL", exc)

    async def ping(self) -> bool:
        """True if Redis answers PING (ignores the breaker: readiness wants the truth)."""
        try:
            return bool(await self.client.ping())
        except _REDIS_ERRORS:
            return False

    def _failed(self, command: str, exc: BaseException) -> None:
        if not self.breaker.is_open:
            log.warning("redis %s failed, bypassing the cache for a while: %r", command, exc)
        self.breaker.record_failure(time.monotonic())
