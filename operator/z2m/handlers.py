"""Kopf wiring: which events start a reconcile pass, and how passes are scheduled.

The handlers here hold no logic of their own. Every trigger (a ScalingStage
event, an event on any child, the periodic re-check, a retry) lands in one
per-object scheduler that coalesces bursts and never runs two passes of the
same object at once. Handlers are `on.event` and a startup task, not timers or
daemons, so z2m puts no finalizer on anything: a stopped operator never blocks
a deletion.

Children are read from memory: one `@kopf.index` per child kind, fed by the
same watches, makes `cache.Children`, and the periodic re-check walks an index
of ScalingStages. So a pass over a settled object lists nothing. Passes wait
until Kopf has filled the indices from its initial listings. After a watch gap
(410 Gone) Kopf relists; `relist` adds the deletions that relisting leaves out.

With `z2m run --leader-elect` (the chart's and manifests' default, two
replicas) a `leader.Elector` campaigns for a Lease: every replica watches, only
the leader runs passes and the promotion loop, and `kube.Kube` refuses writes
the moment the leader is past its renew deadline. A replica that loses the
Lease goes back to following in the same process; on shutdown the leader
releases it.

Scope is decided here too: the child watches send our label selector to the
apiserver, so foreign objects never reach the operator, and with `--namespace`
(Z2M_NAMESPACES) every list the operator makes stays inside those namespaces.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from z2m import (
    api,
    builders,
    cache,
    kube,
    leader,
    metrics,
    movers,
    outage,
    promote,
    reconcile,
    relist,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]
Obj = dict[str, Any]


@dataclass
class Scheduler:
    """Coalesces triggers per ScalingStage and runs passes in worker threads."""

    reconciler: reconcile.Reconciler
    debounce: float = 0.2
    active: Callable[[], bool] = lambda: True
    """Whether passes may run at all (False on a replica that does not lead)."""
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    indexed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once Kopf has filled its indices (it runs no handler before that)."""
    _pending: dict[Key, asyncio.TimerHandle | asyncio.Task[None]] = field(default_factory=dict)
    _running: set[Key] = field(default_factory=set)
    _again: set[Key] = field(default_factory=set)

    def trigger(self, namespace: str, name: str, delay: float | None = None) -> None:
        """Ask for a pass soon; repeated asks before it starts become one pass."""
        if not self.active():
            return
        key = (namespace, name)
        if key in self._running:
            self._again.add(key)
            return
        if key in self._pending:
            return
        loop = asyncio.get_running_loop()
        self._pending[key] = loop.call_later(
            self.debounce if delay is None else delay, self._start, key
        )

    def _start(self, key: Key) -> None:
        self._pending[key] = asyncio.get_running_loop().create_task(self._run(key))

    async def _run(self, key: Key) -> None:
        self._running.add(key)
        self._pending.pop(key, None)
        retry: float | None = None
        try:
            await self.indexed.wait()  # an empty index is not "no children"
            async with self.limit:
                if not self.active():
                    return
                result = await asyncio.to_thread(self.reconciler.reconcile, *key)
            retry = result.requeue_after
            outage.TRACKER.answered()
        except kube.NotLeadingError:
            log.info("pass of %s/%s stopped: this replica no longer leads", *key)
        except Exception as exc:
            # Never a crash loop: log, count (in Reconciler), and retry with the same delay.
            # An unreachable API is said once for all (outage), not once per retry.
            if not outage.failed(exc):
                log.exception("reconcile of %s/%s failed; retrying", *key)
            retry = self.reconciler.retry_seconds
        finally:
            self._running.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.trigger(*key)
        elif retry is not None:
            self.trigger(*key, delay=retry)


@dataclass
class Runtime:
    """What the handlers share; set up at operator start-up."""

    scheduler: Scheduler | None = None
    resync_seconds: float = 30.0
    scaling_stages: Mapping[Key, Any] | None = None
    """Kopf's index of the ScalingStages the operator serves, for the periodic re-check."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    elector: leader.Elector | None = None
    """None without leader election: this replica always leads."""
    promoter: asyncio.Task[None] | None = None
    promotion: promote.Loop | None = None
    """The promotion loop while it runs, to wake it when an approval arrives."""

    def leading(self) -> bool:
        """Whether this replica may reconcile and write now."""
        return self.elector is None or self.elector.leading


RUNTIME = Runtime()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """Build the reconciler and start the periodic re-check.

    Kopf hands every index to every handler by its id; the (empty) indices
    are already there at start-up and fill as the watches list.
    """
    settings.persistence.finalizer = "z2m.dev/unused"  # nothing of ours adds one
    settings.posting.level = logging.WARNING
    # A watch that goes quiet is restarted instead of leaving a zombie operator.
    settings.watching.server_timeout = int(os.environ.get("Z2M_WATCH_TIMEOUT", "120"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # By default Kopf escalates a watch's connection error out of its watch loop after
    # 8 retries (54 s); an apiserver may be away longer (an etcd restore). Retry forever,
    # as client-go's reflectors do, and log the outage once (z2m.outage), not each attempt.
    settings.networking.error_backoffs = EndlessBackoff()
    outage.quiet_kopf_retries()
    for group_version, plural, _ in CHILD_RESOURCES:
        # Server-side filtering: the watch itself carries the selector, so the apiserver
        # never streams the cluster's other ConfigMaps, Services and Deployments to us.
        settings.watching.label_selectors[group_version, plural] = CHILD_SELECTOR
    client = kube.load_config(os.environ.get("Z2M_KUBECONFIG") or None)
    k = kube.Kube.connect(client, namespaces=watched_namespaces(), may_write=RUNTIME.leading)
    k.watched = cache.Children(
        asyncio.get_running_loop(),
        {
            (group_version, kind): kwargs[f"children_{plural}"]
            for group_version, plural, kind in CHILD_RESOURCES
        },
    )
    RUNTIME.scaling_stages = kwargs["scaling_stages"]
    RUNTIME.elector = elector(client)
    reconciler = reconcile.Reconciler(
        kube=k,
        retry_seconds=float(os.environ.get("Z2M_RETRY_SECONDS", "5")),
        queue_quiet_seconds=float(os.environ.get("Z2M_QUEUE_QUIET_SECONDS", "15")),
    )
    RUNTIME.scheduler = Scheduler(reconciler, active=RUNTIME.leading)
    # Shard moves run on this loop, beside the passes; a move's progress asks for a pass.
    reconciler.movers = movers.Movers(
        asyncio.get_running_loop(),
        k,
        on_change=RUNTIME.scheduler.trigger,
        retry_seconds=reconciler.retry_seconds,
    )
    RUNTIME.resync_seconds = float(os.environ.get("Z2M_RESYNC_SECONDS", "30"))
    RUNTIME.tasks.append(asyncio.create_task(_resync()))
    if RUNTIME.elector is None:
        _start_promoter(reconciler.kube)
    else:
        RUNTIME.tasks.append(asyncio.create_task(_campaign(RUNTIME.elector, reconciler.kube)))


def elector(client: kubernetes.client.ApiClient) -> leader.Elector | None:
    """The Lease elector `z2m run --leader-elect` asked for (Z2M_LEADER_ELECT), or None."""
    if os.environ.get("Z2M_LEADER_ELECT") != "true":
        return None
    return leader.Elector(
        client,
        namespace=os.environ["Z2M_LEASE_NAMESPACE"],
        name=os.environ["Z2M_LEASE_NAME"],
        identity=os.environ["Z2M_IDENTITY"],
        timing=leader.Timing(
            lease_duration=float(os.environ.get("Z2M_LEASE_DURATION", "10")),
            renew_deadline=float(os.environ.get("Z2M_RENEW_DEADLINE", "7")),
            retry_period=float(os.environ.get("Z2M_RETRY_PERIOD", "2")),
        ),
    )


def _start_promoter(client: kube.Kube) -> None:
    # Metrics-driven promotion (modes recommend and auto): it writes, so only the leader runs it.
    if RUNTIME.promoter is None or RUNTIME.promoter.done():
        RUNTIME.promoter = asyncio.create_task(
            promote.run_forever(client, asyncio.Event(), _stages, _promotion_started)
        )


def _promotion_started(loop: promote.Loop) -> None:
    RUNTIME.promotion = loop


async def _campaign(elector: leader.Elector, client: kube.Kube) -> None:
    """Acquire or renew the Lease every retry period; start and stop leading on the answer."""
    where = f"Lease {elector.namespace}/{elector.name} as {elector.identity}"
    log.info("leader election: following until %s can be acquired", where)
    led = False
    while True:
        try:
            await asyncio.to_thread(elector.try_acquire_or_renew)
            outage.TRACKER.answered()
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("leader election: acquiring or renewing the Lease failed")
        leads = elector.leading
        if leads and not led:
            log.info("leader election: leading (%s)", where)
            _start_promoter(client)
            _trigger_all(client)
        elif led and not leads:
            log.warning("leader election: lost %s; stopped writing, following again", where)
            if RUNTIME.promoter is not None:
                RUNTIME.promoter.cancel()
            # A shard move goes on in the new leader: its steps are idempotent, and the
            # databases, not this process, hold where it is.
            if RUNTIME.scheduler is not None and RUNTIME.scheduler.reconciler.movers is not None:
                await RUNTIME.scheduler.reconciler.movers.stop()
        led = leads
        await asyncio.sleep(elector.timing.retry_period)


def _trigger_all(client: kube.Kube) -> None:
    """A new leader looks at every ScalingStage at once, not at the next periodic re-check.

    They come from Kopf's index of ScalingStages (this runs on Kopf's loop): no LIST.
    """
    if RUNTIME.scheduler is None or RUNTIME.scaling_stages is None:
        return
    for namespace, name in list(RUNTIME.scaling_stages):
        RUNTIME.scheduler.trigger(namespace, name)


class EndlessBackoff:
    """1, 1, 2, 3, 5, 8, then 10 s forever; a fresh sequence for every request."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8), itertools.repeat(10))


def watched_namespaces() -> tuple[str, ...]:
    """The namespaces of `z2m run --namespace` (Z2M_NAMESPACES); empty means cluster-wide."""
    return tuple(n for n in os.environ.get("Z2M_NAMESPACES", "").split(",") if n)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the periodic re-check, the promotion loop and shard moves; release the Lease."""
    scheduler = RUNTIME.scheduler
    if scheduler is not None and scheduler.reconciler.movers is not None:
        await scheduler.reconciler.movers.stop()
    for task in [*RUNTIME.tasks, RUNTIME.promoter]:
        if task is not None:
            task.cancel()
    RUNTIME.tasks.clear()
    RUNTIME.promoter = None
    if RUNTIME.elector is not None and RUNTIME.elector.leading:
        try:
            released = await asyncio.to_thread(RUNTIME.elector.release)
        except Exception as exc:
            log.warning("leader election: could not release the Lease (%s)", kube.brief(exc))
        else:
            if released:
                log.info("leader election: released the Lease")


async def _resync() -> None:
    """Compare every ScalingStage with the world periodically, not only on events.

    The ScalingStages come from Kopf's index (this task runs on Kopf's loop, where
    the index is changed, so reading it here needs no hand-over): no LIST.
    """
    while True:
        await asyncio.sleep(RUNTIME.resync_seconds)
        if RUNTIME.scheduler is None or RUNTIME.scaling_stages is None:
            continue
        for namespace, name in list(RUNTIME.scaling_stages):
            RUNTIME.scheduler.trigger(namespace, name)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log Kopf in with Z2M_KUBECONFIG when given, else as the client library would."""
    path = os.environ.get("Z2M_KUBECONFIG")
    if not path:
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, client_configuration=config
    )
    # The client keeps a kubeconfig token under "BearerToken" (v37), once "authorization".
    keys = config.api_key or {}
    bearer = keys.get("BearerToken") or keys.get("authorization") or ""
    token = bearer.removeprefix("Bearer ") or None
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        token=token,
    )


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def scaling_stage_changed(
    type: str | None, namespace: str | None, name: str | None, **_: Any
) -> None:
    """Any change to a ScalingStage (including the initial listing) asks for a pass."""
    if RUNTIME.scheduler is not None:
        RUNTIME.scheduler.indexed.set()  # Kopf runs handlers only once its indices are full
    if RUNTIME.scheduler is None or namespace is None or name is None or type == "DELETED":
        return
    RUNTIME.scheduler.trigger(namespace, name)


# managed-by=z2m and any part-of: sent to the apiserver with every child watch.
CHILD_SELECTOR = f"{builders.MANAGED_BY}=z2m,{builders.PART_OF}"
CHILD_RESOURCES = (
    ("apps/v1", "deployments", "Deployment"),
    ("apps/v1", "statefulsets", "StatefulSet"),
    ("v1", "services", "Service"),
    ("v1", "configmaps", "ConfigMap"),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("v1", "serviceaccounts", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "roles", "Role"),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
)


@kopf.index(api.GROUP, api.VERSION, api.PLURAL, id="scaling_stages")
def _index_scaling_stage(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> Any:
    """The ScalingStages the operator serves, keyed by (namespace, name)."""
    if not namespace or not name:
        return None
    if RUNTIME.promotion is not None and promote.APPROVE_ANNOTATION in body.metadata.annotations:
        RUNTIME.promotion.poke()  # an approval: evaluated now, not at the loop's next tick
    return {(namespace, name): cache.entry(body, f"{api.GROUP}/{api.VERSION}", api.KIND)}


def _stages() -> list[Obj]:
    """Every ScalingStage in the index, as last watched (called on Kopf's loop)."""
    index = RUNTIME.scaling_stages or {}
    return [obj for key in list(index) for obj in index[key]]


def _indexer(api_version: str, kind: str) -> Any:
    def index_child(
        labels: Mapping[str, str], namespace: str | None, body: kopf.Body, **_: Any
    ) -> Any:
        owner = labels.get(builders.PART_OF)
        if labels.get(builders.MANAGED_BY) != "z2m" or not owner or not namespace:
            return None
        return {(namespace, owner): cache.entry(body, api_version, kind)}

    return index_child


async def _child_changed(
    labels: Mapping[str, str], namespace: str | None, resource: kopf.Resource, **_: Any
) -> None:
    # No client-side filter on these handlers: every event the watch delivers is
    # counted, so the counter shows what the apiserver actually sends us.
    owner = labels.get(builders.PART_OF)
    ours = labels.get(builders.MANAGED_BY) == "z2m" and bool(owner)
    metrics.CHILD_EVENTS.labels(resource.plural, "true" if ours else "false").inc()
    if RUNTIME.scheduler is not None:
        RUNTIME.scheduler.indexed.set()
    if RUNTIME.scheduler is not None and ours and owner and namespace:
        RUNTIME.scheduler.trigger(namespace, owner)


for _group_version, _plural, _kind in CHILD_RESOURCES:
    _group, _, _version = _group_version.rpartition("/")
    kopf.on.event(_group, _version, _plural, id=f"child-{_plural}")(_child_changed)
    kopf.index(_group, _version, _plural, id=f"children_{_plural}")(_indexer(_group_version, _kind))

# After a watch gap (410 Gone) Kopf relists but says nothing of what the listing lacks;
# relist makes those DELETED events, so the indices above never keep a child that is gone.
relist.install(
    [(api.GROUP, api.VERSION, api.PLURAL)]
    + [(gv.rpartition("/")[0], gv.rpartition("/")[2], plural) for gv, plural, _ in CHILD_RESOURCES]
)


@kopf.on.probe(id="scheduler")
def scheduler_alive(**_: Any) -> bool:
    """Liveness: the operator has finished start-up and can schedule passes."""
    return RUNTIME.scheduler is not None
