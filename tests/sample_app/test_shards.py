"""sample_app.shards without a database: DATABASE_SHARDS and the user → shard rule."""

from __future__ import annotations

import pytest

from sample_app import shards
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
