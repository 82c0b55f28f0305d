"""Kopf's relistings, completed with the deletions they leave out.

A Kopf watch stream (`kopf/_cogs/clients/watching.py`, Kopf 1.45) starts with a
LIST, yields every listed object as an event of type None, then a
`Bookmark.LISTED`, then watches from the list's resourceVersion. A watch that
ends (server timeout, a dropped connection) is resumed from the last
resourceVersion seen, and the apiserver replays what happened since: nothing is
lost. But when that version is too old (HTTP 410 Gone, "too old resource
version": after an apiserver restart, a compaction, a long network gap), Kopf
starts the stream over with a new LIST, and only yields what that LIST holds.
An object deleted during the gap (or one that left the watch's label selector)
gets no DELETED event, so Kopf's indices keep it forever: `cache.Children`
would show a child that is gone, and a pass would not make it again.

client-go's reflector replaces its store with the new listing, which deletes
what the listing lacks. This module does the same for Kopf: it wraps each
stream of the resources it is told about, remembers the uids the stream has
shown (with a small tombstone: name, namespace, uid, labels), and when a
listing ends, yields a DELETED event for every remembered uid the listing did
not hold, just before the `Bookmark.LISTED`. Kopf then treats it as any
deletion: the indices drop the object and `on.event` handlers run (z2m's
wake a pass of the owner). An object created or changed during the gap needs
nothing more: the new listing holds it.

Kopf handles the in-stream 410 (an ERROR event, which is how the apiserver
answers a resumed watch). A watch request refused with HTTP status 410 itself
would instead raise out of Kopf's loop and end that watcher for good; the wrap
ends the stream quietly then, so `infinite_watch` relists as for the in-stream
kind.

No request is added: this reads the stream Kopf already receives, so a settled
resync still lists nothing. The wrap replaces `watching.continuous_watch`, a
private Kopf function that `infinite_watch` calls once per listing; `install`
refuses to run on a Kopf where that is not so.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kopf._cogs.clients.errors import APIClientError

from z2m import metrics

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Resource = tuple[str, str, str]
"""(group, version, plural); the group of the core API is ""."""


def tombstone(obj: Mapping[str, Any]) -> Obj:
    """What a DELETED event made up for an object needs: who it was, and its labels."""
    meta = obj.get("metadata") or {}
    names = ("name", "namespace", "uid", "labels", "resourceVersion")
    kept = {k: meta[k] for k in names if k in meta}
    return {
        **{k: obj[k] for k in ("apiVersion", "kind") if k in obj},
        "metadata": kept,
    }


@dataclass
class Seen:
    """The objects one watch stream (a resource in a namespace, or cluster-wide) has shown.

    Fed every event of the stream in order; `listing` marks the start of a
    LIST and `listed` its end. Kept across listings: that is the point.
    """

    known: dict[str, Obj] = field(default_factory=dict)
    """uid -> tombstone of every object shown and not deleted since."""
    listing_uids: set[str] | None = None
    """The uids of the listing under way, None while watching."""

    def listing(self) -> None:
        """A new LIST starts (one cut short before it ended counts for nothing)."""
        self.listing_uids = set()

    def event(self, raw: Mapping[str, Any]) -> None:
        """One raw event of the stream: type None (listed), ADDED, MODIFIED, DELETED, BOOKMARK."""
        kind = raw.get("type")
        obj = raw.get("object") or {}
        uid = (obj.get("metadata") or {}).get("uid")
        if kind == "BOOKMARK" or not uid:
            return
        if kind is None and self.listing_uids is not None:
            self.listing_uids.add(uid)
        if kind == "DELETED":
            self.known.pop(uid, None)
        else:
            self.known[uid] = tombstone(obj)

    def listed(self) -> list[Obj]:
        """The listing is over: DELETED events for what it no longer holds, now forgotten."""
        holds = self.listing_uids or set()
        self.listing_uids = None
        gone = [uid for uid in self.known if uid not in holds]
        return [{"type": "DELETED", "object": self.known.pop(uid)} for uid in gone]


Stream = Callable[..., AsyncIterator[Any]]


@dataclass
class Relister:
    """Wraps Kopf's `continuous_watch` for the given resources; leaves the others as they are."""

    original: Stream
    listed_mark: object
    """Kopf's `watching.Bookmark.LISTED`."""
    resources: frozenset[Resource]
    streams: dict[tuple[Resource, str | None], Seen] = field(default_factory=dict)

    def continuous_watch(self, **kwargs: Any) -> AsyncIterator[Any]:
        """Kopf's stream, plus a DELETED event for each object a relisting lacks."""
        resource = kwargs["resource"]
        key: Resource = (resource.group, resource.version, resource.plural)
        if key not in self.resources:
            return self.original(**kwargs)
        return self._completed(key, kwargs)

    async def _completed(self, key: Resource, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        namespace: str | None = kwargs.get("namespace")
        seen = self.streams.setdefault((key, namespace), Seen())
        seen.listing()  # every call of continuous_watch starts with a LIST
        stream = self.original(**kwargs)
        try:
            async for item in stream:
                if item is self.listed_mark:
                    gone = seen.listed()
                    if gone:
                        _say(key[2], namespace, gone)
                    for event in gone:
                        yield event
                elif isinstance(item, Mapping):
                    seen.event(item)
                yield item
        except APIClientError as e:
            if e.status != 410:
                raise
            # Gone as an HTTP status, not in-stream: Kopf would let it end the watcher.
            # Ending the stream instead makes infinite_watch start over with a LIST.
            log.info("watch of %s answered 410 Gone (%s); relisting", key[2], e)
            metrics.RELIST_GONE.labels(key[2]).inc()
        finally:
            # Closed with us (a pause, a cancelled watcher): its HTTP stream is released now.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()


def _say(plural: str, namespace: str | None, gone: list[Obj]) -> None:
    names = sorted(e["object"]["metadata"].get("name", "?") for e in gone)
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    log.info(
        "relisted %s %s: %d gone while the watch was away (%s%s)",
        plural,
        f"in {namespace}" if namespace else "cluster-wide",
        len(gone),
        ", ".join(names[:10]),
        more,
    )
    metrics.RELIST_DELETIONS.labels(plural).inc(len(gone))


INSTALLED: Relister | None = None


def install(resources: Collection[Resource]) -> Relister:
    """Wrap Kopf's watch streams of `resources` (once per process; later calls add resources)."""
    global INSTALLED
    from kopf._cogs.clients import watching

    if INSTALLED is not None:
        INSTALLED.resources = INSTALLED.resources | frozenset(resources)
        return INSTALLED
    original = watching.continuous_watch
    params = set(inspect.signature(original).parameters)
    expected = {"settings", "resource", "namespace", "operator_pause_waiter"}
    calls = "continuous_watch(" in inspect.getsource(watching.infinite_watch)
    if params != expected or not calls or not hasattr(watching.Bookmark, "LISTED"):
        raise RuntimeError(
            "this Kopf's watch streams are not as z2m.relist expects "
            f"(continuous_watch{sorted(params)}, called by infinite_watch: {calls})"
        )
    INSTALLED = Relister(original, watching.Bookmark.LISTED, frozenset(resources))
    setattr(watching, "continuous_watch", INSTALLED.continuous_watch)  # noqa: B010
    return INSTALLED
