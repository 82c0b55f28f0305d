"""The shard move's planner (z2m.sharding), without any database."""

from __future__ import annotations

import dataclasses

import pytest

from z2m import sharding

SPLIT = sharding.Move("split", sources=1, targets=2)
MERGE = sharding.Move("merge", sources=2, targets=1)
READY = sharding.SubscriptionState(exists=True, copied=True, lag_bytes=0)


def seen(move: sharding.Move, **changes: object) -> sharding.Observed:
    """Everything in place and caught up, not fenced, not routed; then ``changes``."""
    base = sharding.Observed(
        publications=frozenset(move.pairs()),
        subscriptions=dict.fromkeys(move.pairs(), READY),
        target_has_rows=(True,) * move.targets,
        fenced=(False,) * move.sources,
        stale_sessions=(0,) * move.sources,
        routed=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def nothing(move: sharding.Move) -> sharding.Observed:
    return seen(
        move,
        publications=frozenset(),
        subscriptions={},
        target_has_rows=(False,) * move.targets,
    )


def test_a_user_lives_on_the_shard_of_its_id_modulo_n() -> None:
    assert [sharding.shard_of(u, 3) for u in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_a_move_is_one_to_many_or_many_to_one() -> None:
    for sources, targets in ((1, 1), (2, 2), (3, 2)):
        with pytest.raises(ValueError):
            sharding.Move("m", sources=sources, targets=targets)


def test_a_split_publishes_each_targets_rows_with_a_modulo_row_filter() -> None:
    statements = SPLIT.publication_sql(1)
    assert statements[0] == "ALTER TABLE posts REPLICA IDENTITY FULL"
    assert "users WHERE ((id % 2) = 1)" in statements[-1]
    assert "posts WHERE ((author_id % 2) = 1)" in statements[-1]


def test_a_merge_publishes_whole_tables() -> None:
    assert "WHERE" not in MERGE.publication_sql(0)[-1]


def test_the_first_step_is_a_publication_on_the_source() -> None:
    step = sharding.next_step(SPLIT, nothing(SPLIT))
    assert (step.kind, step.source, step.target) == ("publish", 0, 0)


def test_subscriptions_follow_once_every_publication_exists() -> None:
    step = sharding.next_step(
        SPLIT, dataclasses.replace(nothing(SPLIT), publications=frozenset(SPLIT.pairs()))
    )
    assert (step.kind, step.source, step.target) == ("subscribe", 0, 0)


def test_a_target_holding_rows_without_a_subscription_blocks_the_move() -> None:
    observed = seen(SPLIT, subscriptions={}, target_has_rows=(True, False))
    assert sharding.next_step(SPLIT, observed).kind == "blocked"


def test_a_merge_target_filled_by_its_first_subscription_still_gets_the_second() -> None:
    observed = seen(MERGE, subscriptions={(0, 0): READY})
    step = sharding.next_step(MERGE, observed)
    assert (step.kind, step.source, step.target) == ("subscribe", 1, 0)


def test_the_move_waits_while_the_initial_copy_runs() -> None:
    copying = sharding.SubscriptionState(exists=True, copied=False)
    step = sharding.next_step(SPLIT, seen(SPLIT, subscriptions={(0, 0): READY, (0, 1): copying}))
    assert step.kind == "wait"
    assert step.reason.startswith("initial copy still running")


def test_the_fence_waits_until_every_slot_is_close_behind() -> None:
    far = sharding.SubscriptionState(exists=True, copied=True, lag_bytes=SPLIT.fence_lag_bytes + 1)
    step = sharding.next_step(SPLIT, seen(SPLIT, subscriptions={(0, 0): READY, (0, 1): far}))
    assert step.kind == "wait"
    assert "s0→t1" in step.reason


def test_close_behind_is_enough_to_fence() -> None:
    near = sharding.SubscriptionState(exists=True, copied=True, lag_bytes=100)
    observed = seen(SPLIT, subscriptions={(0, 0): READY, (0, 1): near})
    assert sharding.next_step(SPLIT, observed).kind == "fence"


def test_behind_the_fence_only_a_full_catch_up_allows_the_cutover() -> None:
    near = sharding.SubscriptionState(exists=True, copied=True, lag_bytes=100)
    observed = seen(SPLIT, fenced=(True,), subscriptions={(0, 0): READY, (0, 1): near})
    assert sharding.next_step(SPLIT, observed).kind == "wait"
    assert sharding.next_step(SPLIT, seen(SPLIT, fenced=(True,))).kind == "cutover"


def test_sessions_older_than_the_fence_are_ended_before_the_cutover() -> None:
    observed = seen(SPLIT, fenced=(True,), stale_sessions=(2,))
    assert sharding.next_step(SPLIT, observed).kind == "fence"


def test_a_merge_fences_every_shard_before_the_cutover() -> None:
    assert sharding.next_step(MERGE, seen(MERGE, fenced=(True, False))).kind == "fence"


def test_once_routed_subscriptions_then_publications_are_dropped_then_done() -> None:
    routed = seen(SPLIT, fenced=(True,), routed=True)
    assert sharding.next_step(SPLIT, routed).kind == "drop-subscription"
    no_subs = dataclasses.replace(routed, subscriptions={})
    assert sharding.next_step(SPLIT, no_subs).kind == "drop-publication"
    bare = dataclasses.replace(no_subs, publications=frozenset())
    assert sharding.next_step(SPLIT, bare).kind == "done"


def test_after_a_split_each_shard_hands_out_only_its_own_user_ids() -> None:
    for target in range(3):
        move = sharding.Move("s", sources=1, targets=3)
        first, step = sharding.sequence_settings(move, source_last=100, target=target)
        assert (first > 100, first % 3, step) == (True, target, 3)


def test_after_a_merge_the_sequence_continues_above_every_shard() -> None:
    last = sharding.max_sequence([41, None, 57])
    assert sharding.sequence_settings(MERGE, last, 0) == (58, 1)
