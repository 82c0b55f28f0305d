"""Stage 6's PostgreSQL shards as built: one Patroni cluster per shard, on kept claims."""

from __future__ import annotations

import json
from typing import Any

from z2m import api, builders, crd, plan
from z2m.builders import shards

Obj = dict[str, Any]


def build(stage: int, **database: object) -> list[Obj]:
    spec = api.ScalingStageSpec.model_validate({"stage": stage, "database": database})
    p = plan.resolve(spec, name="shop", namespace="ns")
    return builders.build(p, builders.Owner("shop", "uid"))


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objs if (o["kind"], o["metadata"]["name"]) == (kind, name))


def env(sts: Obj) -> dict[str, str]:
    container = sts["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_stage_6_provides_two_shards_by_default_and_stage_5_none() -> None:
    six = [o["metadata"]["name"] for o in build(6) if o["kind"] == "StatefulSet"]
    assert [n for n in six if "shard" in n] == ["shop-db-shard-0", "shop-db-shard-1"]
    assert not any("shard" in o["metadata"]["name"] for o in build(5))


def test_spec_database_shards_sets_how_many() -> None:
    objs = build(6, shards=3)
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "StatefulSet"} >= {
        f"shop-db-shard-{k}" for k in range(3)
    }


def test_each_shard_is_its_own_patroni_cluster_founded_by_its_one_pod() -> None:
    objs = build(6)
    selectors = []
    for k in range(2):
        sts = named(objs, "StatefulSet", f"shop-db-shard-{k}")
        assert sts["spec"]["replicas"] == 1
        variables = env(sts)
        assert variables["PATRONI_SCOPE"] == f"shop-pg-shard-{k}"
        assert variables["Z2M_LEADER"] == f"shop-db-shard-{k}" == sts["spec"]["serviceName"]
        assert variables["Z2M_BOOTSTRAP"] == "1"
        selectors.append(sts["spec"]["selector"]["matchLabels"])
        service = named(objs, "Service", f"shop-db-shard-{k}")
        assert service["spec"]["selector"] == {
            builders.POSTGRES_CLUSTER: f"shop-pg-shard-{k}",
            "role": "master",
        }
    assert selectors[0] != selectors[1]
    database = named(objs, "StatefulSet", "shop-db")
    assert all(s.items() - database["spec"]["selector"]["matchLabels"].items() for s in selectors)


def test_a_shard_keeps_its_claim_and_runs_logical_wal_for_the_move() -> None:
    objs = build(6)
    sts = named(objs, "StatefulSet", "shop-db-shard-0")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    config = json.loads(
        named(objs, "ConfigMap", "shop-pg-shard-0-config")["metadata"]["annotations"]["config"]
    )
    assert config["postgresql"]["parameters"]["wal_level"] == "logical"
    assert config["slots"] == {} and config["synchronous_mode"] is False
    assert shards.shard_hosts(
        plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="n")
    ) == [
        "shop-db-shard-0",
        "shop-db-shard-1",
    ]


def test_the_crd_refuses_changing_the_shard_count_while_sharded() -> None:
    spec = crd.schema_of(api.ScalingStageSpec)
    rules = [r for r in spec["x-kubernetes-validations"] if "shards" in r["rule"]]
    assert len(rules) == 1 and "oldSelf.stage < 6" in rules[0]["rule"]
    assert "cannot change while the database is sharded" in rules[0]["message"]
