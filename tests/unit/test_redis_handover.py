"""Before Redis shrinks to ordinal 0, ordinal 0 must be the master: fail over to it, or wait."""

from __future__ import annotations

import pytest

from z2m import api, builders, plan, transition
from z2m.redis_handover import MAX_BEHIND_BYTES, Master, Replica, decide, needed, ordinal

STS = "shop-redis"
POD0 = "shop-redis-0.shop-redis.ns.svc"
POD1 = "shop-redis-1.shop-redis.ns.svc"


def master(host: str, *replicas: Replica, offset: int = 1000, role: str = "master") -> Master:
    return Master(host=host, role=role, offset=offset, replicas=replicas)


def replica(host: str, offset: int = 1000, state: str = "online", lag: int = 0) -> Replica:
    return Replica(host=host, state=state, offset=offset, lag=lag)


def test_ordinal_0_as_master_lets_redis_shrink() -> None:
    assert decide(master(POD0, replica(POD1)), STS).step == "shrink"


def test_a_short_name_from_before_pods_announced_their_fqdn_counts_too() -> None:
    assert decide(master("shop-redis-0.shop-redis"), STS).step == "shrink"


def test_ordinal_1_as_master_with_ordinal_0_in_sync_asks_sentinel_to_fail_over() -> None:
    verdict = decide(master(POD1, replica(POD0, offset=1000 - 200)), STS)
    assert verdict.step == "failover"
    assert "ordinal 1" in verdict.message and "200 bytes" in verdict.message


@pytest.mark.parametrize(
    ("zero", "words"),
    [
        (replica(POD0, state="wait_bgsave"), "wait_bgsave"),
        (replica(POD0, offset=1000 - MAX_BEHIND_BYTES - 1), "bytes"),
        (replica(POD0, lag=5), "5 s behind"),
    ],
)
def test_ordinal_0_behind_or_not_yet_synced_is_waited_for(zero: Replica, words: str) -> None:
    verdict = decide(master(POD1, zero), STS)
    assert verdict.step == "wait" and words in verdict.message


def test_ordinal_0_missing_from_the_masters_replicas_is_waited_for() -> None:
    verdict = decide(master(POD1), STS)
    assert verdict.step == "wait" and "not its connected replica" in verdict.message


def test_a_master_that_still_says_replica_is_a_failover_in_progress() -> None:
    assert decide(master(POD0, role="slave"), STS).step == "wait"


def test_an_address_that_is_no_pod_of_the_statefulset_is_never_trusted() -> None:
    for host in ("10.1.2.3", "shop-redis-sentinel", "other-redis-0.other-redis"):
        verdict = decide(master(host), STS)
        assert verdict.step == "wait" and host in verdict.message


def test_not_knowing_the_master_waits_and_says_why() -> None:
    verdict = decide(None, STS, "ConnectionError: refused")
    assert verdict.step == "wait" and "ConnectionError: refused" in verdict.message


def test_ordinals_come_from_the_pod_name_only() -> None:
    assert ordinal(POD1, STS) == 1
    assert ordinal("shop-redis-12", STS) == 12
    assert ordinal("shop-redis-sentinel-0", STS) is None
    assert ordinal("xshop-redis-0.shop-redis", STS) is None


def test_a_check_is_needed_only_when_redis_shrinks_from_several_pods() -> None:
    assert needed(2, 1) and needed(2, 0)
    assert not needed(2, 2) and not needed(1, 0) and not needed(0, 1)


def test_the_master_is_read_from_redis_py_info_replication() -> None:
    info = {
        "role": "master",
        "connected_slaves": 1,
        "slave0": {"ip": POD0, "port": 6379, "state": "online", "offset": 990, "lag": 0},
        "master_repl_offset": 1000,
    }
    assert Master.from_info(POD1, info) == master(POD1, replica(POD0, offset=990))


def test_leaving_sentinel_rewires_the_app_and_shrinks_redis_only_once_ordinal_0_is_master() -> None:
    def build(stage: int) -> list[dict[str, object]]:
        spec = api.ScalingStageSpec(stage=stage)
        the_plan = plan.resolve(spec, name="shop", namespace="ns")
        return builders.build(the_plan, builders.Owner("shop", "uid"))

    phases = {p.name: p for p in transition.phases(build(5), build(4), "uid")}
    app = next(s for s in phases["rewire"].steps if s.obj["metadata"]["name"] == "shop-app")
    assert app.gates == {"redis-master-kept"}
    shrink = next(s for s in phases["retire"].steps if s.obj["metadata"]["name"] == STS)
    assert shrink.obj["spec"]["replicas"] == 1
    # A promotion, or a demotion that keeps Redis as it is, waits on no Redis hand-over.
    for before, after in [(4, 5), (4, 3), (3, 2)]:
        for phase in transition.phases(build(before), build(after), "uid"):
            assert all("redis-master-kept" not in s.gates for s in phase.steps)
