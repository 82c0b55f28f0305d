"""Before the failover standby goes, the staying pod must be PostgreSQL's leader; no cluster."""

import json
from typing import Any

from z2m.postgres_handover import Member, decide

STAYS = "shop-db-0"


def pod(name: str, **status: Any) -> dict[str, Any]:
    annotations = {"status": json.dumps(status)} if status else {}
    return {"metadata": {"name": name, "annotations": annotations}}


def member(name: str, state: str = "running", role: str = "replica") -> Member:
    return Member.from_pod(pod(name, state=state, role=role, api_url=f"http://{name}:8008/patroni"))


def test_members_are_read_from_the_status_patroni_keeps_on_their_pods() -> None:
    m = member("shop-db-standby-0", role="master")
    assert (m.name, m.state, m.role) == ("shop-db-standby-0", "running", "master")
    assert m.api_url == "http://shop-db-standby-0:8008"
    bare = Member.from_pod(pod("shop-db-0"))
    assert (bare.state, bare.api_url) == ("", "")
    broken = Member.from_pod({"metadata": {"name": "x", "annotations": {"status": "{"}}})
    assert broken.state == ""


def test_the_standby_goes_at_once_when_the_staying_pod_leads() -> None:
    verdict = decide(STAYS, STAYS, [member(STAYS, role="master"), member("shop-db-standby-0")])
    assert verdict.step == "retire"


def test_a_promoted_standby_is_switched_over_to_the_staying_pod_first() -> None:
    members = [member(STAYS), member("shop-db-standby-0", role="master")]
    verdict = decide("shop-db-standby-0", STAYS, members)
    assert verdict.step == "switchover"
    assert (verdict.leader, verdict.candidate) == ("shop-db-standby-0", STAYS)


def test_no_switchover_to_a_pod_that_is_not_running() -> None:
    members = [member(STAYS, state="starting"), member("shop-db-standby-0", role="master")]
    verdict = decide("shop-db-standby-0", STAYS, members)
    assert verdict.step == "wait" and "starting" in verdict.message
    assert decide("shop-db-standby-0", STAYS, members[1:]).step == "wait"


def test_a_free_lock_waits_while_patroni_runs_but_not_where_it_never_ran() -> None:
    assert decide(None, STAYS, [member(STAYS), member("shop-db-standby-0")]).step == "wait"
    never = [Member.from_pod(pod(STAYS)), Member.from_pod(pod("shop-db-standby-0"))]
    assert decide(None, STAYS, never).step == "retire"
