"""The operator's Redis Sentinel I/O (`kube.redis_master`, `kube.redis_failover`) for real.

A Redis master, a replica and three Sentinels on loopback: what the operator reads
is what real Redis answers, and the failover it asks for really happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.services import SentinelGroup, sentinel_group
from z2m import kube

pytestmark = pytest.mark.services


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path) as g:
        yield g


def test_the_master_named_by_sentinel_describes_itself_and_its_replica(
    group: SentinelGroup,
) -> None:
    old = group.redis_ports[0]
    group.client(old).set("cart:1", "3 items")
    address = f"127.0.0.1:{group.sentinel_ports[0]}"

    def synced() -> bool:
        seen = kube.redis_master(address, "z2m", group.password)
        return seen.role == "master" and [r.offset for r in seen.replicas] == [seen.offset]

    eventually(synced, timeout=30)
    master = kube.redis_master(address, "z2m", group.password)
    # No announced name on loopback: the address Sentinel gave stands in for it.
    assert master.host == "127.0.0.1"
    assert [(r.host, r.state) for r in master.replicas] == [("127.0.0.1", "online")]


def test_a_requested_failover_makes_the_replica_the_master(group: SentinelGroup) -> None:
    old, replica = group.redis_ports
    address = f"127.0.0.1:{group.sentinel_ports[1]}"
    eventually(lambda: group.client(old).info("replication")["connected_slaves"] == 1)
    # Sentinel refuses a failover until it has seen the replica (NOGOODSLAVE): ask again.
    eventually(lambda: _failover(address), timeout=30)
    eventually(lambda: group.master_port() == replica, timeout=30)
    eventually(lambda: kube.redis_master(address, "z2m", group.password).role == "master")


def _failover(address: str) -> bool:
    try:
        return kube.redis_failover(address, "z2m")
    except Exception as exc:  # NOGOODSLAVE until Sentinel knows the replica is healthy
        raise AssertionError(str(exc)) from exc
