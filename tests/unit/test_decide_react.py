"""The per-tick check: does a reading open or break a window, so the object is evaluated now?

`decide.opens_or_breaks` is asked of every object that is not due, against each
tick's grouped reading. It must say yes exactly when a full evaluation would
start or end a window, and nothing else; these check it against `decide.decide`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from z2m import api, decide

Values = dict[str, float | None]

P = api.Promotion(
    mode="auto",
    prometheus=api.Prometheus(url="http://prometheus:9090"),
    promote_window_seconds=60,
    demote_window_seconds=300,
    cooldown_seconds=0,
    max_stage=5,
)
OVERLOAD: Values = {"rps": 1e9, "app_cpu_percent": 99.0}
IDLE: Values = {"rps": 0.0, "app_cpu_percent": 1.0}
BUSY: Values = {"rps": 0.2, "app_cpu_percent": 60.0}
"""Neither a breach nor oversized: fits its stage and would not fit the lower one."""


def kept(stage: int, values: Values, now: float = 100.0) -> decide.Memory:
    """The memory an evaluation of `values` at `now` leaves."""
    return decide.decide(stage, P, values, decide.Memory(stage=stage), now).memory


def test_a_breach_that_starts_between_intervals_is_evaluated_now() -> None:
    assert decide.opens_or_breaks(1, P, OVERLOAD, kept(1, IDLE))


def test_a_breach_already_in_its_window_waits_for_the_window_or_the_interval() -> None:
    running = kept(1, OVERLOAD)
    assert running.breach_since is not None
    assert not decide.opens_or_breaks(1, P, OVERLOAD, running)


def test_a_breach_that_ends_inside_its_window_is_evaluated_now() -> None:
    assert decide.opens_or_breaks(1, P, IDLE, kept(1, OVERLOAD))


def test_a_quiet_object_that_stays_quiet_is_left_to_its_interval() -> None:
    assert not decide.opens_or_breaks(1, P, IDLE, kept(1, IDLE))
    assert not decide.opens_or_breaks(3, P, BUSY, kept(3, BUSY))


def test_an_oversized_stage_opens_its_demote_window_now_and_not_again() -> None:
    assert decide.opens_or_breaks(3, P, IDLE, kept(3, BUSY))
    assert not decide.opens_or_breaks(3, P, IDLE, kept(3, IDLE))


def test_load_returning_during_a_demote_window_breaks_it_now() -> None:
    assert decide.opens_or_breaks(3, P, BUSY, kept(3, IDLE))


def test_the_observed_replicas_count_as_they_do_in_a_decision() -> None:
    # 10 % on 2 running replicas is 20 % on stage 2's one, below half of 80 %: oversized;
    # on the 12 an HPA may run it is 120 %.
    calm: Values = {"rps": 0.0, "app_cpu_percent": 10.0}
    assert decide.opens_or_breaks(3, P, calm, kept(3, BUSY), app_replicas=2)
    assert not decide.opens_or_breaks(3, P, calm, kept(3, BUSY), app_replicas=12)


def test_no_rps_value_in_the_tick_proves_nothing_either_way() -> None:
    assert not decide.opens_or_breaks(1, P, {"rps": None, "app_cpu_percent": 99.0}, kept(1, IDLE))
    assert not decide.opens_or_breaks(1, P, {}, kept(1, OVERLOAD))


def test_a_stage_moved_by_someone_else_is_left_to_the_evaluation_at_the_interval() -> None:
    assert not decide.opens_or_breaks(2, P, OVERLOAD, kept(1, IDLE))


def test_a_stage_outside_the_allowed_range_is_never_checked() -> None:
    narrow = P.model_copy(update={"min_stage": 2})
    assert not decide.opens_or_breaks(1, narrow, OVERLOAD, kept(1, IDLE))


def test_a_breach_at_the_top_stage_is_still_evaluated_to_name_the_bottleneck() -> None:
    assert decide.opens_or_breaks(5, P, OVERLOAD, kept(5, BUSY))


# --- property: the check agrees with a full evaluation ---------------------------------------

SIGNAL_VALUES: dict[str, st.SearchStrategy[float | None]] = {
    "rps": st.sampled_from([0.0, 0.3, 0.9, 3.0, 9.0, 50.0, 450.0, 4500.0, 1e6]),
    "app_cpu_percent": st.none() | st.sampled_from([1.0, 20.0, 45.0, 85.0, 300.0]),
    "latency_p95_seconds": st.none() | st.sampled_from([0.01, 0.3, 0.9]),
    "database_connections": st.none() | st.sampled_from([1.0, 50.0, 90.0]),
    "database_queries_per_second": st.none() | st.sampled_from([1.0, 1500.0, 3000.0]),
    "cache_hit_ratio": st.none() | st.sampled_from([0.0, 0.5, 0.99]),
    "queue_depth": st.none() | st.sampled_from([0.0, 700.0, 2000.0]),
}
samples = st.fixed_dictionaries(SIGNAL_VALUES)


@settings(max_examples=300, deadline=None)
@given(
    stage=st.integers(1, 5),
    before=samples,
    after=samples,
    replicas=st.none() | st.integers(1, 12),
)
def test_the_check_says_now_exactly_when_an_evaluation_would_open_or_end_a_window(
    stage: int, before: Values, after: Values, replicas: int | None
) -> None:
    memory = decide.decide(stage, P, before, decide.Memory(stage=stage), 100.0, None, replicas)
    memory = memory.memory
    then = decide.decide(stage, P, after, memory, 105.0, None, replicas).memory
    changes = (then.breach_since is None) != (memory.breach_since is None) or (
        then.oversized_since is None
    ) != (memory.oversized_since is None)
    assert decide.opens_or_breaks(stage, P, after, memory, replicas) == changes
