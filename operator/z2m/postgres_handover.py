"""Pure decision before PostgreSQL's failover standby goes (a demotion from stage 5).

At stage 5 Patroni may have promoted the standby: then the standby is the primary,
and the pod that stays (the `db` StatefulSet's only pod) is its replica. Deleting the
standby then would cut the app off its primary, and any commit the replica had not
received yet would be lost. So before the standby goes, the staying pod must hold the
leader lock: when the standby does, Patroni is asked for a switchover to it (a clean
handover: the old primary stops taking writes, the candidate replays everything, then
is promoted), and the standby goes only once the staying pod reports itself leader.

No client, no clock: the caller reads the leader lock and the members' state that
Patroni keeps in the Kubernetes API and passes them in; `z2m.kube` does the I/O,
`z2m.transition` gates the step on it and `z2m.reconcile` acts on the verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Step = Literal["retire", "switchover", "wait"]


@dataclass(frozen=True)
class Member:
    """One PostgreSQL pod as Patroni describes it on the pod itself."""

    name: str
    state: str
    """Patroni's `state` (running, starting, stopped...); empty when Patroni never wrote one."""
    role: str
    api_url: str
    """Where its Patroni REST API answers, e.g. http://10.0.0.7:8008 (empty if unknown)."""

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> Member:
        """Read the `status` annotation Patroni keeps on a member's pod."""
        meta = pod.get("metadata") or {}
        raw = (meta.get("annotations") or {}).get("status") or "{}"
        try:
            status: dict[str, Any] = json.loads(raw)
        except ValueError:
            status = {}
        api = str(status.get("api_url") or "")
        return cls(
            name=str(meta.get("name", "")),
            state=str(status.get("state") or ""),
            role=str(status.get("role") or ""),
            api_url=api.removesuffix("/patroni"),
        )


@dataclass(frozen=True)
class Verdict:
    """What to do about the standby now, and the sentence that says why."""

    step: Step
    message: str
    leader: str | None = None
    candidate: str | None = None


def decide(leader: str | None, stays: str, members: list[Member]) -> Verdict:
    """Whether the standby may go, given the leader lock's holder and the members.

    `stays` is the pod that remains the primary after the demotion.
    """
    if leader == stays:
        return Verdict("retire", f"{stays} holds the PostgreSQL leader lock")
    if leader is None:
        if not any(m.state for m in members):
            # Patroni never ran on any pod (nothing to hand over): fake or never-started pods.
            return Verdict("retire", "no Patroni member has reported a state")
        return Verdict(
            "wait",
            "no PostgreSQL member holds the leader lock right now; the standby stays "
            "until one does",
        )
    staying = next((m for m in members if m.name == stays), None)
    if staying is None or staying.state != "running":
        state = staying.state if staying and staying.state else "not running"
        return Verdict(
            "wait",
            f"{leader} is the PostgreSQL primary and {stays}, which stays, is {state}; "
            "the standby stays until it can take over",
        )
    return Verdict(
        "switchover",
        f"{leader} is the PostgreSQL primary; switching over to {stays}, which stays, "
        "before the standby goes",
        leader=leader,
        candidate=stays,
    )
