"""Pure auto-promotion logic: from signal values to promote, demote or hold.

No client, no Kopf, no clock: the caller passes the current stage, the
`Promotion` spec, the signal values (a float, or None when Prometheus had no
fresh value) and the windows' memory, with the time as a number of seconds.
`z2m.promote` does the I/O around it. `opens_or_breaks` is the cheap
question the loop asks between evaluations: would these values open or end a
window? (numbers only, so that asking it of a fleet every tick costs little).

The rules, in the order they are applied:

1. **No data, no move.** When Prometheus cannot be read (`failure`) or has no
   value for `rps`, the verdict is *hold* and both windows are reset: a window
   measures a condition that held *continuously with data*, so a gap starts it
   again. Missing data therefore never demotes and never promotes.
2. **Promotion breach.** The current stage is the bottleneck when any signal
   is above its threshold: RPS above `rpsPromoteFraction` x the stage's upper
   RPS band, app CPU (percent of one core, per app process), p95 latency,
   database connections in use, database queries per second, or queue depth
   above theirs. The breach with the largest overshoot names the bottleneck,
   per the seed's "What to add at each stage" table (see `BOTTLENECKS`).
3. **Oversized.** The stage is oversized when the stage below would still be
   comfortable: RPS (required) below `rpsDemoteFraction` x the lower stage's
   upper RPS band, app CPU (required) projected from the app replicas observed
   running (an HPA may run more than the catalog says) onto the lower stage's
   app replicas below `HEADROOM` x its threshold, and every other signal that has
   a value below `HEADROOM` x its threshold (database queries are projected
   without the cache when the lower stage has none). A breach is never
   oversized.
4. **Windows.** A promotion needs the breach unbroken for
   `promoteWindowSeconds`; a demotion needs "oversized" unbroken for
   `demoteWindowSeconds` (the API requires it to be at least as long, so the
   stage climbs fast and falls slowly). Both windows restart whenever the
   stage changes, by anyone.
5. **Cooldown.** No change within `cooldownSeconds` of the last one, by anyone.
   Windows keep measuring during the cooldown; the change happens when both
   the window and the cooldown are satisfied. So two changes are always at
   least max(cooldown, promote window) apart.
6. **One step, within limits.** A change moves exactly one stage, never below
   `minStage` and never above `maxStage` or the highest implemented stage. At
   a limit the bottleneck is still named, with the action *hold*.
7. **Stage 6 only by opt-in.** 5 -> 6 splits the app into services behind a
   gateway and moves the cache to Redis Cluster: neither mode proposes it unless
   `allowStage6` is set (and `maxStage` is 6). Without it, stage 5 is the limit,
   and the verdict at 5 says what 6 would add and how to opt in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from z2m import api, catalog

Action = Literal["promote", "demote", "hold"]
Values = Mapping[str, float | None]

SIGNALS = (
    "rps",
    "app_cpu_percent",
    "latency_p95_seconds",
    "database_connections",
    "database_queries_per_second",
    "cache_hit_ratio",
    "queue_depth",
    "write_ratio",
    "static_ratio",
)
"""Every signal, named as the fields of `api.Signals`."""

HEADROOM = 0.5
"""Oversized means every signal below this fraction of its promote threshold."""

SHARE = 0.5
"""A write or static share at or above this names writes or static assets as the bottleneck."""

BOTTLENECKS: dict[str, str] = {
    "traffic": "a load balancer and more stateless app replicas",
    "static-assets": "an edge cache (CDN) for static assets",
    "app-cpu": "more app replicas, then autoscaling",
    "database-reads": "read replicas, then a cache (Redis)",
    "database-writes": "a queue to take slow writes out of the request, "
    "then sharding (beyond z2m's stages)",
    "background-work": "a message queue and background workers",
    "latency": "finding what is slow: query indexes first, then more replicas",
}
"""Bottleneck -> what fixes it, per the seed's "What to add at each stage" table."""

_LABELS = {
    "rps": "RPS",
    "app_cpu_percent": "app CPU",
    "latency_p95_seconds": "p95 latency",
    "database_connections": "database connections in use",
    "database_queries_per_second": "database queries/s",
    "cache_hit_ratio": "cache hit ratio",
    "queue_depth": "queue depth",
    "write_ratio": "write share",
    "static_ratio": "static share",
}


@dataclass(frozen=True)
class Memory:
    """What decide remembers between evaluations; times in seconds since the epoch."""

    stage: int | None = None
    breach_since: float | None = None
    oversized_since: float | None = None
    last_change: float | None = None


@dataclass(frozen=True)
class Breach:
    """One signal above (or, for oversized checks, not below) its limit."""

    signal: str
    value: float
    limit: float

    @property
    def ratio(self) -> float:
        """How far over the limit, as a multiple of it."""
        return self.value / self.limit if self.limit > 0 else math.inf

    def __str__(self) -> str:
        return f"{_LABELS[self.signal]} {fmt(self.signal, self.value)} > " + fmt(
            self.signal, self.limit
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one evaluation."""

    action: Action
    current_stage: int
    target_stage: int
    reason: str
    bottleneck: str | None
    memory: Memory
    state: str
    """Why, as a condition reason: Promote, Demote, StageFits, Observing, CoolingDown,
    AtLimit, OutOfRange, NoData."""


def fmt(signal: str, value: float) -> str:
    """A signal value for people: 93%, 640 ms, 0.8, 412 (the label carries the unit)."""
    if signal == "app_cpu_percent":
        return f"{value:.0f}%"
    if signal == "latency_p95_seconds":
        return f"{value * 1000:.0f} ms"
    if signal in ("cache_hit_ratio", "write_ratio", "static_ratio"):
        return f"{value * 100:.0f}%"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


OPT_IN_STAGE = 6
"""The first stage that recommend and auto mode reach only with `allowStage6`."""


def bounds(promotion: api.Promotion) -> tuple[int, int]:
    """The stages the operator may choose from: minStage..maxStage, implemented only.

    Without `allowStage6` the top is stage 5, whatever `maxStage` says.
    """
    top = min(promotion.max_stage, catalog.MAX_IMPLEMENTED)
    if not promotion.allow_stage6:
        top = min(top, OPT_IN_STAGE - 1)
    return max(promotion.min_stage, catalog.MIN_STAGE), top


def _promote_limits(stage: int, thresholds: api.Thresholds) -> dict[str, float]:
    """Each promotion signal's limit at `stage`: above it, the stage is the bottleneck."""
    return {
        "rps": thresholds.rps_promote_fraction * catalog.stage(stage).rps.high,
        "app_cpu_percent": thresholds.app_cpu_percent,
        "latency_p95_seconds": thresholds.latency_p95_seconds,
        "database_connections": thresholds.database_connections,
        "database_queries_per_second": thresholds.database_queries_per_second,
        "queue_depth": thresholds.queue_depth,
    }


def breaches(stage: int, thresholds: api.Thresholds, values: Values) -> list[Breach]:
    """Signals that say `stage` is the bottleneck, largest overshoot first."""
    found = [
        Breach(signal, value, limit)
        for signal, limit in _promote_limits(stage, thresholds).items()
        if (value := values.get(signal)) is not None and value > limit
    ]
    return sorted(found, key=lambda b: -b.ratio)


def _lower_checks(
    stage: int, thresholds: api.Thresholds, values: Values, app_replicas: int | None
) -> list[tuple[str, float | None, float]]:
    """(signal, its value as stage - 1 would carry it, the limit it must stay below).

    RPS and app CPU are required (None: no value, so not oversized); the other
    signals are left out when they have no value. App CPU is projected from the
    replicas running now onto the lower stage's, database queries without the
    cache when the lower stage has none. Numbers only, so that the per-tick check
    (`opens_or_breaks`) costs no formatting.
    """
    current, lower = catalog.topology(stage), catalog.topology(stage - 1)
    running = (
        app_replicas if app_replicas is not None and app_replicas > 0 else current.app_replicas
    )
    cpu = values.get("app_cpu_percent")
    checks: list[tuple[str, float | None, float]] = [
        (
            "rps",
            values.get("rps"),
            thresholds.rps_demote_fraction * catalog.stage(stage - 1).rps.high,
        ),
        (
            "app_cpu_percent",
            cpu * running / lower.app_replicas if cpu is not None else None,
            HEADROOM * thresholds.app_cpu_percent,
        ),
    ]
    qps = values.get("database_queries_per_second")
    hit = values.get("cache_hit_ratio")
    if qps is not None and current.redis and not lower.redis and hit is not None:
        # Without the cache, every hit becomes a database query (the seed's biggest lever).
        qps = qps / max(1.0 - hit, 0.05)
    for signal, value in (
        ("latency_p95_seconds", values.get("latency_p95_seconds")),
        ("database_connections", values.get("database_connections")),
        ("database_queries_per_second", qps),
        ("queue_depth", values.get("queue_depth")),
    ):
        if value is not None:
            checks.append((signal, value, HEADROOM * float(getattr(thresholds, signal))))
    return checks


def too_high_for_lower(
    stage: int, thresholds: api.Thresholds, values: Values, app_replicas: int | None = None
) -> list[str]:
    """Why `stage - 1` would not be comfortable; empty when `stage` is oversized.

    `app_replicas` is how many app pods share the load now, as observed (an HPA
    may run many more than the stage's catalog count); None falls back to the
    catalog count of `stage`.
    """
    why: list[str] = []
    for signal, value, limit in _lower_checks(stage, thresholds, values, app_replicas):
        if value is None:
            why.append(f"no {_LABELS[signal]} value")
        elif value < limit:
            continue
        elif signal == "rps":
            why.append(f"RPS {fmt('rps', value)} is not below {fmt('rps', limit)}")
        elif signal == "app_cpu_percent":
            cpu = values.get("app_cpu_percent") or 0.0
            running = (
                app_replicas
                if app_replicas is not None and app_replicas > 0
                else catalog.topology(stage).app_replicas
            )
            why.append(
                f"app CPU {fmt(signal, cpu)} on {running} replica(s) would be "
                f"{fmt(signal, value)} on {catalog.topology(stage - 1).app_replicas}, "
                f"not below {fmt(signal, limit)}"
            )
        else:
            why.append(f"{_LABELS[signal]} {fmt(signal, value)} is not below {fmt(signal, limit)}")
    return why


def opens_or_breaks(
    stage: int,
    promotion: api.Promotion,
    values: Values,
    memory: Memory,
    app_replicas: int | None = None,
) -> bool:
    """Whether `values` would open or break a window that `memory` has not: decide now.

    The promotion loop asks this of every object that is not due, against each
    tick's grouped reading, and evaluates at once those for which it is true,
    rather than at their next interval: a breach that starts is seen at the next
    tick, and so is one that ends. It compares numbers only (no `Verdict`, no
    text) so that asking it of a whole fleet every tick stays cheap.

    False when the reading proves nothing either way: no RPS value (a gap is the
    object's own evaluation's to judge, by rule 1, at its interval), a stage
    outside minStage..maxStage (nothing runs there), or a stage that differs
    from the one `memory` was kept for (a change by someone else, or a copy of
    the object older than our own patch: the evaluation at the interval sorts it
    out, with the loop's guards against stale copies).
    """
    if values.get("rps") is None or memory.stage != stage:
        return False
    low, high = bounds(promotion)
    if not low <= stage <= high:
        return False
    thresholds = promotion.thresholds
    over = any(
        (value := values.get(signal)) is not None and value > limit
        for signal, limit in _promote_limits(stage, thresholds).items()
    )
    oversized = (
        not over
        and stage > 1
        and all(
            value is not None and value < limit
            for _, value, limit in _lower_checks(stage, thresholds, values, app_replicas)
        )
    )
    return over != (memory.breach_since is not None) or oversized != (
        memory.oversized_since is not None
    )


def bottleneck(top: Breach, values: Values, thresholds: api.Thresholds) -> str:
    """Name the component a breach points at, per the seed's quick-reference table."""
    signal = top.signal
    if signal == "latency_p95_seconds":
        # Latency is a symptom: blame the busiest other resource, if one is busy at all.
        others = {
            "app_cpu_percent": thresholds.app_cpu_percent,
            "database_connections": thresholds.database_connections,
            "database_queries_per_second": thresholds.database_queries_per_second,
            "queue_depth": thresholds.queue_depth,
        }
        ratios = {s: v / limit for s, limit in others.items() if (v := values.get(s)) is not None}
        busiest = max(ratios, key=lambda s: ratios[s], default=None)
        if busiest is None or ratios[busiest] < HEADROOM:
            return "latency"
        signal = busiest
    if signal == "rps":
        static = values.get("static_ratio")
        return "static-assets" if static is not None and static >= SHARE else "traffic"
    if signal == "app_cpu_percent":
        return "app-cpu"
    if signal == "queue_depth":
        return "background-work"
    writes = values.get("write_ratio")
    return "database-writes" if writes is not None and writes >= SHARE else "database-reads"


def changed(memory: Memory, stage: int, now: float) -> Memory:
    """The memory after spec.stage became `stage` at `now`: windows restart, cooldown starts."""
    return Memory(stage=stage, last_change=now)


def window_ends(promotion: api.Promotion, memory: Memory, now: float) -> float | None:
    """When a running window (and the cooldown) would next allow a change, if still ahead.

    None when no window runs or that moment has passed. The caller evaluates again
    then rather than at its next interval, so a sustained breach moves the stage
    when its window ends, not up to an interval later.
    """
    ends = [
        since + window
        for since, window in (
            (memory.breach_since, promotion.promote_window_seconds),
            (memory.oversized_since, promotion.demote_window_seconds),
        )
        if since is not None
    ]
    if not ends:
        return None
    moment = min(ends)
    if memory.last_change is not None:
        moment = max(moment, memory.last_change + promotion.cooldown_seconds)
    return moment if moment > now else None


def decide(
    stage: int,
    promotion: api.Promotion,
    values: Values,
    memory: Memory,
    now: float,
    failure: str | None = None,
    app_replicas: int | None = None,
) -> Verdict:
    """One evaluation: the verdict and the memory to keep. See the module docstring.

    `app_replicas` is the app's observed replica count (see `too_high_for_lower`).
    """
    if memory.stage is None:
        memory = dataclasses.replace(memory, stage=stage)
    elif memory.stage != stage:
        memory = changed(memory, stage, now)  # someone else moved it: that counts as a change
    low, high = bounds(promotion)

    def hold(state: str, reason: str, mem: Memory, neck: str | None = None) -> Verdict:
        return Verdict("hold", stage, stage, reason, neck, mem, state)

    if failure is not None or values.get("rps") is None:
        why = failure or "Prometheus has no RPS value for the app"
        return hold(
            "NoData",
            f"holding at stage {stage}: {why}; no decision without data, and the windows "
            "restart when data returns",
            dataclasses.replace(memory, breach_since=None, oversized_since=None),
        )
    if not low <= stage <= high:
        return hold(
            "OutOfRange",
            f"stage {stage} lies outside the stages z2m may choose ({low}-{high}); "
            "it moves only inside them",
            dataclasses.replace(memory, breach_since=None, oversized_since=None),
        )

    thresholds = promotion.thresholds
    over = breaches(stage, thresholds, values)
    not_oversized = (
        too_high_for_lower(stage, thresholds, values, app_replicas) if stage > 1 else ["stage 1"]
    )
    oversized = not over and not not_oversized
    memory = dataclasses.replace(
        memory,
        breach_since=(memory.breach_since if memory.breach_since is not None else now)
        if over
        else None,
        oversized_since=(memory.oversized_since if memory.oversized_since is not None else now)
        if oversized
        else None,
    )
    cooling = (
        memory.last_change is not None and now - memory.last_change < promotion.cooldown_seconds
    )
    cooldown_left = (
        promotion.cooldown_seconds - (now - memory.last_change)
        if memory.last_change is not None
        else 0.0
    )

    if over:
        top = over[0]
        neck = bottleneck(top, values, thresholds)
        fix = BOTTLENECKS[neck]
        evidence = "; ".join(str(b) for b in over)
        assert memory.breach_since is not None
        held = now - memory.breach_since
        window = promotion.promote_window_seconds
        if stage >= high:
            limit = "maxStage" if high == promotion.max_stage else "the highest implemented stage"
            if (
                stage == OPT_IN_STAGE - 1
                and not promotion.allow_stage6
                and promotion.max_stage > stage
            ):
                limit = (
                    f"the highest stage without promotion.allowStage6 (stage {OPT_IN_STAGE} "
                    f"adds: {'; '.join(catalog.stage(OPT_IN_STAGE).adds)})"
                )
            return hold(
                "AtLimit",
                f"stage {stage} is the bottleneck ({evidence}) but it is {limit}; "
                f"the fix would be {fix}",
                memory,
                neck,
            )
        if held < window:
            return hold(
                "Observing",
                f"{evidence} for {held:.0f} s of the {window} s promote window; "
                f"bottleneck {neck}: {fix}",
                memory,
                neck,
            )
        if cooling:
            return hold(
                "CoolingDown",
                f"{evidence} for {held:.0f} s, but the cooldown "
                f"({promotion.cooldown_seconds} s) after the last stage change has "
                f"{cooldown_left:.0f} s left",
                memory,
                neck,
            )
        target = stage + 1
        adds = "; ".join(catalog.stage(target).adds)
        return Verdict(
            "promote",
            stage,
            target,
            f"promote {stage} -> {target}: {evidence} for {held:.0f} s (window {window} s); "
            f"bottleneck {neck}, fixed by {fix}; stage {target} adds: {adds}",
            neck,
            memory,
            "Promote",
        )

    if oversized:
        assert memory.oversized_since is not None
        held = now - memory.oversized_since
        window = promotion.demote_window_seconds
        lower = catalog.stage(stage - 1)
        calm = f"every signal fits stage {stage - 1} ({_summary(values)})"
        if stage <= low:
            return hold("AtLimit", f"{calm}, but stage {stage} is minStage", memory)
        if held < window:
            return hold(
                "Observing", f"{calm} for {held:.0f} s of the {window} s demote window", memory
            )
        if cooling:
            return hold(
                "CoolingDown",
                f"{calm}, but the cooldown ({promotion.cooldown_seconds} s) has "
                f"{cooldown_left:.0f} s left",
                memory,
            )
        return Verdict(
            "demote",
            stage,
            stage - 1,
            f"demote {stage} -> {stage - 1}: {calm} for {held:.0f} s (window {window} s); "
            f"stage {stage - 1} ({lower.title}) carries {lower.rps} RPS",
            None,
            memory,
            "Demote",
        )

    reason = f"stage {stage} fits: no signal over its threshold ({_summary(values)})"
    if stage > low and not_oversized:
        reason += f"; stays above {stage - 1} because " + ", ".join(not_oversized)
    return hold("StageFits", reason, memory)


def _summary(values: Values) -> str:
    shown = [
        f"{_LABELS[s]} {fmt(s, v)}"
        for s in ("rps", "app_cpu_percent", "latency_p95_seconds")
        if (v := values.get(s)) is not None
    ]
    return ", ".join(shown) or "no values"
