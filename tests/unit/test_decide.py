"""The pure promotion logic: windows, cooldown, limits, missing data and bottleneck names."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from z2m import api, catalog, decide, promote

Values = dict[str, float | None]
Change = tuple[float, int, int]

FAST = api.Promotion(
    mode="auto",
    prometheus=api.Prometheus(url="http://prometheus:9090"),
    promote_window_seconds=30,
    demote_window_seconds=120,
    cooldown_seconds=20,
    max_stage=5,
)
OVERLOAD: Values = {"rps": 1e9, "app_cpu_percent": 99.0}
IDLE: Values = {"rps": 0.0, "app_cpu_percent": 1.0}
CALM: Values = {"rps": 0.2, "app_cpu_percent": 5.0}


def promotion(**changes: object) -> api.Promotion:
    return FAST.model_copy(update=changes)


def simulate(
    p: api.Promotion,
    stage: int,
    values: Callable[[float, int], Values],
    seconds: float,
    step: float = 1.0,
    memory: decide.Memory | None = None,
) -> list[Change]:
    """Evaluate every `step` seconds as the auto-mode loop would, applying each change."""
    memory = memory or decide.Memory()
    changes: list[Change] = []
    t = 0.0
    while t <= seconds:
        verdict = decide.decide(stage, p, values(t, stage), memory, t)
        memory = verdict.memory
        if verdict.action != "hold":
            assert abs(verdict.target_stage - stage) == 1
            changes.append((t, stage, verdict.target_stage))
            stage = verdict.target_stage
            memory = decide.changed(memory, stage, t)
        t += step
    return changes


def once(
    stage: int,
    values: Values,
    p: api.Promotion = FAST,
    failure: str | None = None,
    app_replicas: int | None = None,
    **memory: float,
) -> decide.Verdict:
    memory_ = decide.Memory(stage=stage, **memory)
    return decide.decide(
        stage, p, values, memory_, now=1000.0, failure=failure, app_replicas=app_replicas
    )


# --- windows and steps -----------------------------------------------------------------------


def test_sustained_load_climbs_exactly_one_stage_per_promote_window() -> None:
    changes = simulate(FAST, 1, lambda t, s: OVERLOAD, seconds=200)
    assert [(a, b) for _, a, b in changes] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    times = [0.0] + [t for t, _, _ in changes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == FAST.promote_window_seconds
    # Each later step waits a full window measured at the new stage (plus one evaluation).
    assert all(FAST.promote_window_seconds <= g <= FAST.promote_window_seconds + 1 for g in gaps)


def test_a_breach_shorter_than_the_window_changes_nothing() -> None:
    def spike(t: float, stage: int) -> Values:
        return OVERLOAD if t % 40 < 25 else CALM

    assert simulate(promotion(demote_window_seconds=10_000), 2, spike, seconds=400) == []


def test_falling_load_demotes_only_after_the_longer_window() -> None:
    changes = simulate(FAST, 3, lambda t, s: IDLE, seconds=FAST.demote_window_seconds * 3 + 5)
    assert changes[0] == (float(FAST.demote_window_seconds), 3, 2)
    assert [(a, b) for _, a, b in changes] == [(3, 2), (2, 1)]
    assert changes[1][0] - changes[0][0] >= FAST.demote_window_seconds


def test_cooldown_delays_a_change_whose_window_has_passed() -> None:
    p = promotion(promote_window_seconds=0, cooldown_seconds=50)
    verdict = once(2, OVERLOAD, p, last_change=1000.0 - 10, breach_since=900.0)
    assert (verdict.action, verdict.state) == ("hold", "CoolingDown")
    assert "40 s left" in verdict.reason
    assert once(2, OVERLOAD, p, last_change=1000.0 - 50).action == "promote"


def test_a_stage_change_by_someone_else_restarts_windows_and_cooldown() -> None:
    memory = decide.Memory(stage=2, breach_since=0.0)
    verdict = decide.decide(3, FAST, OVERLOAD, memory, now=1000.0)
    assert verdict.action == "hold"
    assert verdict.memory.stage == 3 and verdict.memory.last_change == 1000.0
    assert verdict.memory.breach_since == 1000.0


# --- limits ----------------------------------------------------------------------------------


def test_max_stage_holds_and_still_names_the_bottleneck() -> None:
    verdict = once(3, OVERLOAD, promotion(max_stage=3), breach_since=0.0)
    assert (verdict.action, verdict.state, verdict.bottleneck) == ("hold", "AtLimit", "traffic")
    assert "maxStage" in verdict.reason


def test_the_ceiling_is_the_highest_implemented_stage() -> None:
    top = catalog.MAX_IMPLEMENTED
    verdict = once(top, OVERLOAD, promotion(max_stage=7, allow_stage6=True), breach_since=0.0)
    assert verdict.action == "hold" and "highest implemented" in verdict.reason


# --- stage 6 needs an opt-in ------------------------------------------------------------------


def test_without_the_opt_in_an_overloaded_stage_5_is_never_promoted_and_says_why() -> None:
    p = promotion(max_stage=6)
    assert simulate(p, 5, lambda t, s: OVERLOAD, seconds=5000) == []
    verdict = once(5, OVERLOAD, p, breach_since=0.0)
    assert (verdict.action, verdict.state) == ("hold", "AtLimit")
    assert "allowStage6" in verdict.reason and "moves the rows into them online" in verdict.reason


def test_with_the_opt_in_an_overloaded_stage_5_is_promoted_to_6_after_its_window() -> None:
    p = promotion(max_stage=6, allow_stage6=True)
    changes = simulate(p, 5, lambda t, s: OVERLOAD, seconds=5000)
    assert changes and changes[0][1:] == (5, 6)


def test_the_opt_in_alone_does_not_lift_max_stage() -> None:
    p = promotion(max_stage=5, allow_stage6=True)
    assert simulate(p, 5, lambda t, s: OVERLOAD, seconds=5000) == []


def test_an_opt_in_stage_6_still_demotes_to_5_when_idle() -> None:
    p = promotion(max_stage=6, allow_stage6=True)
    changes = simulate(p, 6, lambda t, s: IDLE, seconds=5000)
    assert changes and changes[0][1:] == (6, 5)


def test_without_the_opt_in_a_running_stage_6_is_left_alone() -> None:
    verdict = once(6, IDLE, promotion(max_stage=6), oversized_since=0.0)
    assert (verdict.action, verdict.state) == ("hold", "OutOfRange")


def test_min_stage_holds_however_idle() -> None:
    assert simulate(promotion(min_stage=2), 2, lambda t, s: IDLE, seconds=1000) == []


def test_a_stage_outside_the_allowed_range_is_left_alone() -> None:
    verdict = once(4, OVERLOAD, promotion(max_stage=3), breach_since=0.0)
    assert (verdict.action, verdict.state) == ("hold", "OutOfRange")


# --- missing data ----------------------------------------------------------------------------


def test_no_rps_value_holds_and_resets_both_windows() -> None:
    verdict = once(3, {"rps": None, "app_cpu_percent": 1.0}, breach_since=0.0, oversized_since=0.0)
    assert (verdict.action, verdict.state) == ("hold", "NoData")
    assert verdict.memory.breach_since is None and verdict.memory.oversized_since is None


def test_a_prometheus_failure_holds_even_when_the_last_values_looked_idle() -> None:
    verdict = once(3, IDLE, failure="cannot reach http://prometheus:9090", oversized_since=0.0)
    assert verdict.action == "hold" and "cannot reach" in verdict.reason


def test_no_cpu_value_never_demotes() -> None:
    changes = simulate(FAST, 3, lambda t, s: {"rps": 0.0, "app_cpu_percent": None}, seconds=1000)
    assert changes == []


def test_a_gap_in_data_restarts_the_promote_window() -> None:
    def gappy(t: float, stage: int) -> Values:
        return {"rps": None} if t % 20 == 19 else OVERLOAD

    assert simulate(FAST, 1, gappy, seconds=300) == []


# --- what counts as oversized ----------------------------------------------------------------


def test_demotion_projects_cpu_onto_the_lower_stages_replicas() -> None:
    # Stage 3 runs two app replicas; on stage 2's one, 30% each becomes 60%, over 40%.
    verdict = once(3, {"rps": 1.0, "app_cpu_percent": 30.0}, oversized_since=0.0)
    assert verdict.action == "hold" and "would be 60%" in verdict.reason
    assert once(3, {"rps": 1.0, "app_cpu_percent": 15.0}, oversized_since=0.0).action == "demote"


def test_demotion_projects_cpu_from_the_replicas_the_hpa_runs_not_the_catalog() -> None:
    # Stage 5's HPA runs 12 app replicas at 20% each: on stage 4's four that is 60%, over 40%.
    calm = {"rps": 1.0, "app_cpu_percent": 20.0}
    verdict = once(5, calm, app_replicas=12, oversized_since=0.0)
    assert verdict.action == "hold"
    assert "app CPU 20% on 12 replica(s) would be 60% on 4" in verdict.reason
    # At the HPA's floor the same CPU fits stage 4.
    assert once(5, calm, app_replicas=4, oversized_since=0.0).action == "demote"


def test_demotion_projects_cpu_from_fewer_replicas_than_the_catalog_when_fewer_run() -> None:
    # Stage 3 normally runs two; with one running, 30% stays 30% on stage 2's one.
    values = {"rps": 1.0, "app_cpu_percent": 30.0}
    assert once(3, values, app_replicas=1, oversized_since=0.0).action == "demote"


def test_without_an_observed_count_the_catalog_count_is_the_projection() -> None:
    calm = {"rps": 1.0, "app_cpu_percent": 20.0}
    assert once(5, calm, app_replicas=None, oversized_since=0.0).action == "demote"
    assert once(5, calm, app_replicas=0, oversized_since=0.0).action == "demote"


def test_demotion_below_the_cache_counts_the_hits_the_database_would_take() -> None:
    values: Values = {
        "rps": 10.0,
        "app_cpu_percent": 5.0,
        "database_queries_per_second": 400.0,
        "cache_hit_ratio": 0.9,
    }
    verdict = once(4, values, oversized_since=0.0)
    assert verdict.action == "hold" and "database queries/s 4000" in verdict.reason
    assert once(4, {**values, "cache_hit_ratio": 0.1}, oversized_since=0.0).action == "demote"


def test_rps_between_the_demote_and_promote_limits_holds() -> None:
    # Stage 3 demotes below 0.5 x 10 = 5 RPS; stage 2 promotes above 0.8 x 10 = 8 RPS.
    assert once(3, {"rps": 6.0, "app_cpu_percent": 1.0}, oversized_since=0.0).state == "StageFits"
    assert once(2, {"rps": 6.0, "app_cpu_percent": 1.0}, breach_since=0.0).state == "StageFits"


# --- bottlenecks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"rps": 9.0, "app_cpu_percent": 10.0}, "traffic"),
        ({"rps": 9.0, "app_cpu_percent": 10.0, "static_ratio": 0.7}, "static-assets"),
        ({"rps": 1.0, "app_cpu_percent": 95.0}, "app-cpu"),
        ({"rps": 1.0, "database_queries_per_second": 5000.0, "write_ratio": 0.1}, "database-reads"),
        ({"rps": 1.0, "database_connections": 200.0, "write_ratio": 0.8}, "database-writes"),
        ({"rps": 1.0, "queue_depth": 5000.0}, "background-work"),
        ({"rps": 1.0, "latency_p95_seconds": 2.0, "app_cpu_percent": 70.0}, "app-cpu"),
        ({"rps": 1.0, "latency_p95_seconds": 2.0, "app_cpu_percent": 5.0}, "latency"),
    ],
)
def test_the_largest_breach_names_the_bottleneck_from_the_seed_table(
    values: Values, expected: str
) -> None:
    verdict = once(2, values, breach_since=0.0)
    assert verdict.action == "promote" and verdict.bottleneck == expected
    assert decide.BOTTLENECKS[expected] in verdict.reason


def test_a_promotion_says_what_the_next_stage_adds() -> None:
    verdict = once(2, OVERLOAD, breach_since=0.0)
    assert verdict.target_stage == 3
    assert all(add in verdict.reason for add in catalog.stage(3).adds)


# --- memory kept in status -------------------------------------------------------------------


def test_the_memory_survives_a_round_trip_through_status() -> None:
    memory = decide.Memory(stage=3, breach_since=1.5e9, oversized_since=None, last_change=1.4e9)
    stored = promote.stored_memory(memory, 3)
    decision = api.Decision(
        time="x", current_stage=3, recommended_stage=3, action="hold", reason="", memory=stored
    )
    again = api.Decision.model_validate(decision.model_dump(by_alias=True, mode="json"))
    assert promote.memory_of(again) == memory


def test_an_operator_restart_keeps_the_promote_window() -> None:
    first = decide.decide(2, FAST, OVERLOAD, decide.Memory(), now=0.0)
    stored = promote.stored_memory(first.memory, 2)
    restarted = promote.memory_of(
        api.Decision(
            time="x", current_stage=2, recommended_stage=2, action="hold", reason="", memory=stored
        )
    )
    assert decide.decide(2, FAST, OVERLOAD, restarted, now=30.0).action == "promote"


# --- properties ------------------------------------------------------------------------------

SIGNAL_VALUES: dict[str, st.SearchStrategy[float | None]] = {
    "rps": st.none() | st.sampled_from([0.0, 0.3, 0.9, 3.0, 9.0, 50.0, 450.0, 4500.0, 1e6]),
    "app_cpu_percent": st.none() | st.sampled_from([1.0, 20.0, 45.0, 85.0, 300.0]),
    "latency_p95_seconds": st.none() | st.sampled_from([0.01, 0.3, 0.9]),
    "database_queries_per_second": st.none() | st.sampled_from([1.0, 1500.0, 3000.0]),
    "queue_depth": st.none() | st.sampled_from([0.0, 700.0, 2000.0]),
}
samples = st.fixed_dictionaries(SIGNAL_VALUES)
promotions = st.builds(
    lambda window, extra, cooldown, lo, span: promotion(
        promote_window_seconds=window,
        demote_window_seconds=window + extra,
        cooldown_seconds=cooldown,
        min_stage=lo,
        max_stage=min(lo + span, 7),
    ),
    st.integers(0, 60),
    st.integers(0, 120),
    st.integers(0, 60),
    st.integers(1, 5),
    st.integers(0, 4),
)


def cycle(pattern: Sequence[Values], hold: int) -> Callable[[float, int], Values]:
    """Each sample for `hold` seconds in turn: a signal oscillating at any rate."""
    return lambda t, stage: pattern[int(t // hold) % len(pattern)]


@settings(max_examples=120, deadline=None)
@given(promotions, st.lists(samples, min_size=1, max_size=6), st.integers(1, 90))
def test_no_oscillation_changes_the_stage_more_often_than_windows_and_cooldown_allow(
    p: api.Promotion, pattern: list[Values], hold: int
) -> None:
    low, high = decide.bounds(p)
    seconds = 900.0
    changes = simulate(p, low, cycle(pattern, hold), seconds)
    times = [t for t, _, _ in changes]
    gap = max(p.cooldown_seconds, p.promote_window_seconds)
    assert all(b - a >= gap for a, b in itertools.pairwise(times))
    shortest = max(min(p.promote_window_seconds, p.cooldown_seconds), 1)
    assert len(changes) <= seconds / shortest + 1
    for t, before, after in changes:
        assert abs(after - before) == 1 and low <= after <= high, (t, before, after)
        if after < before:
            last = max((u for u in times if u < t), default=None)
            assert last is None or t - last >= p.demote_window_seconds


@settings(max_examples=120, deadline=None)
@given(promotions, st.lists(samples, min_size=1, max_size=6), st.integers(1, 30))
def test_the_stage_never_leaves_min_and_max_and_missing_rps_never_moves_it(
    p: api.Promotion, pattern: list[Values], hold: int
) -> None:
    low, high = decide.bounds(p)
    values = cycle(pattern, hold)
    memory, stage = decide.Memory(), high
    for t in range(0, 800, 3):
        sample = values(t, stage)
        verdict = decide.decide(stage, p, sample, memory, float(t))
        if sample["rps"] is None:
            assert verdict.action == "hold"
        if verdict.action != "hold":
            stage, memory = (
                verdict.target_stage,
                decide.changed(verdict.memory, verdict.target_stage, t),
            )
        else:
            memory = verdict.memory
        assert low <= stage <= high


@settings(max_examples=120, deadline=None)
@given(promotions, st.integers(1, 5), st.lists(st.booleans(), min_size=1, max_size=40))
def test_missing_data_never_demotes_however_it_is_interleaved(
    p: api.Promotion, start: int, gaps: list[bool]
) -> None:
    low, high = decide.bounds(p)
    stage = min(max(start, low), high)

    def idle_with_gaps(t: float, s: int) -> Values:
        return {"rps": None} if gaps[int(t) % len(gaps)] else IDLE

    changes = simulate(p, stage, idle_with_gaps, seconds=600)
    # Only an unbroken idle run longer than the demote window may demote.
    runs = "".join("x" if g else "." for g in gaps * 30).split("x")
    longest = max(len(run) for run in runs) if any(gaps) else 10**9
    if longest <= p.demote_window_seconds:
        assert changes == []
    assert all(after == before - 1 for _, before, after in changes)


# --- when a running window ends: the loop evaluates again then, not an interval later


def test_a_running_promote_window_ends_window_seconds_after_the_breach_began() -> None:
    p = promotion(promote_window_seconds=60, cooldown_seconds=0)
    assert decide.window_ends(p, decide.Memory(stage=1, breach_since=100.0), now=130.0) == 160.0


def test_a_running_demote_window_ends_its_own_window_after_calm_began() -> None:
    p = promotion(promote_window_seconds=60, demote_window_seconds=600, cooldown_seconds=0)
    assert decide.window_ends(p, decide.Memory(stage=2, oversized_since=100.0), now=130.0) == 700.0


def test_a_window_ends_no_earlier_than_the_cooldown() -> None:
    p = promotion(promote_window_seconds=60, cooldown_seconds=600)
    memory = decide.Memory(stage=2, breach_since=100.0, last_change=50.0)
    assert decide.window_ends(p, memory, now=130.0) == 650.0


def test_no_window_or_one_already_over_asks_for_no_early_evaluation() -> None:
    p = promotion(promote_window_seconds=60, cooldown_seconds=0)
    assert decide.window_ends(p, decide.Memory(stage=1), now=130.0) is None
    assert decide.window_ends(p, decide.Memory(stage=3, breach_since=0.0), now=130.0) is None
