"""The loop's per-tick check: which objects not yet due a tick's grouped reading sends on now.

No cluster, no Prometheus, no sleeps: the grouped reading is handed in done, and
starting an evaluation is recorded instead of run.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from z2m import api, decide, promote, signals

Obj = dict[str, Any]
URL = "http://prometheus:9090"


def loop() -> tuple[promote.Loop, list[str]]:
    """A loop whose evaluations are only recorded, in the order they would start."""
    the_loop = promote.Loop(kube=cast(Any, None), http=cast(Any, None))
    started: list[str] = []
    the_loop._start = lambda uid, obj, fleet: started.append(uid)  # type: ignore[method-assign]
    return the_loop, started


def stage(name: str, stage: int = 1, **promotion: Any) -> Obj:
    spec = {
        "stage": stage,
        "promotion": {"mode": "auto", "prometheus": {"url": URL}, **promotion},
    }
    meta = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "generation": 1,
        "resourceVersion": "1",
    }
    return {"metadata": meta, "spec": spec}


def evaluated(the_loop: promote.Loop, obj: Obj, values: dict[str, float | None]) -> None:
    """Record what an evaluation of `obj` reading `values` would leave behind."""
    spec = the_loop.spec_of(obj)
    assert spec is not None
    memory = decide.Memory(stage=spec.stage)
    verdict = decide.decide(spec.stage, spec.promotion, values, memory, now=100.0)
    the_loop._seen[obj["metadata"]["uid"]] = promote.Seen(verdict.memory, None, values)


def reading(**per_name: dict[str, float]) -> signals.Fleet:
    """A grouped reading with each named object's values in namespace ns."""
    by_signal: dict[str, dict[tuple[str, str], float]] = {}
    for name, values in per_name.items():
        for signal, value in values.items():
            by_signal.setdefault(signal, {})[("ns", name)] = value
    return signals.Fleet(by_signal)


async def done(fleet: signals.Fleet) -> asyncio.Task[signals.Fleet]:
    async def read() -> signals.Fleet:
        return fleet

    task = asyncio.ensure_future(read())
    await task
    return task


IDLE = {"rps": 0.0, "app_cpu_percent": 1.0}
OVERLOAD = {"rps": 1e6, "app_cpu_percent": 99.0}


async def test_only_the_object_whose_breach_starts_is_evaluated_before_its_interval() -> None:
    the_loop, started = loop()
    hot, cold = stage("hot"), stage("cold")
    evaluated(the_loop, hot, IDLE)
    evaluated(the_loop, cold, IDLE)
    fleet = await done(reading(hot=OVERLOAD, cold=IDLE))
    await the_loop.check(fleet, [hot, cold], listed_at=0.0)
    assert started == ["uid-hot"]


async def test_a_reading_with_a_failed_query_sends_nothing_on() -> None:
    the_loop, started = loop()
    hot = stage("hot")
    evaluated(the_loop, hot, IDLE)
    broken = reading(hot=OVERLOAD)
    broken = signals.Fleet(
        broken.values, {"queue_depth": signals.Problem("PrometheusUnreachable", "no answer")}
    )
    await the_loop.check(await done(broken), [hot], listed_at=0.0)
    assert started == []


async def test_an_object_never_evaluated_or_already_running_is_not_checked() -> None:
    the_loop, started = loop()
    new, busy = stage("new"), stage("busy")
    evaluated(the_loop, busy, IDLE)
    the_loop._running["uid-busy"] = cast(Any, object())
    fleet = await done(reading(new=OVERLOAD, busy=OVERLOAD))
    await the_loop.check(fleet, [new, busy], listed_at=0.0)
    assert started == []


async def test_an_object_evaluated_since_the_listing_is_not_checked_on_the_old_copy() -> None:
    the_loop, started = loop()
    hot = stage("hot")
    evaluated(the_loop, hot, IDLE)
    the_loop._finished["uid-hot"] = 10.0
    await the_loop.check(await done(reading(hot=OVERLOAD)), [hot], listed_at=5.0)
    assert started == []


def test_an_overridden_signal_keeps_its_last_value_rather_than_the_grouped_default() -> None:
    promotion = api.Promotion.model_validate(
        {"mode": "auto", "signals": {"rps": "sum(rate(my_requests_total[1m]))"}}
    )
    fleet = reading(shop={"rps": 1e6, "app_cpu_percent": 50.0})
    values = promote.tick_values(promotion, ("ns", "shop"), fleet, {"rps": 3.0})
    assert values["rps"] == 3.0
    assert values["app_cpu_percent"] == 50.0
    assert values["queue_depth"] is None


async def test_a_tick_hands_the_objects_not_due_to_the_check_with_their_grouped_reading() -> None:
    the_loop, started = loop()
    due, waiting, unseen = stage("due"), stage("waiting"), stage("unseen")
    evaluated(the_loop, waiting, IDLE)
    the_loop._due["uid-waiting"] = the_loop._due["uid-unseen"] = float("inf")
    fleet = await done(reading())
    checked: list[list[str]] = []

    async def check(f: Any, objs: list[Obj], listed_at: float) -> None:
        assert f is fleet
        checked.append([o["metadata"]["name"] for o in objs])

    the_loop._fleet_for = lambda obj, fleets: fleet  # type: ignore[method-assign]
    the_loop.check = check  # type: ignore[method-assign]
    the_loop.dispatch([due, waiting, unseen], listed_at=0.0)
    await asyncio.gather(*the_loop._checks)
    assert started == ["uid-due"]
    assert checked == [["waiting"]]
