"""Stage 6's Redis Cluster for real: z2m's node script, and the app's cluster-aware cache.

Six redis-server processes on loopback, each started by `files/redis-cluster.sh` as a
pod would be: ordinal 0 forms the cluster once, a restart forms nothing again, and
the sample app's `Cache.from_cluster` reads and writes keys over every primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sample_app.cache import Cache
from sample_app.config import parse_sentinels
from tests.conftest import eventually
from tests.services import RedisClusterNodes, redis_cluster

pytestmark = pytest.mark.services


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    with redis_cluster(tmp_path) as nodes:
        yield nodes


def roles(cluster: RedisClusterNodes) -> list[str]:
    with cluster.client(cluster.ports[0]) as node:
        nodes = node.cluster("NODES")  # redis-py parses it: address -> {"flags": ...}
    return sorted("primary" if "master" in n["flags"] else "replica" for n in nodes.values())


def test_the_script_forms_three_primaries_with_a_replica_each_over_every_slot(
    cluster: RedisClusterNodes,
) -> None:
    info = cluster.info(cluster.ports[3])
    assert (info["cluster_state"], info["cluster_slots_assigned"]) == ("ok", "16384")
    assert info["cluster_size"] == "3"
    assert roles(cluster) == ["primary"] * 3 + ["replica"] * 3


def test_restarting_the_node_that_formed_it_forms_nothing_again(
    cluster: RedisClusterNodes,
) -> None:
    def ids() -> list[str]:
        found = []
        for port in cluster.ports:
            with cluster.client(port) as node:
                found.append(node.execute_command("CLUSTER MYID"))
        return found

    before = ids()
    epoch = cluster.info(cluster.ports[1])["cluster_current_epoch"]
    cluster.stop(0)
    cluster.start(0)
    eventually(lambda: cluster.formed() and cluster.said(0, "not forming it again"), timeout=60)
    assert ids() == before
    # A second `--cluster create` would have failed or bumped the epochs on a fresh cluster.
    assert cluster.said(0, "redis-cluster: formed from") == 1
    assert cluster.info(cluster.ports[1])["cluster_current_epoch"] == epoch


def test_all_six_back_at_new_addresses_find_each_other_with_the_same_slots(
    cluster: RedisClusterNodes,
) -> None:
    """What 6 -> 5 -> 6 does: every pod is recreated from its kept claim with a new IP."""
    before = {port: cluster.info(port)["cluster_my_epoch"] for port in cluster.ports}
    for ordinal in range(6):
        cluster.stop(ordinal)
    cluster.host = "127.0.0.2"
    for ordinal in range(6):
        cluster.start(ordinal)
    eventually(cluster.formed, timeout=90)
    assert {port: cluster.info(port)["cluster_my_epoch"] for port in cluster.ports} == before
    assert roles(cluster) == ["primary"] * 3 + ["replica"] * 3
    assert cluster.said(0, "redis-cluster: formed from") == 1


def test_the_apps_cluster_cache_spreads_keys_over_the_primaries_and_hits_them(
    cluster: RedisClusterNodes,
) -> None:
    nodes = parse_sentinels(cluster.nodes, "REDIS_CLUSTER_NODES")[:1]  # one node is enough

    async def run() -> tuple[list[str], list[str], bool]:
        cache = Cache.from_cluster(nodes, cluster.password)
        keys = [f"user_posts:{i}" for i in range(30)]
        try:
            first = [(await cache.get_or_load(k, _loader(k)))[1] for k in keys]
            second = [(await cache.get_or_load(k, _loader(k)))[1] for k in keys]
            await cache.invalidate(keys[0])
            return first, second, await cache.ping()
        finally:
            await cache.close()

    first, second, answered = asyncio.run(run())
    assert set(first) == {"miss"} and set(second) == {"hit"} and answered
    holding = 0
    for port in cluster.ports:
        with cluster.client(port) as node:
            role = node.execute_command("ROLE")[0]
            if role in (b"master", "master"):
                holding += node.dbsize() > 0
    assert holding == 3  # 29 keys left, on every primary's slots


def _loader(key: str):  # type: ignore[no-untyped-def]
    async def load() -> dict[str, str]:
        return {"key": key}

    return load
