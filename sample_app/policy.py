"""Pure decisions the I/O code delegates to: read routing, cache TTLs, back-off.

Nothing here touches a socket or a clock of its own; callers pass ``now`` in,
which keeps every rule unit-testable without services.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# After a user writes, their reads go to the primary for this long so they see
# their own write even if the replica is behind (read-your-writes).
STICKY_SECONDS = 5.0
# A replica further behind than this is skipped: its data is too stale to serve.
MAX_REPLICA_LAG_SECONDS = 2.0
# How long a replica health check result is trusted.
REPLICA_CHECK_INTERVAL_SECONDS = 1.0

CACHE_TTL_SECONDS = 60.0
# On SIGTERM the web server keeps serving this long, out of the load balancer and
# closing keep-alive connections, before it stops: the time for every client to move.
DRAIN_SECONDS = 5.0
# +/-10 % so keys written together don't all expire in the same instant.
CACHE_TTL_JITTER = 0.1


def is_sticky(last_write_at: float | None, now: float, window: float = STICKY_SECONDS) -> bool:
    """True while a user's reads must go to the primary because they wrote recently."""
    return last_write_at is not None and 0.0 <= now - last_write_at < window


@dataclass(frozen=True)
class ReplicaHealth:
    """What the last health check (or failed query) said about one replica."""

    reachable: bool = False
    lag_seconds: float | None = None

    def usable(self, max_lag: float = MAX_REPLICA_LAG_SECONDS) -> bool:
        """Reachable and not lagging beyond ``max_lag``."""
        return self.reachable and self.lag_seconds is not None and self.lag_seconds <= max_lag


def confirm_lag(previous: ReplicaHealth, current: ReplicaHealth) -> ReplicaHealth:
    """Ignore a single over-the-threshold lag reading that follows a good one.

    On a replica that has been idle, the first write after the pause makes the
    lag briefly read as "time since the previous commit" (possibly minutes)
    until it is replayed a few milliseconds later.  Requiring two bad readings
    in a row filters that out and still flags a replica that is really behind
    within two check intervals.  Unreachable is believed at once.
    """
    if current.reachable and not current.usable() and previous.usable():
        return ReplicaHealth(reachable=True, lag_seconds=previous.lag_seconds)
    return current


def replica_order(
    health: Sequence[ReplicaHealth], start: int, max_lag: float = MAX_REPLICA_LAG_SECONDS
) -> list[int]:
    """Indexes of usable replicas to try, round-robin from ``start``.

    An empty list means "read from the primary".
    """
    count = len(health)
    rotated = [(start + offset) % count for offset in range(count)]
    return [index for index in rotated if health[index].usable(max_lag)]


def ttl_with_jitter(
    base: float = CACHE_TTL_SECONDS,
    jitter: float = CACHE_TTL_JITTER,
    rng: random.Random | None = None,
) -> int:
    """A cache TTL in whole seconds, spread uniformly over ``base * (1 +/- jitter)``."""
    if base <= 0 or not 0 <= jitter < 1:
        raise ValueError("base must be positive and jitter in [0, 1)")
    draw = (rng or random).uniform(-jitter, jitter)
    return max(1, round(base * (1 + draw)))


@dataclass
class CircuitBreaker:
    """Stop calling a failing dependency for a while, doubling the pause each time.

    Closed: calls allowed.  After a failure the breaker opens for ``backoff``
    seconds; the first call after that is a probe.  Success closes it and
    resets the back-off; another failure reopens it for twice as long, up to
    ``max_backoff``.
    """

    base_backoff: float = 0.5
    max_backoff: float = 30.0
    open_until: float = 0.0
    failures: int = 0

    def allow(self, now: float) -> bool:
        """Return whether the dependency may be called now."""
        return now >= self.open_until

    def record_success(self) -> None:
        """The dependency answered: close the breaker."""
        self.failures = 0
        self.open_until = 0.0

    def record_failure(self, now: float) -> None:
        """The dependency failed: open the breaker for the next back-off period."""
        pause = min(self.max_backoff, self.base_backoff * 2**self.failures)
        self.failures += 1
        self.open_until = now + pause

    @property
    def is_open(self) -> bool:
        """True once at least one failure has not been followed by a success."""
        return self.failures > 0
