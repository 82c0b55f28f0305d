"""The children as the operator's watches last saw them: a read-only view of Kopf indices.

`handlers` registers one `@kopf.index` per child kind on the same label-selected
watches that wake passes, keyed by (namespace, ScalingStage name). Kopf fills
every index from its initial listing before any handler runs, and keeps it from
the watch events after that, so a pass reads its children from memory and a
resync of a settled object sends no LIST at all.

Kopf changes its indices on its event loop while passes run in worker threads,
so `Children.read` takes its snapshot on the loop and hands it back: a pass sees
the indices between two events, never half-way through one. An entry is never
changed in place (each event stores a new dict), so a snapshot needs no copy.

After a watch gap (410 Gone) Kopf relists but makes no DELETED event for what
the new listing lacks; `relist` makes them, so an index never keeps a child
that was deleted while the watch was away.

What a pass has just written may not be here yet. That is the informer's usual
trade: the watch event of that write wakes another pass, which sees it.
Not here: any write, and kinds that are not watched (`kube.Kube.children` lists those).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]
"""(namespace, name of the owning ScalingStage)."""
Kind = tuple[str, str]
"""(apiVersion, kind)."""


def entry(body: Mapping[str, Any], api_version: str, kind: str) -> Obj:
    """What an index keeps of a child: the object as watched, without its managedFields.

    managedFields are most of an object's bytes and no pass reads them from a
    listing (the replicas hand-over reads a fresh GET), so they are left out.
    """
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "apiVersion": api_version, "kind": kind, "metadata": meta}


@dataclass(frozen=True)
class Children:
    """The watched children of every ScalingStage, per kind, read from any thread."""

    loop: asyncio.AbstractEventLoop
    indices: Mapping[Kind, Mapping[Key, Iterable[Obj]]]
    timeout: float = 30.0

    @property
    def kinds(self) -> frozenset[Kind]:
        """The kinds served from memory."""
        return frozenset(self.indices)

    def read(self, namespace: str, owner: str) -> list[Obj]:
        """Every watched child of one ScalingStage, as last seen."""
        key = (namespace, owner)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return self._snapshot(key)
        future: concurrent.futures.Future[list[Obj]] = concurrent.futures.Future()

        def snapshot() -> None:
            try:
                future.set_result(self._snapshot(key))
            except BaseException as exc:  # handed to the reading thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(snapshot)
        return future.result(self.timeout)

    def _snapshot(self, key: Key) -> list[Obj]:
        found: list[Obj] = []
        for index in self.indices.values():
            if key in index:
                found.extend(index[key])
        return found
