"""The watch-fed children cache: what it keeps, and reads handed over to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from z2m import cache

DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE = ("v1", "Service")


def child(name: str, kind: str = "Deployment") -> dict[str, object]:
    return {"kind": kind, "metadata": {"name": name, "managedFields": [{"manager": "z2m"}]}}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join()
    running.close()


def test_an_entry_keeps_the_object_without_its_managed_fields() -> None:
    body = {"metadata": {"name": "shop-app", "managedFields": [{}]}, "spec": {"replicas": 2}}
    kept = cache.entry(body, "apps/v1", "Deployment")
    assert kept == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop-app"},
        "spec": {"replicas": 2},
    }
    assert "managedFields" in body["metadata"]  # the watched body is left as it was


def test_a_read_from_a_worker_thread_gathers_every_kind_of_one_owner(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app, db = child("shop-app"), child("shop-db", "Service")
    children = cache.Children(
        loop,
        {
            DEPLOYMENT: {("ns", "shop"): [app], ("ns", "blog"): [child("blog-app")]},
            SERVICE: {("ns", "shop"): [db]},
        },
    )
    assert children.read("ns", "shop") == [app, db]
    assert children.read("other", "shop") == []
    assert children.kinds == {DEPLOYMENT, SERVICE}


def test_a_read_on_the_loop_itself_does_not_wait_for_the_loop() -> None:
    async def on_loop() -> list[dict[str, object]]:
        here = cache.Children(asyncio.get_running_loop(), {DEPLOYMENT: {("ns", "a"): [child("a")]}})
        return here.read("ns", "a")

    assert asyncio.run(on_loop()) == [child("a")]


def test_every_kind_the_operator_prunes_is_watched() -> None:
    """A prunable kind without a watch would be listed on every pass.

    The Prometheus Operator's and the Gateway API's kinds are the exception: a
    cluster may not serve them, so they are listed only where discovery finds them.
    """
    from z2m import builders, handlers

    watched = {(group_version, kind) for group_version, _, kind in handlers.CHILD_RESOURCES}
    optional = set(builders.PROMETHEUS_OPERATOR_KINDS) | set(builders.GATEWAY_API_KINDS)
    assert watched == builders.PRUNABLE - optional
