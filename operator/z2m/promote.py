"""The promotion loop: read metrics, decide, report, and in auto mode change the stage.

Every `Z2M_PROMOTION_TICK` seconds (default 5) the loop takes the ScalingStages
(from the operator's watch-fed index, or else a LIST) and evaluates each one
whose `spec.promotion.mode` is `recommend` or `auto` and whose
`intervalSeconds` has passed. An evaluation reads the signals
(`z2m.signals`) from `spec.promotion.prometheus.url`, or where that is unset
from the Prometheus z2m runs at stage 5 (`prometheus_url`), and how many app
pods run now (the HPA's count, not the catalog's, is what demotion must divide
the CPU by), asks the pure `z2m.decide`, and writes (below). An object not
yet due is still checked every tick against that tick's grouped reading
(`Loop.check`, `decide.opens_or_breaks`) and evaluated at once if the reading
opens or breaks one of its windows, so that a breach is seen at the next tick
rather than at the next interval. The loop writes:

- `status.lastDecision` (verdict, reason, bottleneck, signal values, and the
  windows' memory, so a restarted operator resumes its windows),
- `status.recommendedStage`, `status.history` (the last `HISTORY_LIMIT` stage
  changes, by the operator or by a user),
- conditions `MetricsAvailable` (reasons SignalsRead, PrometheusUnreachable,
  BadQuery, PrometheusError, NoData, NoPrometheus) and `Recommendation` (True
  while a change is recommended or was just made),
- an Event whenever a decision changes something or recommends a change, and
  whenever metrics become unavailable or available again.

Status is written by server-side apply as the field manager `z2m-promoter`,
with only the fields above; the reconciler applies the rest as
`z2m-reconciler`, so neither writer can put back the other's stale fields.

Modes: `auto` patches `spec.stage` itself and the reconciler does the rest.
`recommend` changes nothing until a person approves by annotating the
ScalingStage with `z2m.dev/approve-stage: "<N>"` where N is
`status.recommendedStage`; the loop then sets `spec.stage` to N and removes the
annotation in one patch. An approval that does not match the current
recommendation is removed with a Warning Event, so a stale approval never
applies later. `spec.paused: true` stops decisions (and queries) entirely.

The stage patch carries the resourceVersion the decision was based on, so a
concurrent edit by a person wins and the loop decides again. Kubernetes calls
are synchronous and run on the loop's own small thread pool, so they never
block Kopf's event loop nor take the reconciler's threads; a semaphore bounds
concurrent evaluations and each has a timeout. Failures are caught, reported
once as a condition and an Event, and retried with a capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pydantic
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from z2m import api, builders, decide, kube, metrics, outage, plan, signals, status

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")

APPROVE_ANNOTATION = f"{api.GROUP}/approve-stage"
HISTORY_LIMIT = 20
MAX_BACKOFF_FACTOR = 8
MAX_BACKOFF_SECONDS = 600.0
QUERY_CONNECTIONS = 8
"""Prometheus connections, and queries in flight, across all evaluations."""
WAKE_MARGIN = 0.1
"""Seconds after a window's end at which the loop evaluates again: past it on any clock."""


def iso(t: float) -> str:
    """Seconds since the epoch as RFC 3339 with milliseconds."""
    stamp = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 timestamp as seconds since the epoch; None for None or garbage."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def memory_of(decision: api.Decision | None) -> decide.Memory:
    """The decide memory stored in a Decision (empty for none)."""
    if decision is None or decision.memory is None:
        return decide.Memory()
    m = decision.memory
    return decide.Memory(
        stage=m.stage,
        breach_since=parse_time(m.breach_since),
        oversized_since=parse_time(m.oversized_since),
        last_change=parse_time(m.last_change),
    )


def stored_memory(memory: decide.Memory, stage: int) -> api.DecisionMemory:
    """The decide memory in its status form."""
    return api.DecisionMemory(
        stage=memory.stage if memory.stage is not None else stage,
        breach_since=iso(memory.breach_since) if memory.breach_since is not None else None,
        oversized_since=iso(memory.oversized_since) if memory.oversized_since is not None else None,
        last_change=iso(memory.last_change) if memory.last_change is not None else None,
    )


def condition(
    previous: list[Obj], ctype: str, value: str, reason: str, message: str, now: float
) -> Obj:
    """A condition as JSON, keeping lastTransitionTime while its status is unchanged."""
    since = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for old in previous:
        if old.get("type") == ctype and old.get("status") == value:
            since = old.get("lastTransitionTime") or since
    return api.Condition(
        type=ctype, status=value, reason=reason, message=message[:2048], last_transition_time=since
    ).model_dump(by_alias=True, exclude_none=True, mode="json")


def prometheus_url(
    spec: api.ScalingStageSpec, namespace: str, name: str, prometheus_operator: bool
) -> str | None:
    """The Prometheus the loop asks: the spec's URL, else z2m's own where the stage runs one.

    z2m runs a Prometheus at a monitoring stage (5) where the cluster does not serve the
    Prometheus Operator's kinds (`builders.runs_prometheus`). None: no Prometheus is known.
    """
    given = spec.promotion.prometheus.url if spec.promotion.prometheus else None
    if given is not None:
        return given
    try:
        the_plan = plan.resolve(spec, name=name, namespace=namespace)
    except plan.PlanError:
        return None
    if not builders.runs_prometheus(the_plan, prometheus_operator):
        return None
    return builders.prometheus_url(name, namespace)


RECOMMENDATION_REASONS = {
    ("promote", "recommend"): "PromotionRecommended",
    ("demote", "recommend"): "DemotionRecommended",
    ("promote", "auto"): "Promoted",
    ("demote", "auto"): "Demoted",
}


@dataclass(frozen=True)
class Outcome:
    """What one evaluation wants written: pure data, built by `report`."""

    status: Obj
    events: list[tuple[str, str, str]]
    """(type, reason, message) of each Event to record."""


def metrics_condition(reading: signals.Reading, previous: list[Obj], now: float) -> Obj:
    """MetricsAvailable from a reading."""
    if reading.problem is not None:
        return condition(
            previous,
            "MetricsAvailable",
            "False",
            reading.problem.reason,
            reading.problem.message,
            now,
        )
    if reading.values.get("rps") is None:
        return condition(
            previous,
            "MetricsAvailable",
            "False",
            "NoData",
            "Prometheus answered but has no RPS value for this app: is it scraped, with "
            "labels namespace and pod (<name>-app-...), or does spec.promotion.signals.rps "
            "need overriding?",
            now,
        )
    missing = reading.missing
    note = f"; no data for {', '.join(missing)} (normal for signals the stage lacks)"
    return condition(
        previous,
        "MetricsAvailable",
        "True",
        "SignalsRead",
        f"read {len(reading.values) - len(missing)} of {len(reading.values)} signals"
        + (note if missing else ""),
        now,
    )


def recommendation_condition(
    verdict: decide.Verdict, mode: str, name: str, previous: list[Obj], now: float, applied: bool
) -> Obj:
    """Recommendation from a verdict: True while a change is recommended or was just made."""
    if verdict.action != "hold":
        reason = RECOMMENDATION_REASONS[(verdict.action, "auto" if applied else mode)]
        message = verdict.reason
        if not applied:
            message += (
                f". Approve with: kubectl annotate scalingstage {name} "
                f"{APPROVE_ANNOTATION}={verdict.target_stage}"
            )
        return condition(previous, "Recommendation", "True", reason, message, now)
    value = "Unknown" if verdict.state in ("NoData", "Paused") else "False"
    return condition(previous, "Recommendation", value, verdict.state, verdict.reason, now)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    return value


def material(st: Obj) -> Any:
    """The parts of our status whose change is worth a write (not the signal values)."""
    decision = _strip_none(st.get("lastDecision") or {})
    return (
        decision.get("action"),
        decision.get("currentStage"),
        decision.get("recommendedStage"),
        decision.get("bottleneck"),
        decision.get("memory"),
        st.get("recommendedStage"),
        len(st.get("history") or []),
        (st.get("history") or [{}])[-1:],
        sorted(
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in st.get("conditions") or []
            if c.get("type") in status.FOREIGN
        ),
    )


def events_for(
    old: Obj, new: Obj, verdict: decide.Verdict, mode: str, applied: bool, approved: bool
) -> list[tuple[str, str, str]]:
    """Events for what changed between our old and new status: one per news, not per pass."""
    out: list[tuple[str, str, str]] = []

    def cond(st: Obj, ctype: str) -> Obj:
        return next((c for c in st.get("conditions") or [] if c.get("type") == ctype), {})

    old_m, new_m = cond(old, "MetricsAvailable"), cond(new, "MetricsAvailable")
    if (old_m.get("status"), old_m.get("reason")) != (new_m.get("status"), new_m.get("reason")):
        if new_m.get("status") == "True":
            if old_m:
                out.append(("Normal", "MetricsAvailable", new_m.get("message", "")))
        else:
            out.append(
                (
                    "Warning",
                    f"Metrics{new_m.get('reason', 'Unavailable')}",
                    new_m.get("message", ""),
                )
            )
    if applied:
        if not approved:  # an approval has its own Event
            out.append(("Normal", RECOMMENDATION_REASONS[(verdict.action, "auto")], verdict.reason))
    elif verdict.action != "hold" and mode == "recommend":
        before = old.get("recommendedStage")
        if before != verdict.target_stage:
            reason = RECOMMENDATION_REASONS[(verdict.action, mode)]
            out.append(("Normal", reason, cond(new, "Recommendation").get("message", "")))
    elif verdict.action == "hold":
        before = old.get("recommendedStage")
        if before is not None and before != verdict.current_stage and mode == "recommend":
            out.append(
                (
                    "Normal",
                    "RecommendationWithdrawn",
                    f"no longer recommending stage {before}: {verdict.reason}",
                )
            )
        old_r = cond(old, "Recommendation").get("reason")
        if verdict.state == "AtLimit" and old_r != "AtLimit":
            out.append(("Normal", "AtStageLimit", verdict.reason))
    return out


@dataclass(frozen=True)
class Seen:
    """What an object's last evaluation leaves for the per-tick check (`Loop.check`)."""

    memory: decide.Memory
    app_replicas: int | None
    values: dict[str, float | None]
    """The reading's values: a signal the object overrides is not in the grouped
    reading, so the check takes its last value from here."""


def tick_values(
    promotion: api.Promotion,
    key: tuple[str, str],
    fleet: signals.Fleet,
    last: dict[str, float | None],
) -> dict[str, float | None]:
    """An object's values in a tick's grouped reading; its overridden signals' from `last`."""
    chosen = promotion.signals
    return {
        signal: last.get(signal)
        if getattr(chosen, signal)
        else fleet.values.get(signal, {}).get(key)
        for signal in decide.SIGNALS
    }


@dataclass
class Loop:
    """Evaluates ScalingStages with promotion on; one per operator process."""

    kube: kube.Kube
    http: httpx.AsyncClient
    tick: float = 5.0
    concurrency: int = 8
    refresh_seconds: float = 300.0
    clock: Callable[[], float] = time.time
    executor: ThreadPoolExecutor = field(init=False)
    """The loop's own threads for Kubernetes calls, one per evaluation that may run at once:
    a status write waits on the apiserver, and with fewer threads the writes of a busy
    fleet queue behind each other and hold back every evaluation."""
    _limit: asyncio.Semaphore = field(init=False)
    _queries: asyncio.Semaphore = field(init=False)
    _due: dict[str, float] = field(default_factory=dict)
    _running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _written: dict[str, Obj] = field(default_factory=dict)
    """uid -> the status parts we last wrote, to survive a concurrent writer's stale copy."""
    _finished: dict[str, float] = field(default_factory=dict)
    """uid -> when its last evaluation ended; a listing from before then is stale for it."""
    _names: dict[str, tuple[str, str]] = field(default_factory=dict)
    _wrote_over: dict[str, str] = field(default_factory=dict)
    """uid -> the resourceVersion our last write replaced: a copy still at it is stale."""
    _specs: dict[str, tuple[int, api.ScalingStageSpec | None]] = field(default_factory=dict)
    """uid -> (metadata.generation, its spec validated; None: invalid). The apiserver bumps
    the generation on every change of the spec, so a spec is validated once per change."""
    _memories: dict[str, tuple[Any, decide.Memory]] = field(default_factory=dict)
    """uid -> (a stored status.lastDecision, the windows' memory read from it)."""
    _ends: dict[str, float] = field(default_factory=dict)
    """uid -> when its running window ends (epoch seconds), from its last evaluation."""
    _wake: dict[str, float] = field(default_factory=dict)
    """uid -> when (monotonic) to evaluate it again because its window ends: between ticks."""
    _seen: dict[str, Seen] = field(default_factory=dict)
    """uid -> what its last evaluation decided on, for the per-tick check."""
    _checks: set[asyncio.Task[None]] = field(default_factory=set)
    """The running per-tick checks (`check`), cancelled with the loop."""
    _reads: set[asyncio.Task[signals.Fleet]] = field(default_factory=set)
    """The grouped readings in flight, cancelled with the loop: one is made every tick."""
    _woken: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a wake-up is added, so that the sleeping loop looks at it."""
    _poked: bool = False
    """An approval arrived (`poke`): look at the objects now, not at the next tick."""
    _event_loop: asyncio.AbstractEventLoop | None = None
    source: Callable[[], list[Obj]] | None = None
    """The ScalingStages as the operator's watches hold them (called on the event loop);
    None: list them from the apiserver every tick."""

    def __post_init__(self) -> None:
        """Make the semaphores inside the running loop's lifetime."""
        self.executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="z2m-promote"
        )
        self._limit = asyncio.Semaphore(self.concurrency)
        self._queries = asyncio.Semaphore(QUERY_CONNECTIONS)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def poke(self) -> None:
        """Look at the objects now rather than at the next tick: an approval has arrived.

        Safe to call from any thread (Kopf runs sync handlers on its own threads).
        """

        def now() -> None:
            self._poked = True
            self._woken.set()

        if self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(now)

    async def run(self, stop: asyncio.Event) -> None:
        """List and dispatch every tick until `stop` is set (or the task is cancelled)."""
        self._event_loop = asyncio.get_running_loop()
        listing_failures = 0
        try:
            while not stop.is_set():
                listed_at = time.monotonic()
                try:
                    if self.source is not None:
                        items = self.source()
                    else:
                        items = await self._call(self.kube.list_scaling_stages)
                except Exception as exc:
                    listing_failures += 1
                    if not outage.failed(exc):  # an unreachable API is logged once, there
                        log.exception("listing ScalingStages for promotion failed")
                    items = []
                else:
                    listing_failures = 0
                self.dispatch(items, listed_at)
                delay = self.tick * min(2**listing_failures, MAX_BACKOFF_FACTOR)
                await self._sleep(stop, time.monotonic() + delay)
        finally:
            # Also when this task is cancelled (operator shutdown): an evaluation left
            # running would call into the executor after it is shut down, and fail.
            for task in [*self._running.values(), *self._checks, *self._reads]:
                task.cancel()

    async def _sleep(self, stop: asyncio.Event, until: float) -> None:
        """Wait until the next tick, or earlier when a window ends, or `stop` is set.

        Objects are taken in batches at ticks (so that they share one grouped
        reading); only an object whose window ends before the next tick wakes the
        loop, so that the change happens when the window ends, not a tick later.
        """
        now = time.monotonic()
        for uid in [u for u, t in self._wake.items() if t <= now]:
            del self._wake[uid]  # due but not taken (still running, say): the next tick will
        while not stop.is_set():
            left = min([until, *self._wake.values()]) - time.monotonic()
            if left <= 0 or self._poked:
                self._poked = False
                return
            self._woken.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._woken)]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def dispatch(self, items: list[Obj], listed_at: float) -> None:
        """Start an evaluation for every due object not already being evaluated.

        The objects not due that an earlier evaluation left a `Seen` for are
        handed to `check` with their Prometheus' grouped reading of this tick, so
        that one whose window opens or breaks is evaluated at once.
        """
        now = time.monotonic()
        seen: set[str] = set()
        fleets: dict[tuple[str, str, float], asyncio.Task[signals.Fleet]] = {}
        waiting: dict[asyncio.Task[signals.Fleet], list[Obj]] = {}
        for obj in items:
            meta = obj.get("metadata") or {}
            uid = meta.get("uid")
            if not uid or meta.get("deletionTimestamp"):
                continue
            seen.add(uid)
            mode = ((obj.get("spec") or {}).get("promotion") or {}).get("mode", "manual")
            if mode == "manual" or uid in self._running:
                continue
            if self._finished.get(uid, 0.0) > listed_at:
                continue  # listed before its last evaluation ended: may predate our own patch
            if meta.get("resourceVersion") == self._wrote_over.get(uid):
                continue  # the watch has not brought our own last write yet
            self._names[uid] = (meta.get("namespace", ""), meta.get("name", ""))
            approving = APPROVE_ANNOTATION in (meta.get("annotations") or {})
            if not approving and self._due.get(uid, 0.0) > now:
                if uid in self._seen and (fleet := self._fleet_for(obj, fleets)) is not None:
                    waiting.setdefault(fleet, []).append(obj)
                continue
            self._start(uid, obj, self._fleet_for(obj, fleets))
        for fleet, objs in waiting.items():
            task = asyncio.get_running_loop().create_task(self.check(fleet, objs, listed_at))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
        for gone in set(self._names) - seen:
            for table in (
                self._due,
                self._failures,
                self._written,
                self._finished,
                self._wrote_over,
                self._specs,
                self._memories,
                self._ends,
                self._wake,
                self._seen,
            ):
                table.pop(gone, None)
            with contextlib.suppress(KeyError):
                metrics.RECOMMENDED_STAGE.remove(*self._names.pop(gone))

    def _start(self, uid: str, obj: Obj, fleet: asyncio.Task[signals.Fleet] | None) -> None:
        """Start evaluating one object, with the grouped reading it shares (if any)."""
        self._wake.pop(uid, None)
        task = asyncio.get_running_loop().create_task(self._guarded(uid, obj, fleet))
        self._running[uid] = task

    async def check(
        self, fleet: asyncio.Task[signals.Fleet], objs: list[Obj], listed_at: float
    ) -> None:
        """Evaluate now each of `objs` (not due) whose window this tick's reading opens or breaks.

        Numbers already in memory only: no query beyond the tick's grouped reading,
        no API call (`decide.opens_or_breaks`). A reading with any failed query
        checks nothing: the objects' own evaluations report the failure.
        """
        try:
            reading = await asyncio.shield(fleet)
        except Exception:
            return  # the evaluations that share it report the failure
        if reading.problems:
            return
        for obj in objs:
            meta = obj["metadata"]
            uid = meta["uid"]
            last = self._seen.get(uid)
            spec = self.spec_of(obj)
            if last is None or spec is None or uid in self._running:
                continue
            if self._finished.get(uid, 0.0) > listed_at:
                continue  # evaluated since this listing (a window's end, say)
            values = tick_values(
                spec.promotion, (meta["namespace"], meta["name"]), reading, last.values
            )
            if decide.opens_or_breaks(
                spec.stage, spec.promotion, values, last.memory, last.app_replicas
            ):
                metrics.EARLY_EVALUATIONS.inc()
                self._start(uid, obj, fleet)

    def _fleet_for(
        self, obj: Obj, fleets: dict[tuple[str, str, float], asyncio.Task[signals.Fleet]]
    ) -> asyncio.Task[signals.Fleet] | None:
        """The grouped reading this object's defaults come from, shared by its Prometheus.

        Every object due or checked in one tick that asks the same Prometheus with
        the same window shares one query per signal, grouped by (namespace, name).
        """
        spec = self.spec_of(obj)
        if spec is None:
            return None
        prometheus, chosen = spec.promotion.prometheus, spec.promotion.signals
        if spec.paused or prometheus is None or prometheus.url is None:
            return None  # z2m's own Prometheus is one per object: nothing to share
        if all(getattr(chosen, s) for s in signals.DEFAULT_QUERIES):
            return None  # every signal overridden: nothing to share
        key = (prometheus.url, prometheus.rate_window, prometheus.timeout_seconds)
        if key not in fleets:
            fleets[key] = asyncio.get_running_loop().create_task(
                signals.read_fleet(self.http, prometheus, self.kube.namespaces, self._queries)
            )
            self._reads.add(fleets[key])
            fleets[key].add_done_callback(self._reads.discard)
        return fleets[key]

    async def _guarded(
        self, uid: str, obj: Obj, fleet: asyncio.Task[signals.Fleet] | None = None
    ) -> None:
        meta = obj["metadata"]
        promotion = (obj.get("spec") or {}).get("promotion") or {}
        interval = float(promotion.get("intervalSeconds", 30))
        # Every query runs concurrently under its own timeout; the rest is a few API calls.
        timeout = float((promotion.get("prometheus") or {}).get("timeoutSeconds", 5)) + 30.0
        ok = False
        try:
            if fleet is not None:
                # The reading shared by a tick's objects is awaited before taking a slot:
                # a slot held while waiting for it would only hold back the others.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(fleet), timeout=timeout)
            async with self._limit:
                ok = await asyncio.wait_for(self.evaluate(obj, fleet), timeout=timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            metrics.EVALUATION_ERRORS.labels("Timeout").inc()
            log.warning(
                "promotion evaluation of %s/%s took over %g s",
                meta["namespace"],
                meta["name"],
                timeout,
            )
        except Exception as exc:
            metrics.EVALUATION_ERRORS.labels(type(exc).__name__).inc()
            log.exception("promotion evaluation of %s/%s failed", meta["namespace"], meta["name"])
        finally:
            self._running.pop(uid, None)
            self._finished[uid] = time.monotonic()
        failures = 0 if ok else self._failures.get(uid, 0) + 1
        self._failures[uid] = failures
        delay = min(
            interval * min(2**failures, MAX_BACKOFF_FACTOR), max(interval, MAX_BACKOFF_SECONDS)
        )
        due = time.monotonic() + delay
        ends = self._ends.pop(uid, None)
        if ok and ends is not None:
            # A window ends before the next interval: evaluate again when it does.
            due = min(due, time.monotonic() + max(ends - self.clock(), 0.0) + WAKE_MARGIN)
            self._wake[uid] = due
            self._woken.set()
        self._due[uid] = due

    async def evaluate(self, obj: Obj, fleet: asyncio.Task[signals.Fleet] | None = None) -> bool:
        """One evaluation of one ScalingStage; returns False when metrics could not be read.

        With `fleet`, the signals left at their defaults come from that grouped reading.
        """
        meta = obj["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        spec = self.spec_of(obj)
        if spec is None:
            return True  # the reconciler reports an invalid spec; nothing to decide on
        promotion = spec.promotion
        if promotion.mode == "manual":
            return True
        current: Obj = dict(obj.get("status") or {})
        ours = self._newest(uid, current)
        memory = self._memory(uid, ours.get("lastDecision"))
        history = list(ours.get("history") or [])
        now = self.clock()
        annotations = meta.get("annotations") or {}
        approval = annotations.get(APPROVE_ANNOTATION)

        if memory.stage is not None and memory.stage != spec.stage:
            history.append(
                api.Transition(
                    time=iso(now),
                    from_stage=memory.stage,
                    to_stage=spec.stage,
                    reason="spec.stage was changed by someone other than the promotion loop",
                    by="user",
                ).model_dump(by_alias=True, mode="json")
            )

        running: int | None = None
        if spec.paused:
            verdict = decide.Verdict(
                "hold",
                spec.stage,
                spec.stage,
                "spec.paused is true: no metrics are read and nothing is decided",
                None,
                dataclasses.replace(
                    memory,
                    stage=spec.stage,
                    breach_since=None,
                    oversized_since=None,
                    last_change=now
                    if memory.stage not in (None, spec.stage)
                    else memory.last_change,
                ),
                "Paused",
            )
            reading = None
        else:
            # Shielded: one object's timeout must not cancel the reading others share.
            shared = await asyncio.shield(fleet) if fleet is not None else None
            served = False
            if promotion.prometheus is None or promotion.prometheus.url is None:
                served = await self._call(self.kube.prometheus_operator)
            url = prometheus_url(spec, namespace, name, served)
            reading = await signals.read(
                self.http, promotion, namespace, name, self._queries, shared, url=url
            )
            failure = reading.problem.message if reading.problem is not None else None
            running = (
                await self._call(self.app_replicas, namespace, name) if spec.stage > 1 else None
            )
            verdict = decide.decide(
                spec.stage, promotion, reading.values, memory, now, failure, app_replicas=running
            )
            if reading.problem is not None:
                metrics.EVALUATION_ERRORS.labels(reading.problem.reason).inc()
        metrics.DECISIONS.labels(verdict.action).inc()

        events: list[tuple[str, str, str]] = []
        applied = False
        new_memory = verdict.memory
        if approval is not None:
            approved = (
                promotion.mode == "recommend"
                and verdict.action != "hold"
                and approval.strip() == str(verdict.target_stage)
                and not spec.paused
            )
            if approved:
                if not await self._set_stage(meta, verdict.target_stage):
                    return True  # someone else changed it: decide again next interval
                applied = True
                events.append(
                    (
                        "Normal",
                        "Approved",
                        f"stage {spec.stage} -> {verdict.target_stage} approved through "
                        f"{APPROVE_ANNOTATION}: {verdict.reason}",
                    )
                )
            else:
                why = (
                    f"the recommendation is stage {verdict.target_stage} "
                    f"({verdict.state}: {verdict.reason})"
                    if promotion.mode == "recommend"
                    else f"mode is {promotion.mode}; approvals apply only in recommend mode"
                )
                if not await self._remove_approval(meta):
                    return True
                events.append(
                    ("Warning", "ApprovalIgnored", f"approval of stage {approval!r} removed: {why}")
                )
        elif promotion.mode == "auto" and verdict.action != "hold":
            if not await self._set_stage(meta, verdict.target_stage):
                return True
            applied = True
        if applied:
            new_memory = decide.changed(verdict.memory, verdict.target_stage, now)
            history.append(
                api.Transition(
                    time=iso(now),
                    from_stage=spec.stage,
                    to_stage=verdict.target_stage,
                    reason=verdict.reason,
                    by="user" if approval is not None else "operator",
                ).model_dump(by_alias=True, mode="json")
            )
        elif reading is not None:
            ends = decide.window_ends(promotion, new_memory, now)
            if ends is not None:
                self._ends[uid] = ends
        if reading is not None:
            self._seen[uid] = Seen(new_memory, running, reading.values)
        else:
            self._seen.pop(uid, None)  # paused: nothing to check until it is evaluated again

        previous_conditions = list(current.get("conditions") or [])
        ours_now: list[Obj] = []
        if reading is not None:
            ours_now.append(metrics_condition(reading, previous_conditions, now))
        else:
            ours_now += [c for c in previous_conditions if c.get("type") == "MetricsAvailable"]
        ours_now.append(
            recommendation_condition(
                verdict, promotion.mode, name, previous_conditions, now, applied
            )
        )
        decision = api.Decision(
            time=iso(now),
            current_stage=spec.stage,
            recommended_stage=verdict.target_stage,
            action=verdict.action,
            reason=verdict.reason[:2048],
            bottleneck=verdict.bottleneck,
            signals={
                k: round(v, 6)
                for k, v in (reading.values if reading else {}).items()
                if v is not None
            },
            memory=stored_memory(new_memory, verdict.target_stage if applied else spec.stage),
        )
        # Only the loop's own fields (status.PROMOTER_FIELDS and its conditions): applied
        # as PROMOTER_MANAGER, they cannot touch the reconciler's Ready or Progressing,
        # and a field left out (a window's start that has ended) is removed. An empty
        # map is left out too: apply can turn it into null, which the schema refuses.
        last = decision.model_dump(by_alias=True, exclude_none=True, mode="json")
        if not last.get("signals"):
            last.pop("signals", None)
        new_status: Obj = {
            "conditions": ours_now,
            "lastDecision": last,
            "recommendedStage": verdict.target_stage,
            "history": history[-HISTORY_LIMIT:],
        }
        events = (
            events_for(ours, new_status, verdict, promotion.mode, applied, approval is not None)
            + events
        )
        metrics.RECOMMENDED_STAGE.labels(namespace, name).set(verdict.target_stage)

        last_time = parse_time((current.get("lastDecision") or {}).get("time")) or 0.0
        stale = now - last_time >= self.refresh_seconds
        if applied or stale or material(new_status) != material(current):
            after = await self._call(
                self.kube.apply_status, namespace, name, new_status, kube.PROMOTER_MANAGER
            )
            self._replaced(meta, after)
        self._written[uid] = new_status
        for kind, reason, message in events:
            log.info("%s/%s: %s %s", namespace, name, reason, message)
            try:
                await self._call(self.kube.event, obj, kind, reason, message)
            except Exception:
                log.warning(
                    "could not record Event %s on %s/%s", reason, namespace, name, exc_info=True
                )
        return reading is None or reading.problem is None

    def spec_of(self, obj: Obj) -> api.ScalingStageSpec | None:
        """The object's spec validated, once per generation; None when it is invalid.

        An object without a generation (none from the apiserver has none) is
        validated every time.
        """
        meta = obj.get("metadata") or {}
        uid, generation = meta.get("uid"), meta.get("generation")
        cached = self._specs.get(uid) if uid else None
        if cached is not None and generation is not None and cached[0] == generation:
            return cached[1]
        spec: api.ScalingStageSpec | None
        try:
            spec = api.ScalingStageSpec.model_validate(obj.get("spec") or {})
        except pydantic.ValidationError:
            spec = None
        if uid and generation is not None:
            self._specs[uid] = (generation, spec)
        return spec

    def _memory(self, uid: str, raw: Any) -> decide.Memory:
        """The windows' memory in a stored lastDecision, read again only when it changed."""
        cached = self._memories.get(uid)
        if cached is not None and cached[0] == raw:
            return cached[1]
        memory = memory_of(_decision(raw))
        self._memories[uid] = (raw, memory)
        return memory

    def app_replicas(self, namespace: str, name: str) -> int | None:
        """How many app pods run now (an HPA may run more than the catalog says).

        The app Deployment's status.replicas: every pod not shutting down, whichever
        template it runs. None when there is no app Deployment (yet). Read from the
        operator's watches when it has them, else with a GET.
        """
        wanted = builders.child(name, "app")
        app: Obj | None
        if self.kube.watched is not None and ("apps/v1", "Deployment") in self.kube.watched.kinds:
            app = next(
                (
                    c
                    for c in self.kube.watched.read(namespace, name)
                    if c["kind"] == "Deployment" and c["metadata"]["name"] == wanted
                ),
                None,
            )
        else:
            app = self.kube.get("apps/v1", "Deployment", namespace, wanted)
        if app is None:
            return None
        observed = (app.get("status") or {}).get("replicas")
        if observed is None:
            observed = (app.get("spec") or {}).get("replicas")
        return int(observed) if observed is not None else None

    def _newest(self, uid: str, current: Obj) -> Obj:
        """Our status parts as stored, or as we last wrote them if the stored copy is older."""
        written = self._written.get(uid)
        if written is None:
            return current
        stored = parse_time((current.get("lastDecision") or {}).get("time")) or 0.0
        ours = parse_time((written.get("lastDecision") or {}).get("time")) or 0.0
        if ours <= stored:
            return current
        return {
            **current,
            **{k: written[k] for k in ("lastDecision", "recommendedStage", "history")},
        }

    async def _set_stage(self, meta: Obj, stage: int) -> bool:
        """Patch spec.stage (and drop any approval) if nobody changed the object meanwhile."""
        body: Obj = {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "spec": {"stage": stage},
        }
        if APPROVE_ANNOTATION in (meta.get("annotations") or {}):
            body["metadata"]["annotations"] = {APPROVE_ANNOTATION: None}
        return await self._patch(meta, body)

    async def _remove_approval(self, meta: Obj) -> bool:
        body: Obj = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "annotations": {APPROVE_ANNOTATION: None},
            }
        }
        return await self._patch(meta, body)

    async def _patch(self, meta: Obj, body: Obj) -> bool:
        resource = self.kube.client.resources.get(
            api_version=f"{api.GROUP}/{api.VERSION}", kind=api.KIND
        )
        try:
            after = await self._call(
                resource.patch,
                body=body,
                name=meta["name"],
                namespace=meta["namespace"],
                content_type="application/merge-patch+json",
            )
        except (ConflictError, NotFoundError):
            log.info("%s/%s changed meanwhile; deciding again", meta["namespace"], meta["name"])
            return False
        self._replaced(meta, after.to_dict())
        return True

    def _replaced(self, meta: Obj, after: Obj) -> None:
        """Remember the version a write of ours replaced, if it made a new one."""
        if (after.get("metadata") or {}).get("resourceVersion") != meta["resourceVersion"]:
            self._wrote_over[meta["uid"]] = meta["resourceVersion"]


def _decision(raw: Any) -> api.Decision | None:
    if not raw:
        return None
    try:
        return api.Decision.model_validate(raw)
    except pydantic.ValidationError:
        return None


async def run_forever(
    client: kube.Kube,
    stop: asyncio.Event | None = None,
    source: Callable[[], list[Obj]] | None = None,
    started: Callable[[Loop], None] | None = None,
) -> None:
    """Run the promotion loop until `stop` is set or the task is cancelled.

    `source` gives the ScalingStages from the operator's watches (see `Loop.source`);
    `started` is handed the loop once it exists (the operator pokes it on an approval).

    Settings come from the environment: Z2M_PROMOTION_TICK (seconds between
    listings, default 5), Z2M_PROMOTION_CONCURRENCY (evaluations at once,
    default 8), Z2M_PROMOTION_REFRESH (seconds after which an unchanged
    decision is written anyway, default 300).
    """
    stop = stop or asyncio.Event()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every query at INFO
    pool = httpx.Limits(
        max_connections=QUERY_CONNECTIONS, max_keepalive_connections=QUERY_CONNECTIONS
    )
    async with httpx.AsyncClient(limits=pool) as http:
        loop = Loop(
            kube=client,
            http=http,
            tick=float(os.environ.get("Z2M_PROMOTION_TICK", "5")),
            concurrency=int(os.environ.get("Z2M_PROMOTION_CONCURRENCY", "8")),
            refresh_seconds=float(os.environ.get("Z2M_PROMOTION_REFRESH", "300")),
            source=source,
        )
        if started is not None:
            started(loop)
        try:
            await loop.run(stop)
        finally:
            loop.executor.shutdown(wait=False, cancel_futures=True)
