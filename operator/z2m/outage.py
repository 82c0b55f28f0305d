"""One log line when the Kubernetes API goes away, one when it answers again; not a storm.

While the apiserver (or its etcd) restarts, every request fails: nine of Kopf's
watches, the reconciler's retries, the periodic re-check, the promotion loop
and the leader election would each log a traceback every few seconds. They keep
retrying by themselves; what an operator of z2m needs to read is that the API
was lost, why, and when it came back. So the failures that mean "the API is not
answering" (`is_outage`) go to one process-wide `Tracker`, which logs the first
and stays quiet until a request succeeds again. Any other error is still logged
in full where it happens.

Kopf's own retry lines ("Request attempt #2/9 failed; will retry ...") are fed
to the same tracker by `KopfRetryFilter` instead of being printed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3

log = logging.getLogger(__name__)

UNAVAILABLE = frozenset({429, 500, 502, 503, 504})
"""Statuses of an apiserver that is starting, or whose storage is (re)initialising."""


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the API is not answering (rather than that our request was wrong)."""
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    return getattr(exc, "status", None) in UNAVAILABLE


def describe(exc: BaseException) -> str:
    """The cause in one short line: the innermost reason, without response headers."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the socket error
    inner = reason if isinstance(reason, BaseException) else exc
    return f"{type(inner).__name__}: {inner}".splitlines()[0][:200]


@dataclass
class Tracker:
    """Whether the API is down, since when, and the two lines that say so."""

    clock: Callable[[], float] = time.monotonic
    logger: logging.Logger = log
    _down_since: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, cause: str) -> None:
        """A request found the API unavailable; the first of an outage is logged."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = self.clock()
        self.logger.warning(
            "lost the Kubernetes API (%s); retrying quietly until it answers", cause
        )

    def answered(self) -> None:
        """A request succeeded; the first after an outage is logged with its length."""
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.logger.warning(
                "the Kubernetes API answers again after %.0f s", self.clock() - since
            )


TRACKER = Tracker()


def failed(exc: BaseException) -> bool:
    """Report `exc` to the tracker if it is an outage; False: the caller logs it in full."""
    if not is_outage(exc):
        return False
    TRACKER.failed(describe(exc))
    return True


class KopfRetryFilter(logging.Filter):
    """Turns Kopf's per-attempt request failures into the tracker's one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Request attempt") and "failed" in message:
            cause = message.rpartition(" -> ")[2] if " -> " in message else message
            TRACKER.failed(cause[:200])
            return False
        return True


def quiet_kopf_retries() -> None:
    """Install the filter on the loggers Kopf's API requests log to, and quiet urllib3's."""
    kopf_filter = KopfRetryFilter()
    for name in ("kopf._cogs.clients.api", "kopf._cogs.clients.watching"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, KopfRetryFilter) for f in logger.filters):
            logger.addFilter(kopf_filter)
    # "Retrying (Retry(total=2...)) after connection broken": the failure that follows says it.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
