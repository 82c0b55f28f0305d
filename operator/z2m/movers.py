"""Shard moves running in the operator process: one asyncio task per ScalingStage.

The reconciler runs in a worker thread and must not wait for a move that takes
seconds to hours, so it only calls `Movers.ensure` (thread-safe): that starts a
`shard_move.Runner` on the operator's event loop unless one already runs, and
returns what the last run reported. The reconciler puts that into status.

The move's `Routing` is `StatusRouting`: the app's layout recorded in the
ScalingStage's status (`databaseLayout`, its own field manager). `switch` writes it
and asks for a pass, which rebuilds the app's Deployments with (or without)
`DATABASE_SHARDS`. So the app switches only after the runner's write fence.

A run that fails (a database unreachable, a target blocked) is reported, not
raised: `progress` says `failed` with why, and the next `ensure` starts a fresh
runner, which picks the move up where the databases say it is.

Not here: what to move or when (`z2m.shard_phase`), the steps (`z2m.sharding`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from z2m import api, kube, shard_move, shard_phase, sharding

log = logging.getLogger(__name__)

Key = tuple[str, str]
ROUTING_MANAGER = "z2m-shard-routing"
"""Field manager of `status.databaseLayout`, the move's cutover record."""


@dataclass
class StatusRouting:
    """The app's layout, as recorded in the ScalingStage's status."""

    kube: kube.Kube
    namespace: str
    name: str
    layout: shard_phase.Layout
    """The layout this move switches the app to."""
    switched_to: Callable[[], None] = lambda: None
    """Called after the switch is recorded (asks the reconciler for a pass)."""

    async def switched(self) -> bool:
        """True once status records the move's layout."""
        body = await asyncio.to_thread(self.kube.scaling_stage, self.namespace, self.name)
        if body is None:
            raise LookupError(f"ScalingStage {self.namespace}/{self.name} is gone")
        return shard_phase.recorded(body.get("status")) == self.layout

    async def switch(self) -> None:
        """Record the layout (idempotent), say so in an Event, and ask for a pass."""
        await asyncio.to_thread(
            self.kube.apply_status,
            self.namespace,
            self.name,
            {"databaseLayout": self.layout},
            ROUTING_MANAGER,
        )
        body = await asyncio.to_thread(self.kube.scaling_stage, self.namespace, self.name)
        if body is not None:
            where = "the shards (DATABASE_SHARDS)" if self.layout == "shards" else "one database"
            await asyncio.to_thread(
                self.kube.event,
                body,
                "Normal",
                "ShardCutover",
                f"the sources are fenced and the targets caught up: the app is rewired to {where}",
            )
        self.switched_to()


@dataclass
class _Run:
    direction: shard_phase.Direction
    task: concurrent.futures.Future[None] | None
    progress: api.DatabaseMoveStatus
    ended_at: float | None = None


@dataclass
class Movers:
    """The moves of every ScalingStage this operator serves."""

    loop: asyncio.AbstractEventLoop
    kube: kube.Kube
    on_change: Callable[[str, str], None] = lambda namespace, name: None
    """Asks for a reconcile pass (thread-safe is not required: called on the loop)."""
    retry_seconds: float = 5.0
    """How long a failed run stays failed before `ensure` starts another."""
    poll: float = 0.1
    _runs: dict[Key, _Run] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def progress(self, key: Key) -> api.DatabaseMoveStatus | None:
        """What the last (or current) run of `key` reported; None if none ran here."""
        with self._lock:
            run = self._runs.get(key)
            return run.progress if run else None

    def ensure(
        self,
        key: Key,
        direction: shard_phase.Direction,
        count: int,
        sources: Sequence[str],
        targets: Sequence[str],
    ) -> api.DatabaseMoveStatus:
        """Start the move unless it runs (or failed less than `retry_seconds` ago)."""
        with self._lock:
            run = self._runs.get(key)
            if run is not None and run.direction == direction:
                running = run.task is not None and not run.task.done()
                resting = (
                    run.progress.phase == "failed"
                    and run.ended_at is not None
                    and time.monotonic() - run.ended_at < self.retry_seconds
                )
                if running or resting or run.progress.phase == "done":
                    return run.progress
            progress = api.DatabaseMoveStatus(
                direction=direction, phase="starting", message="connecting to the databases"
            )
            run = _Run(direction, None, progress)
            self._runs[key] = run
        move = shard_phase.move(direction, count)
        layout: shard_phase.Layout = "shards" if direction == "split" else "single"
        routing = StatusRouting(self.kube, key[0], key[1], layout, lambda: self.on_change(*key))
        run.task = asyncio.run_coroutine_threadsafe(
            self._run(key, run, move, list(sources), list(targets), routing), self.loop
        )
        return progress

    def forget(self, key: Key) -> None:
        """Drop a finished run's record (the move is over and status says so)."""
        with self._lock:
            run = self._runs.get(key)
            if run is not None and (run.task is None or run.task.done()):
                del self._runs[key]

    def _set(self, key: Key, run: _Run, **changes: object) -> None:
        with self._lock:
            run.progress = run.progress.model_copy(update=changes)
        self.on_change(*key)

    async def _run(
        self,
        key: Key,
        run: _Run,
        move: sharding.Move,
        sources: list[str],
        targets: list[str],
        routing: StatusRouting,
    ) -> None:
        last = {"phase": ""}

        async def on_step(step: sharding.Step) -> None:
            if step.kind == "blocked":
                return  # act() raises; reported below
            # A wait's reason carries lag figures that change every poll: status is
            # rewritten only when the step, or what it waits for, changes.
            phase = f"{step.kind}: {step.reason.split(':')[0]}"
            if phase != last["phase"]:
                last["phase"] = phase
                self._set(key, run, phase=step.kind, message=step.reason)

        runner: shard_move.Runner | None = None
        try:
            await shard_move.prepare_targets(move, sources, targets)
            runner = shard_move.Runner(
                move, sources, targets, routing, poll=self.poll, on_step=on_step
            )
            report = await runner.run()
            fence = report.fence_seconds
            run.ended_at = time.monotonic()
            message = f"{len(report.steps)} steps; " + (
                f"writes were refused for {fence:.3f} s" if fence is not None else "no fence here"
            )
            self._set(
                key,
                run,
                phase="done",
                message=message,
                fence_seconds=round(fence, 3) if fence is not None else None,
            )
            log.info("shard move %s of %s/%s done: %s", move.name, *key, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported in status and an Event; retried, never a crash
            log.warning("shard move %s of %s/%s failed: %s", move.name, *key, exc)
            fence = runner.report.fence_seconds if runner is not None else None
            run.ended_at = time.monotonic()
            self._set(
                key,
                run,
                phase="failed",
                message=f"{type(exc).__name__}: {exc}".strip(),
                fence_seconds=round(fence, 3) if fence is not None else None,
            )

    async def stop(self) -> None:
        """Cancel every running move (the databases keep its state; a restart resumes it)."""
        with self._lock:
            tasks = [r.task for r in self._runs.values() if r.task is not None]
        for task in tasks:
            task.cancel()
