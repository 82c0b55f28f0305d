"""Relistings completed with deletions: the bookkeeping, the wrap, and its hook in Kopf."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import pytest
from kopf._cogs.clients import errors, watching
from kopf._cogs.configs import configuration
from kopf._cogs.structs import bodies, references
from kopf._core.engines import indexing

from z2m import relist

CONFIGMAPS = references.Resource("", "v1", "configmaps", namespaced=True)
PODS = references.Resource("", "v1", "pods", namespaced=True)
LISTED = object()


def obj(name: str, uid: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}"}
    meta.update(labels=labels, resourceVersion="7", managedFields=[{"manager": "z2m"}])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def listed(*objs: dict[str, Any]) -> list[Any]:
    return [{"type": None, "object": o} for o in objs]


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["object"]["metadata"]["name"] for e in events]


# --- Seen: the pure bookkeeping -----------------------------------------------------------


def test_the_first_listing_deletes_nothing() -> None:
    seen = relist.Seen()
    seen.listing()
    for event in listed(obj("a"), obj("b")):
        seen.event(event)
    assert seen.listed() == []
    assert set(seen.known) == {"uid-a", "uid-b"}


def test_a_relisting_deletes_what_it_lacks_and_forgets_it() -> None:
    seen = relist.Seen()
    seen.listing()
    for event in listed(obj("a"), obj("b", **{"app.kubernetes.io/part-of": "shop"})):
        seen.event(event)
    seen.listed()
    seen.listing()  # after a 410: a new listing, b is gone
    seen.event(listed(obj("a"))[0])
    gone = seen.listed()
    assert gone == [
        {
            "type": "DELETED",
            "object": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "b",
                    "namespace": "ns",
                    "uid": "uid-b",
                    "labels": {"app.kubernetes.io/part-of": "shop"},
                    "resourceVersion": "7",
                },
            },
        }
    ]
    assert set(seen.known) == {"uid-a"}
    seen.listing()
    seen.event(listed(obj("a"))[0])
    assert seen.listed() == []  # said once


def test_an_empty_relisting_deletes_everything_known() -> None:
    seen = relist.Seen()
    seen.listing()
    seen.event(listed(obj("a"))[0])
    seen.listed()
    seen.event({"type": "ADDED", "object": obj("b")})
    seen.listing()
    assert sorted(names(seen.listed())) == ["a", "b"]
    assert seen.known == {}


def test_watched_events_are_followed_between_listings() -> None:
    seen = relist.Seen()
    seen.listing()
    seen.listed()
    seen.event({"type": "ADDED", "object": obj("a")})
    seen.event({"type": "ADDED", "object": obj("b")})
    seen.event({"type": "MODIFIED", "object": obj("b", role="x")})
    seen.event({"type": "DELETED", "object": obj("a")})
    seen.event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert list(seen.known) == ["uid-b"]
    assert seen.known["uid-b"]["metadata"]["labels"] == {"role": "x"}
    seen.listing()
    assert names(seen.listed()) == ["b"]


def test_a_recreated_object_is_another_uid() -> None:
    """Deleted and made again under the same name during the gap: the old uid goes."""
    seen = relist.Seen()
    seen.listing()
    seen.event(listed(obj("a", uid="old"))[0])
    seen.listed()
    seen.listing()
    seen.event(listed(obj("a", uid="new"))[0])
    assert [e["object"]["metadata"]["uid"] for e in seen.listed()] == ["old"]
    assert list(seen.known) == ["new"]


def test_a_listing_cut_short_counts_for_nothing() -> None:
    """Kopf starts over when a LIST fails half-way; what that half held proves nothing."""
    seen = relist.Seen()
    seen.listing()
    for event in listed(obj("a"), obj("b")):
        seen.event(event)
    seen.listed()
    seen.listing()
    seen.event(listed(obj("b"))[0])  # then the connection drops: no LISTED
    seen.listing()
    seen.event(listed(obj("a"))[0])
    assert names(seen.listed()) == ["b"]


def test_a_tombstone_takes_the_object_out_of_kopf_indices() -> None:
    """Kopf keys its indices by (namespace, name, uid): the tombstone carries all three."""
    indexers = indexing.OperatorIndexers()
    indexers["children"] = indexing.OperatorIndexer()
    full = obj("b", **{"app.kubernetes.io/part-of": "shop"})
    indexers.replace(bodies.Body(full), {"children": _outcome({("ns", "shop"): "b"})})
    assert ("ns", "shop") in indexers.indices["children"]
    indexers.discard(bodies.Body(relist.tombstone(full)))
    assert ("ns", "shop") not in indexers.indices["children"]


def _outcome(result: object) -> Any:
    from kopf._core.actions import execution

    return execution.Outcome(final=True, result=result)


# --- Relister: the wrap of one stream ------------------------------------------------------


class FakeStreams:
    """Stands in for Kopf's continuous_watch: each call yields the next scripted stream."""

    def __init__(self, *streams: list[Any]) -> None:
        self.streams = list(streams)

    async def __call__(self, **_: Any) -> AsyncIterator[Any]:
        for item in self.streams.pop(0):
            yield item


def run(relister: relist.Relister, resource: references.Resource, namespace: str) -> list[Any]:
    async def collect() -> list[Any]:
        out = relister.continuous_watch(resource=resource, namespace=namespace)
        return [item async for item in out]

    return asyncio.run(collect())


def test_the_wrap_yields_the_deletions_just_before_the_listing_ends() -> None:
    a, b, c = obj("a"), obj("b"), obj("c")
    fake = FakeStreams(
        [*listed(a, b), LISTED, {"type": "ADDED", "object": c}],
        [*listed(a), LISTED],
    )
    relister = relist.Relister(fake, LISTED, frozenset({("", "v1", "configmaps")}))
    first = run(relister, CONFIGMAPS, "ns")
    assert first == [*listed(a, b), LISTED, {"type": "ADDED", "object": c}]
    second = run(relister, CONFIGMAPS, "ns")
    assert second[:1] == listed(a)
    assert [e["type"] for e in second[1:3]] == ["DELETED", "DELETED"]
    assert sorted(names(second[1:3])) == ["b", "c"]
    assert second[3:] == [LISTED]


def test_the_wrap_keeps_namespaces_apart_and_leaves_other_resources_alone() -> None:
    a = obj("a")
    fake = FakeStreams(
        [*listed(a), LISTED], [LISTED], [*listed(a), LISTED], [LISTED], [LISTED], [LISTED]
    )
    relister = relist.Relister(fake, LISTED, frozenset({("", "v1", "configmaps")}))
    run(relister, CONFIGMAPS, "one")
    assert run(relister, CONFIGMAPS, "two") == [LISTED]  # nothing of "one" is deleted
    run(relister, PODS, "one")
    assert run(relister, PODS, "one") == [LISTED]  # not a wrapped resource: as Kopf said
    assert names(run(relister, CONFIGMAPS, "one")[:-1]) == ["a"]
    assert run(relister, CONFIGMAPS, "one") == [LISTED]


def test_closing_the_wrap_closes_kopfs_stream_at_once() -> None:
    """A pause or a cancelled watcher closes the stream: its HTTP response must go with it."""
    closed = []

    async def kopfs(**_: Any) -> AsyncIterator[Any]:
        try:
            yield listed(obj("a"))[0]
            yield LISTED
        finally:
            closed.append(True)

    relister = relist.Relister(kopfs, LISTED, frozenset({("", "v1", "configmaps")}))

    async def first_only() -> None:
        stream = relister.continuous_watch(resource=CONFIGMAPS, namespace="ns")
        assert isinstance(stream, AsyncGenerator)
        await anext(stream)
        await stream.aclose()

    asyncio.run(first_only())
    assert closed == [True]


# --- the hook in the installed Kopf ------------------------------------------------------


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[relist.Relister]:
    # z2m.handlers may have installed the wrap in this process already: start from Kopf's own.
    kopfs = relist.INSTALLED.original if relist.INSTALLED else watching.continuous_watch
    monkeypatch.setattr(watching, "continuous_watch", kopfs)
    monkeypatch.setattr(relist, "INSTALLED", None)
    yield relist.install([("", "v1", "configmaps")])


def test_kopfs_infinite_watch_goes_through_the_wrap_once_per_listing(
    installed: relist.Relister,
) -> None:
    """Kopf's own infinite_watch, two listings (as after a 410): the second says b is gone."""
    a, b = obj("a"), obj("b")
    settings = configuration.OperatorSettings()
    settings.watching.reconnect_backoff = 0

    async def collect() -> list[Any]:
        stream = watching.infinite_watch(
            settings=settings, resource=CONFIGMAPS, namespace="ns", _iterations=2
        )
        return [item async for item in stream]

    installed.original = FakeStreams(
        [*listed(a, b), watching.Bookmark.LISTED], [*listed(a), watching.Bookmark.LISTED]
    )
    out = asyncio.run(collect())
    deleted = [e for e in out if isinstance(e, dict) and e["type"] == "DELETED"]
    assert names(deleted) == ["b"]
    assert out[-2:] == [deleted[0], watching.Bookmark.LISTED]


def test_installing_twice_adds_resources_to_one_wrap(installed: relist.Relister) -> None:
    again = relist.install([("apps", "v1", "deployments")])
    assert again is installed
    assert installed.resources == {("", "v1", "configmaps"), ("apps", "v1", "deployments")}
    assert watching.continuous_watch == installed.continuous_watch


def test_the_operator_wraps_the_streams_of_every_child_kind_and_of_scaling_stages() -> None:
    from z2m import handlers

    assert relist.INSTALLED is not None
    wanted = {("z2m.dev", "v1alpha1", "scalingstages"), ("", "v1", "configmaps")}
    wanted |= {("apps", "v1", "deployments"), ("rbac.authorization.k8s.io", "v1", "roles")}
    assert wanted <= relist.INSTALLED.resources
    assert len(relist.INSTALLED.resources) == len(handlers.CHILD_RESOURCES) + 1


def test_an_http_410_on_the_watch_request_relists_instead_of_ending_the_watcher(
    installed: relist.Relister,
) -> None:
    """A watch refused with HTTP status 410 (not the in-stream ERROR): the next listing runs."""
    a, b = obj("a"), obj("b")
    settings = configuration.OperatorSettings()
    settings.watching.reconnect_backoff = 0
    gone = errors.APIClientError({"code": 410, "message": "too old"}, status=410, headers={})

    class Streams(FakeStreams):
        async def __call__(self, **_: Any) -> AsyncIterator[Any]:
            for item in self.streams.pop(0):
                if isinstance(item, Exception):
                    raise item
                yield item

    installed.original = Streams(
        [*listed(a, b), watching.Bookmark.LISTED, gone],
        [*listed(a), watching.Bookmark.LISTED],
    )

    async def collect() -> list[Any]:
        stream = watching.infinite_watch(
            settings=settings, resource=CONFIGMAPS, namespace="ns", _iterations=2
        )
        return [item async for item in stream]

    out = asyncio.run(collect())  # Kopf's own loop: without the wrap, the 410 would raise here
    deleted = [e for e in out if isinstance(e, dict) and e["type"] == "DELETED"]
    assert names(deleted) == ["b"]


def test_other_client_errors_still_end_the_watch(installed: relist.Relister) -> None:
    forbidden = errors.APIClientError({"code": 403, "message": "no"}, status=403, headers={})

    async def kopfs(**_: Any) -> AsyncIterator[Any]:
        yield watching.Bookmark.LISTED
        raise forbidden

    installed.original = kopfs

    async def collect() -> list[Any]:
        stream = installed.continuous_watch(resource=CONFIGMAPS, namespace="ns")
        return [item async for item in stream]

    with pytest.raises(errors.APIClientError):
        asyncio.run(collect())
