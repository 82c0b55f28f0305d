"""Leader election's decision, without a cluster: who leads, given a Lease and the time."""

from __future__ import annotations

import datetime

import pytest

from z2m import leader

T = leader.Timing(lease_duration=10, renew_deadline=7, retry_period=2)
WALL = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
LATER = WALL + datetime.timedelta(seconds=30)


def held_by(holder: str, transitions: int = 3) -> leader.Record:
    return leader.Record(holder, 10, acquire_time=WALL, renew_time=WALL, transitions=transitions)


def test_a_missing_lease_is_created_with_us_as_the_holder() -> None:
    wanted = leader.decide(leader.observe(None, None, 0.0), "a", T, 0.0, WALL)
    assert wanted == leader.Record("a", 10, acquire_time=WALL, renew_time=WALL, transitions=0)


def test_a_lease_another_renewed_recently_is_left_alone() -> None:
    seen = leader.observe(None, held_by("b"), now=100.0)
    assert leader.decide(seen, "a", T, now=109.9, wall=LATER) is None


def test_a_lease_unchanged_for_its_duration_is_taken_over() -> None:
    seen = leader.observe(None, held_by("b"), now=100.0)
    wanted = leader.decide(seen, "a", T, now=110.0, wall=LATER)
    assert wanted == leader.Record("a", 10, acquire_time=LATER, renew_time=LATER, transitions=4)


def test_each_renewal_by_the_holder_restarts_the_followers_clock() -> None:
    seen = leader.observe(None, held_by("b"), now=100.0)
    renewed = leader.Record("b", 10, acquire_time=WALL, renew_time=LATER, transitions=3)
    seen = leader.observe(seen, renewed, now=108.0)
    assert seen.seen_at == 108.0
    assert leader.decide(seen, "a", T, now=115.0, wall=LATER) is None


def test_an_unchanged_record_keeps_the_time_it_was_first_seen() -> None:
    first = leader.observe(None, held_by("b"), now=100.0)
    assert leader.observe(first, held_by("b"), now=105.0).seen_at == 100.0


def test_the_holders_own_clock_is_never_trusted() -> None:
    # The holder's renewTime is an hour old (its clock is behind), but we just saw it change.
    skewed = leader.Record("b", 10, renew_time=WALL - datetime.timedelta(hours=1))
    seen = leader.observe(None, skewed, now=100.0)
    assert leader.decide(seen, "a", T, now=101.0, wall=LATER) is None


def test_the_holder_renews_keeping_its_acquire_time_and_transition_count() -> None:
    seen = leader.observe(None, held_by("a"), now=100.0)
    wanted = leader.decide(seen, "a", T, now=200.0, wall=LATER)
    assert wanted == leader.Record("a", 10, acquire_time=WALL, renew_time=LATER, transitions=3)


def test_a_released_lease_is_taken_at_once() -> None:
    free = leader.released(held_by("b"), WALL)
    assert free.holder == "" and free.lease_duration_seconds == 1 and free.transitions == 3
    seen = leader.observe(None, free, now=100.0)
    wanted = leader.decide(seen, "a", T, now=100.0, wall=LATER)
    assert wanted is not None and wanted.holder == "a" and wanted.transitions == 4


def test_a_leader_stops_leading_at_its_renew_deadline_before_the_lease_expires() -> None:
    assert leader.leading(renewed_at=100.0, timing=T, now=106.9)
    assert not leader.leading(renewed_at=100.0, timing=T, now=107.0)
    assert not leader.leading(renewed_at=None, timing=T, now=0.0)
    assert T.renew_deadline < T.lease_duration


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(7, 7, 2), (10, 2, 2), (10, 7, 0)],
    ids=["deadline-not-shorter-than-duration", "deadline-within-1.2-retries", "no-retry-period"],
)
def test_timings_client_go_would_refuse_are_refused(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError):
        leader.Timing(duration, deadline, retry)


def test_the_worst_hand_over_fits_in_15_seconds_with_the_defaults() -> None:
    # A leader killed just after renewing: a follower sees that renewal up to one retry
    # later, waits the lease duration from then, and tries again up to one retry after.
    d = leader.Timing()
    assert d.lease_duration + 2 * d.retry_period <= 15
