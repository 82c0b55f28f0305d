"""sample_app.shards without a database: DATABASE_SHARDS and the user → shard rule."""

from __future__ import annotations

import pytest

from sample_app import shards
from sample_app.config import ConfigError, parse_env
from z2m import sharding


def test_database_shards_lists_urls_in_shard_order() -> None:
    value = "postgresql://a/app, postgresql://b/app"
    assert shards.parse_shard_urls(value) == ("postgresql://a/app", "postgresql://b/app")


def test_an_unset_database_shards_means_one_database() -> None:
    sharded = shards.ShardedDatabase.from_env({"DATABASE_URL": "postgresql://a/app"})
    assert [shard.primary_url for shard in sharded.shards] == ["postgresql://a/app"]


def test_a_database_shards_entry_that_is_not_a_postgresql_url_is_refused() -> None:
    with pytest.raises(ValueError, match="DATABASE_SHARDS"):
        shards.parse_shard_urls("postgresql://a/app,redis://b")


def test_the_app_and_the_mover_agree_on_every_users_shard() -> None:
    sharded = shards.ShardedDatabase(["postgresql://a/x", "postgresql://b/x", "postgresql://c/x"])
    for user in range(1, 50):
        expected = sharded.shards[sharding.shard_of(user, 3)]
        assert sharded.for_user(user) is expected


def test_config_reads_database_shards_and_drops_the_unsharded_replicas() -> None:
    config = parse_env(
        {
            "DATABASE_URL": "postgresql://old/app",
            "DATABASE_REPLICA_URLS": "postgresql://old-replica/app",
            "DATABASE_SHARDS": "postgresql://a/app,postgresql://b/app",
        }
    )
    assert config.database_shards == ("postgresql://a/app", "postgresql://b/app")
    assert config.replica_urls == ()
    assert "database(shards=2)" in config.stage_features


def test_config_without_database_shards_is_the_unsharded_app() -> None:
    config = parse_env({"DATABASE_URL": "postgresql://a/app"})
    assert config.database_shards == ()
    assert "database" in config.stage_features


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("postgresql://a/app,,postgresql://b/app", "entry 2 is empty"),
        ("postgresql://a/app,redis://b", "entry 2: must be a postgres:// or postgresql:// URL"),
    ],
)
def test_config_refuses_a_malformed_database_shards(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"DATABASE_SHARDS: {problem}"):
        parse_env({"DATABASE_SHARDS": value})
