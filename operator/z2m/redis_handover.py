"""Pure decision before Redis shrinks from its Sentinel-watched pods to ordinal 0.

Demoting from stage 5 takes Redis from two pods (Sentinel may have promoted
either) to one: ordinal 0, or none at all. If ordinal 1 is the master then,
ordinal 0 holds stale data. So before Redis shrinks, ordinal 0 must be the
master: when another pod is, Sentinel is asked to fail over to ordinal 0, but
only once ordinal 0 is a connected replica that has nearly all of the master's
data, and the shrink waits until ordinal 0 reports itself master.

No client, no clock: the caller reads the master named by Sentinel (its own
announced name and its `INFO replication`) and passes it in; `z2m.kube`
does the I/O, `z2m.transition` gates the change on it and `z2m.reconcile`
acts on the verdict. This module is not about
the app following a failover: Sentinel-aware clients do that by themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Step = Literal["shrink", "failover", "wait"]

MAX_BEHIND_BYTES = 64 * 1024
"""How far ordinal 0's acknowledged offset may trail the master's before a failover.

Replicas acknowledge once a second, so under writes the two offsets are never
equal; what Sentinel's failover can drop is at most this much of the newest
cache writes, which the app reloads from the database on a miss.
"""
MAX_LAG_SECONDS = 1


@dataclass(frozen=True)
class Replica:
    """One replica as its master sees it (a `slaveN` line of `INFO replication`)."""

    host: str
    state: str
    offset: int
    lag: int


@dataclass(frozen=True)
class Master:
    """The pod Sentinel names the master, as it describes itself."""

    host: str
    """Its own announced name (replica-announce-ip), else the address Sentinel gave."""
    role: str
    offset: int
    replicas: tuple[Replica, ...]

    @classmethod
    def from_info(cls, host: str, info: Mapping[str, Any]) -> Master:
        """Build from redis-py's parsed `INFO replication` (`slaveN` values are dicts)."""
        replicas = tuple(
            Replica(
                host=str(value.get("ip", "")),
                state=str(value.get("state", "")),
                offset=int(value.get("offset", 0)),
                lag=int(value.get("lag", 0)),
            )
            for key, value in sorted(info.items())
            if re.fullmatch(r"slave\d+", key) and isinstance(value, Mapping)
        )
        return cls(
            host=host,
            role=str(info.get("role", "")),
            offset=int(info.get("master_repl_offset", 0)),
            replicas=replicas,
        )


@dataclass(frozen=True)
class Verdict:
    """What the reconciler does now, and the sentence it reports."""

    step: Step
    message: str


def ordinal(host: str, statefulset: str) -> int | None:
    """The ordinal of a Redis pod from its DNS name (`<statefulset>-N.<service>...`)."""
    found = re.match(rf"^{re.escape(statefulset)}-(\d+)(\.|$)", host)
    return int(found.group(1)) if found else None


def needed(live_replicas: int, wanted_replicas: int) -> bool:
    """Whether a hand-over check must come first: Redis shrinks from several pods."""
    return live_replicas > 1 and wanted_replicas < live_replicas


def decide(master: Master | None, statefulset: str, trouble: str = "") -> Verdict:
    """Shrink when ordinal 0 is the master; otherwise fail over to it, or wait."""
    keep = "Redis keeps its pods and Sentinel until ordinal 0 is the master"
    if master is None:
        return Verdict("wait", f"cannot tell which Redis pod is the master ({trouble}); {keep}")
    which = ordinal(master.host, statefulset)
    if which is None:
        return Verdict(
            "wait", f"Sentinel names {master.host} the master, not a pod of {statefulset}; {keep}"
        )
    if master.role != "master":
        return Verdict(
            "wait", f"{master.host} is named the master but is still a {master.role}; {keep}"
        )
    if which == 0:
        return Verdict("shrink", f"{master.host} (ordinal 0) is the master")
    zero = next((r for r in master.replicas if ordinal(r.host, statefulset) == 0), None)
    if zero is None:
        return Verdict(
            "wait",
            f"the master is ordinal {which}, and ordinal 0 is not its connected replica; {keep}",
        )
    behind = master.offset - zero.offset
    if zero.state != "online" or behind > MAX_BEHIND_BYTES or zero.lag > MAX_LAG_SECONDS:
        return Verdict(
            "wait",
            f"the master is ordinal {which}; ordinal 0 is {zero.state}, {behind} bytes and "
            f"{zero.lag} s behind, so it is not failed over to yet; {keep}",
        )
    return Verdict(
        "failover",
        f"the master is ordinal {which}; asking Sentinel to fail over to ordinal 0 "
        f"({behind} bytes behind) before Redis shrinks to it",
    )
