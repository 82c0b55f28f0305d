"""Fast tests of the app's pure logic: no services, no processes (except the exit-code test)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sample_app import policy
from sample_app.config import Config, ConfigError, parse_env
from sample_app.jobs import FanoutJob
from sample_app.load import LoadResult, percentile
from sample_app.web import Session, SessionCodec
from tests.services import REPO_ROOT, app_env

PG = "postgresql://app:pw@db:5432/app"


# --------------------------------------------------------------------------- config


def test_empty_environment_turns_every_optional_feature_off() -> None:
    assert parse_env({}) == Config(
        role="web",
        port=8080,
        database_url=None,
        replica_urls=(),
        redis_url=None,
        broker_url=None,
        secret_key=None,
    )


def test_full_stage_five_environment_is_parsed_into_every_field() -> None:
    config = parse_env(
        {
            "DATABASE_URL": PG,
            "DATABASE_REPLICA_URLS": " postgresql://r1/app , postgres://r2:5433/app ,",
            "REDIS_URL": "redis://cache:6379/0",
            "BROKER_URL": "amqp://u:p@mq:5672/",
            "ROLE": "worker",
            "PORT": "9000",
            "SECRET_KEY": "k" * 32,
        }
    )
    assert config.database_url == PG
    assert config.replica_urls == ("postgresql://r1/app", "postgres://r2:5433/app")
    assert config.redis_url == "redis://cache:6379/0"
    assert config.broker_url == "amqp://u:p@mq:5672/"
    assert (config.role, config.port, config.secret_key) == ("worker", 9000, "k" * 32)


def test_empty_string_counts_as_unset_like_kubernetes_renders_it() -> None:
    config = parse_env({"DATABASE_URL": PG, "REDIS_URL": "", "BROKER_URL": "  ", "PORT": ""})
    assert (config.redis_url, config.broker_url, config.port) == (None, None, 8080)


def test_stage_one_localhost_database_url_is_accepted() -> None:
    url = "postgresql://app@localhost/app"
    assert parse_env({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DATABASE_URL": "mysql://db/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": "db.example.com"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db:99999/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": PG, "DATABASE_REPLICA_URLS": f"{PG},redis://x"}, "DATABASE_REPLICA_URLS"),
        ({"DATABASE_REPLICA_URLS": PG}, "DATABASE_REPLICA_URLS"),
        ({"REDIS_URL": "http://cache"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://cache:port"}, "REDIS_URL"),
        ({"BROKER_URL": "redis://mq"}, "BROKER_URL"),
        ({"ROLE": "scheduler"}, "ROLE"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"PORT": "65536"}, "PORT"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SEARCH_URL": "opensearch:9200"}, "SEARCH_URL"),
        ({"SEARCH_URL": "ftp://search:9200"}, "SEARCH_URL"),
        ({"SEARCH_INDEX": "Posts"}, "SEARCH_INDEX"),
        ({"SEARCH_INDEX": "_posts"}, "SEARCH_INDEX"),
    ],
)
def test_malformed_variable_is_rejected_naming_that_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_search_url_turns_search_on_with_the_default_index() -> None:
    config = parse_env({"SEARCH_URL": "http://shop-search:9200"})
    assert config.search_url == "http://shop-search:9200"
    assert config.search_index == "posts"
    assert "search" in config.stage_features
    assert parse_env({}).search_url is None


def test_stage_five_sentinel_list_is_parsed_with_the_master_name_and_password() -> None:
    config = parse_env(
        {
            "REDIS_SENTINELS": "shop-redis-sentinel:26379, 10.0.0.7:26380 ,",
            "REDIS_MASTER_NAME": "z2m",
            "REDIS_PASSWORD": "pw",
        }
    )
    assert config.redis_sentinels == (("shop-redis-sentinel", 26379), ("10.0.0.7", 26380))
    assert (config.redis_url, config.redis_master_name, config.redis_password) == (
        None,
        "z2m",
        "pw",
    )
    assert "cache(sentinels=2)" in config.stage_features


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"REDIS_SENTINELS": "sentinel", "REDIS_MASTER_NAME": "z2m"}, "REDIS_SENTINELS", "entry 1"),
        ({"REDIS_SENTINELS": "a:1,b:x", "REDIS_MASTER_NAME": "z2m"}, "REDIS_SENTINELS", "entry 2"),
        ({"REDIS_SENTINELS": "a:70000", "REDIS_MASTER_NAME": "z2m"}, "REDIS_SENTINELS", "65535"),
        ({"REDIS_SENTINELS": "redis://a:1", "REDIS_MASTER_NAME": "z2m"}, "REDIS_SENTINELS", "host"),
        ({"REDIS_SENTINELS": "a:26379"}, "REDIS_MASTER_NAME", "needed"),
        (
            {"REDIS_SENTINELS": "a:26379", "REDIS_MASTER_NAME": "z2m", "REDIS_URL": "redis://c"},
            "REDIS_SENTINELS",
            "REDIS_URL",
        ),
    ],
)
def test_a_bad_sentinel_setting_is_rejected_saying_what_is_wrong(
    env: dict[str, str], variable: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env(env)
    assert caught.value.variable == variable and words in str(caught.value)


def test_config_error_never_echoes_a_password_from_a_url() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env({"DATABASE_URL": "mysql://app:hunter2@db/app"})
    assert "hunter2" not in str(caught.value)


def test_replica_error_says_which_entry_is_wrong() -> None:
    with pytest.raises(ConfigError, match="entry 2"):
        parse_env({"DATABASE_URL": PG, "DATABASE_REPLICA_URLS": f"{PG},amqp://x"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DATABASE_URL", "mysql://app:hunter2@db/app"), ("PORT", "eighty"), ("ROLE", "cron")],
)
def test_malformed_env_stops_startup_with_exit_2_and_one_line_naming_the_variable(
    variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sample_app"],
        env=app_env(**{variable: value}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "hunter2" not in result.stderr


# --------------------------------------------------------------------------- policy


@given(base=st.floats(10, 3600), jitter=st.floats(0, 0.5), seed=st.integers())
def test_ttl_with_jitter_stays_within_the_jitter_band(
    base: float, jitter: float, seed: int
) -> None:
    ttl = policy.ttl_with_jitter(base, jitter, random.Random(seed))
    assert base * (1 - jitter) - 1 <= ttl <= base * (1 + jitter) + 1


def test_ttl_with_jitter_spreads_expiries_instead_of_repeating_one_value() -> None:
    rng = random.Random(1)
    ttls = {policy.ttl_with_jitter(60, 0.1, rng) for _ in range(200)}
    assert len(ttls) >= 8
    assert min(ttls) < 60 < max(ttls)


def test_ttl_with_jitter_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        policy.ttl_with_jitter(0, 0.1)
    with pytest.raises(ValueError, match="jitter"):
        policy.ttl_with_jitter(60, 1.5)


def test_user_is_sticky_to_the_primary_only_inside_the_window_after_a_write() -> None:
    assert policy.is_sticky(100.0, 100.0)
    assert policy.is_sticky(100.0, 104.9)
    assert not policy.is_sticky(100.0, 105.0)
    assert not policy.is_sticky(None, 100.0)
    # A write timestamp from the future (clock skew between pods) is not trusted.
    assert not policy.is_sticky(200.0, 100.0)


OK = policy.ReplicaHealth(reachable=True, lag_seconds=0.1)
LAGGING = policy.ReplicaHealth(reachable=True, lag_seconds=30.0)
DOWN = policy.ReplicaHealth(reachable=False)
UNKNOWN = policy.ReplicaHealth()


def test_reads_round_robin_over_healthy_replicas() -> None:
    assert policy.replica_order([OK, OK, OK], start=1) == [1, 2, 0]


def test_down_lagging_and_unchecked_replicas_are_skipped() -> None:
    assert policy.replica_order([DOWN, LAGGING, OK, UNKNOWN], start=0) == [2]


def test_no_usable_replica_means_reading_from_the_primary() -> None:
    assert policy.replica_order([DOWN, LAGGING], start=0) == []
    assert policy.replica_order([], start=0) == []


def test_lag_threshold_is_inclusive() -> None:
    edge = policy.ReplicaHealth(reachable=True, lag_seconds=policy.MAX_REPLICA_LAG_SECONDS)
    assert edge.usable()
    assert not policy.ReplicaHealth(reachable=True, lag_seconds=2.01).usable(max_lag=2.0)


def test_one_lag_spike_after_a_good_reading_is_ignored_but_two_in_a_row_are_not() -> None:
    spike = policy.confirm_lag(previous=OK, current=LAGGING)
    assert spike.usable()
    assert not policy.confirm_lag(previous=LAGGING, current=LAGGING).usable()


def test_an_unreachable_replica_is_believed_at_once() -> None:
    assert not policy.confirm_lag(previous=OK, current=DOWN).usable()


def test_circuit_breaker_backs_off_exponentially_and_closes_on_success() -> None:
    breaker = policy.CircuitBreaker(base_backoff=1.0, max_backoff=3.0)
    assert breaker.allow(0.0)
    breaker.record_failure(now=0.0)
    assert not breaker.allow(0.5)
    assert breaker.allow(1.0)
    breaker.record_failure(now=1.0)  # probe failed: twice as long
    assert not breaker.allow(2.9)
    assert breaker.allow(3.0)
    breaker.record_failure(now=3.0)  # would be 4 s, capped at 3 s
    assert breaker.allow(6.0)
    breaker.record_success()
    assert not breaker.is_open
    breaker.record_failure(now=10.0)
    assert breaker.allow(11.0)  # back-off restarted from the base


# --------------------------------------------------------------------------- sessions and jobs


def test_session_token_round_trips_between_codecs_sharing_a_key() -> None:
    session = Session(user_id=42, last_write_at=1234.5)
    token = SessionCodec("k" * 32).dumps(session)
    assert SessionCodec("k" * 32).loads(token) == session


def test_session_token_signed_with_another_key_or_tampered_is_rejected() -> None:
    token = SessionCodec("a" * 32).dumps(Session(user_id=1))
    assert SessionCodec("b" * 32).loads(token) is None
    forged = token.replace(token[0], "A" if token[0] != "A" else "B", 1)
    assert SessionCodec("a" * 32).loads(forged) is None
    assert SessionCodec("a" * 32).loads(None) is None


def test_fanout_job_survives_the_queue_encoding() -> None:
    job = FanoutJob.new(post_id=7, author_id=3)
    assert FanoutJob.from_bytes(job.to_bytes()) == job
    assert FanoutJob.new(1, 1).job_id != FanoutJob.new(1, 1).job_id


@pytest.mark.parametrize(
    "body", [b"not json", b"{}", b'{"job_id": "x", "post_id": 1, "author_id": 1}']
)
def test_malformed_job_message_is_rejected(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a fan-out job"):
        FanoutJob.from_bytes(body)


# --------------------------------------------------------------------------- load generator


def test_percentile_uses_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) == 0.0


def test_load_result_throughput_is_completed_requests_per_second() -> None:
    result = LoadResult(requests=300, errors=0, dropped=0, duration=2.0, latencies=(0.1,) * 300)
    assert result.throughput == 150.0
    assert "throughput=150.0/s" in result.summary()
