"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

Two or more `z2m run --leader-elect` replicas share one Lease; the replica named
in its `spec.holderIdentity` reconciles, the others keep their watches warm and
wait. The rules are client-go's (k8s.io/client-go/tools/leaderelection):

- Every `retry_period` each replica reads the Lease. A follower takes it when it
  has no holder, or when its record has not changed for `leaseDurationSeconds`
  by the follower's own monotonic clock: the time it last *saw the record
  change*, never the holder's timestamps, so skew between machines' clocks
  does not matter.
- The leader renews it every `retry_period`. A leader that has not renewed for
  `renew_deadline` stops leading: it stops writing at once (`leading` turns
  false, and `kube.Kube` refuses writes), before the lease can expire for the
  others (`renew_deadline < lease_duration`).
- Every write is a compare-and-swap on the Lease's resourceVersion: of two
  replicas that try at once, one gets 409 Conflict and stays a follower.
- On a graceful shutdown the leader releases the Lease (no holder, duration
  1 s), so a follower takes over at its next retry instead of at expiry.

The worst hand-over after a leader dies without releasing is
`lease_duration + 2 * retry_period` (a follower sees the last renewal up to one
retry late, and tries again up to one retry after expiry): 14 s by default.

`observe` and `decide` are the pure decision (what to write, given the Lease
read and now); `Elector` is the I/O around them. Nothing here knows about Kopf:
`handlers` runs the loop and gates the reconciler on `Elector.leading`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """What a Lease says: who holds it, for how long, and since when."""

    holder: str
    """`spec.holderIdentity`; empty when released."""
    lease_duration_seconds: int
    acquire_time: datetime.datetime | None = None
    renew_time: datetime.datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Timing:
    """client-go's three durations, in seconds (its defaults are 15, 10 and 2)."""

    lease_duration: float = 10.0
    """How long followers wait, after the record last changed, before taking it over."""
    renew_deadline: float = 7.0
    """How long the leader keeps leading without a successful renewal."""
    retry_period: float = 2.0
    """Time between two attempts to acquire or renew."""

    def __post_init__(self) -> None:
        # The same checks as client-go's NewLeaderElector.
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("the lease duration must be longer than the renew deadline")
        if not self.renew_deadline > 1.2 * self.retry_period:
            raise ValueError("the renew deadline must be longer than 1.2 retry periods")
        if self.retry_period <= 0:
            raise ValueError("the retry period must be positive")


@dataclass(frozen=True)
class Observation:
    """The record last read, and when (our monotonic clock) it was first seen as it is."""

    record: Record | None
    seen_at: float


def observe(previous: Observation | None, record: Record | None, now: float) -> Observation:
    """Remember `record`; its clock restarts only when it differs from the one seen before."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(
    seen: Observation,
    identity: str,
    timing: Timing,
    now: float,
    wall: datetime.datetime,
) -> Record | None:
    """The record to write to lead (create, take over or renew), or None: another leads.

    `now` is our monotonic clock (compared with `seen.seen_at`); `wall` is the
    time written into the Lease for people to read.
    """
    current = seen.record
    duration = round(timing.lease_duration)
    if current is None:
        return Record(identity, duration, acquire_time=wall, renew_time=wall, transitions=0)
    if current.holder == identity:
        return dataclasses.replace(current, lease_duration_seconds=duration, renew_time=wall)
    if current.holder and seen.seen_at + current.lease_duration_seconds > now:
        return None  # held by another, and renewed recently enough in our eyes
    return Record(
        identity,
        duration,
        acquire_time=wall,
        renew_time=wall,
        transitions=current.transitions + 1,
    )


def released(current: Record, wall: datetime.datetime) -> Record:
    """The record a leader writes when it steps down: no holder, expiring in one second."""
    return Record("", 1, acquire_time=wall, renew_time=wall, transitions=current.transitions)


def leading(renewed_at: float | None, timing: Timing, now: float) -> bool:
    """Whether a replica that last renewed at `renewed_at` may still act as the leader."""
    return renewed_at is not None and now - renewed_at < timing.renew_deadline


# --- I/O ------------------------------------------------------------------------------------


def _record(lease: kubernetes.client.V1Lease | None) -> Record | None:
    if lease is None:
        return None
    spec = lease.spec or kubernetes.client.V1LeaseSpec()
    return Record(
        holder=spec.holder_identity or "",
        lease_duration_seconds=spec.lease_duration_seconds or 0,
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=spec.lease_transitions or 0,
    )


@dataclass
class Elector:
    """One replica's view of the Lease, and the calls that acquire, renew and release it.

    Synchronous (the official client); `handlers` runs it in a worker thread.
    """

    api_client: ApiClient
    namespace: str
    name: str
    identity: str
    timing: Timing = dataclasses.field(default_factory=Timing)
    clock: Callable[[], float] = time.monotonic
    _seen: Observation | None = None
    _renewed_at: float | None = None

    @property
    def leading(self) -> bool:
        """Whether this replica holds the Lease and renewed it within the renew deadline."""
        return leading(self._renewed_at, self.timing, self.clock())

    @property
    def holder(self) -> str | None:
        """Who holds the Lease, as last read."""
        return self._seen.record.holder if self._seen and self._seen.record else None

    @property
    def _timeout(self) -> float:
        # A hung request must not hold the loop past the renew deadline (etcd away: the
        # apiserver answers only after its own 60 s).
        return self.timing.renew_deadline / 2

    def _api(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.api_client)

    def _read(self) -> kubernetes.client.V1Lease | None:
        try:
            lease: kubernetes.client.V1Lease = self._api().read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, and write it if we should lead. True while we lead.

        A lost race (409 Conflict, or 409 AlreadyExists on create) is an answer,
        not an error: someone else wrote first. Other API errors propagate.
        """
        started = self.clock()
        lease = self._read()
        self._seen = observe(self._seen, _record(lease), started)
        wanted = decide(
            self._seen, self.identity, self.timing, started, datetime.datetime.now(datetime.UTC)
        )
        if wanted is None:
            return self.leading
        try:
            self._write(lease, wanted)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return self.leading
        self._seen = Observation(wanted, started)
        # Counted from before the read: the deadline errs on the side of stepping down early.
        self._renewed_at = started
        return True

    def release(self) -> bool:
        """Step down on shutdown, if we lead: the followers need not wait for expiry."""
        if not self.leading:
            return False
        self._renewed_at = None  # no more writes from here on, whatever the answer
        lease = self._read()
        current = _record(lease)
        if lease is None or current is None or current.holder != self.identity:
            return False
        try:
            self._write(lease, released(current, datetime.datetime.now(datetime.UTC)))
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def _write(self, lease: kubernetes.client.V1Lease | None, record: Record) -> None:
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=record.holder or None,
            lease_duration_seconds=record.lease_duration_seconds,
            acquire_time=record.acquire_time,
            renew_time=record.renew_time,
            lease_transitions=record.transitions,
        )
        if lease is None:
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=spec,
            )
            self._api().create_namespaced_lease(
                self.namespace, body, _request_timeout=self._timeout
            )
            return
        # replace carries the resourceVersion we read: a compare-and-swap.
        lease.spec = spec
        self._api().replace_namespaced_lease(
            self.name, self.namespace, lease, _request_timeout=self._timeout
        )
