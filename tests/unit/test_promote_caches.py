"""What the promotion loop remembers between evaluations, and when it reads again.

A fleet evaluates every object every interval; validating each spec and reading
each stored decision again every time was most of an evaluation's CPU. These
check that the caches give the same answers as reading afresh, and forget on change.
"""

import asyncio
import time
from typing import Any, cast

from z2m import kube, promote

Obj = dict[str, Any]


def loop() -> promote.Loop:
    return promote.Loop(kube=cast(Any, None), http=cast(Any, None))


def stage(stage: int, generation: int | None, **promotion: Any) -> Obj:
    meta: Obj = {"name": "shop", "namespace": "ns", "uid": "uid-1"}
    if generation is not None:
        meta["generation"] = generation
    spec = {"stage": stage, "promotion": {"mode": "recommend", **promotion}}
    return {"metadata": meta, "spec": spec}


def test_a_spec_is_validated_once_per_generation() -> None:
    the_loop = loop()
    first = the_loop.spec_of(stage(2, 1))
    assert first is not None and first.stage == 2
    assert the_loop.spec_of(stage(2, 1)) is first


def test_a_changed_spec_is_validated_again() -> None:
    the_loop = loop()
    assert the_loop.spec_of(stage(2, 1)) is not None
    changed = the_loop.spec_of(stage(3, 2, mode="auto"))
    assert changed is not None
    assert (changed.stage, changed.promotion.mode) == (3, "auto")


def test_an_invalid_spec_reads_as_none_until_it_changes() -> None:
    the_loop = loop()
    assert the_loop.spec_of(stage(99, 1)) is None
    assert the_loop.spec_of(stage(99, 1)) is None
    fixed = the_loop.spec_of(stage(2, 2))
    assert fixed is not None and fixed.stage == 2


def test_an_object_without_a_generation_is_validated_every_time() -> None:
    the_loop = loop()
    assert the_loop.spec_of(stage(2, None)) is not the_loop.spec_of(stage(2, None))
    assert the_loop.spec_of(stage(99, None)) is None


def decision(breach_since: str | None) -> Obj:
    memory: Obj = {"stage": 1}
    if breach_since is not None:
        memory["breachSince"] = breach_since
    return {
        "time": "2026-01-01T00:00:00.000Z",
        "currentStage": 1,
        "recommendedStage": 1,
        "action": "hold",
        "reason": "r",
        "memory": memory,
    }


def test_the_windows_memory_is_read_again_when_the_stored_decision_changes() -> None:
    the_loop = loop()
    assert the_loop._memory("uid-1", decision(None)).breach_since is None
    since = the_loop._memory("uid-1", decision("2026-01-01T00:00:00.000Z")).breach_since
    assert since == promote.parse_time("2026-01-01T00:00:00.000Z")
    assert the_loop._memory("uid-1", None) == promote.memory_of(None)


def test_a_plain_answer_is_the_dict_the_dynamic_client_would_give() -> None:
    listing: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMapList",
        "items": [{"metadata": {"name": "a"}}, {"apiVersion": "v1", "kind": "ConfigMap"}],
    }
    assert kube.plain(None, listing)["items"] == [
        {"metadata": {"name": "a"}, "apiVersion": "v1", "kind": "ConfigMap"},
        {"apiVersion": "v1", "kind": "ConfigMap"},
    ]
    assert kube.plain(None, {"kind": "PodList", "apiVersion": "v1", "items": None})["items"] == []
    one: Obj = {"kind": "ConfigMap", "apiVersion": "v1", "data": {"k": "v"}}
    assert kube.plain(None, dict(one)) == one


async def test_a_window_ending_before_the_next_tick_wakes_the_sleeping_loop() -> None:
    the_loop, stop = loop(), asyncio.Event()
    sleeping = asyncio.ensure_future(the_loop._sleep(stop, time.monotonic() + 3600))
    await asyncio.sleep(0)
    assert not sleeping.done()
    the_loop._wake["uid-1"] = time.monotonic()
    the_loop._woken.set()
    await asyncio.wait_for(sleeping, timeout=30)  # a guard: it returns at once


async def test_a_wake_up_that_was_not_taken_is_dropped_rather_than_spun_on() -> None:
    the_loop = loop()
    the_loop._wake["uid-1"] = time.monotonic() - 1
    await the_loop._sleep(asyncio.Event(), time.monotonic())
    assert the_loop._wake == {}


async def test_an_approval_pokes_the_sleeping_loop_awake_from_any_thread() -> None:
    the_loop, stop = loop(), asyncio.Event()
    the_loop._event_loop = asyncio.get_running_loop()
    sleeping = asyncio.ensure_future(the_loop._sleep(stop, time.monotonic() + 3600))
    await asyncio.sleep(0)
    await asyncio.to_thread(the_loop.poke)
    await asyncio.wait_for(sleeping, timeout=30)  # a guard: it returns at once
    assert not the_loop._poked
