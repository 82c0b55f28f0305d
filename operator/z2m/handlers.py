"""Kopf wiring: which events start a reconcile pass, and how passes are scheduled.

The handlers here hold no logic of their own. Every trigger (a ScalingStage
event, an event on any child, the periodic re-check, a retry) lands in one
per-object scheduler that coalesces bursts and never runs two passes of the
same object at once. Handlers are `on.event` and a startup task, not timers or
daemons, so z2m puts no finalizer on anything: a stopped operator never blocks
a deletion.

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

from z2m import api, builders, kube, leader, metrics, outage, promote, reconcile

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class Scheduler:
    """Coalesces triggers per ScalingStage and runs passes in worker threads."""

    reconciler: reconcile.Reconciler
    debounce: float = 0.2
    active: Callable[[], bool] = lambda: True
    """Whether passes may run at all (False on a replica that does not lead)."""
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
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
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    elector: leader.Elector | None = None
    """None without leader election: this replica always leads."""
    promoter: asyncio.Task[None] | None = None

    def leading(self) -> bool:
        """Whether this replica may reconcile and write now."""
        return self.elector is None or self.elector.leading


RUNTIME = Runtime()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Build the reconciler and start the periodic re-check."""
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
    for group_version, plural in CHILD_RESOURCES:
        # Server-side filtering: the watch itself carries the selector, so the apiserver
        # never streams the cluster's other ConfigMaps, Services and Deployments to us.
        settings.watching.label_selectors[group_version, plural] = CHILD_SELECTOR
    client = kube.load_config(os.environ.get("Z2M_KUBECONFIG") or None)
    RUNTIME.elector = elector(client)
    reconciler = reconcile.Reconciler(
        kube=kube.Kube.connect(client, namespaces=watched_namespaces(), may_write=RUNTIME.leading),
        retry_seconds=float(os.environ.get("Z2M_RETRY_SECONDS", "5")),
        queue_quiet_seconds=float(os.environ.get("Z2M_QUEUE_QUIET_SECONDS", "15")),
    )
    RUNTIME.scheduler = Scheduler(reconciler, active=RUNTIME.leading)
    RUNTIME.resync_seconds = float(os.environ.get("Z2M_RESYNC_SECONDS", "30"))
    RUNTIME.tasks.append(asyncio.create_task(_resync(reconciler.kube)))
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
        RUNTIME.promoter = asyncio.create_task(promote.run_forever(client, asyncio.Event()))


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
        led = leads
        await asyncio.sleep(elector.timing.retry_period)


def _trigger_all(client: kube.Kube) -> None:
    """A new leader looks at every ScalingStage at once, not at the next periodic re-check."""
    RUNTIME.tasks.append(asyncio.create_task(_list_and_trigger(client)))


async def _list_and_trigger(client: kube.Kube) -> None:
    try:
        items = await asyncio.to_thread(client.list_scaling_stages)
    except Exception as exc:
        if not outage.failed(exc):
            log.warning("listing ScalingStages failed (%s); the re-check will", kube.brief(exc))
        return
    for item in items:
        if RUNTIME.scheduler is not None:
            RUNTIME.scheduler.trigger(item["metadata"]["namespace"], item["metadata"]["name"])


class EndlessBackoff:
    """1, 1, 2, 3, 5, 8, then 10 s forever; a fresh sequence for every request."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8), itertools.repeat(10))


def watched_namespaces() -> tuple[str, ...]:
    """The namespaces of `z2m run --namespace` (Z2M_NAMESPACES); empty means cluster-wide."""
    return tuple(n for n in os.environ.get("Z2M_NAMESPACES", "").split(",") if n)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the periodic re-check and the promotion loop; a leader releases its Lease."""
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


async def _resync(client: kube.Kube) -> None:
    """Compare every ScalingStage with the world periodically, not only on events."""
    while True:
        await asyncio.sleep(RUNTIME.resync_seconds)
        try:
            items = await asyncio.to_thread(client.list_scaling_stages)
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("listing ScalingStages for the periodic re-check failed")
            continue
        outage.TRACKER.answered()
        for item in items:
            if RUNTIME.scheduler is not None:
                RUNTIME.scheduler.trigger(item["metadata"]["namespace"], item["metadata"]["name"])


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
    if RUNTIME.scheduler is None or namespace is None or name is None or type == "DELETED":
        return
    RUNTIME.scheduler.trigger(namespace, name)


# managed-by=z2m and any part-of: sent to the apiserver with every child watch.
CHILD_SELECTOR = f"{builders.MANAGED_BY}=z2m,{builders.PART_OF}"
CHILD_RESOURCES = (
    ("apps/v1", "deployments"),
    ("apps/v1", "statefulsets"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("policy/v1", "poddisruptionbudgets"),
    ("autoscaling/v2", "horizontalpodautoscalers"),
)


async def _child_changed(
    labels: Mapping[str, str], namespace: str | None, resource: kopf.Resource, **_: Any
) -> None:
    # No client-side filter on these handlers: every event the watch delivers is
    # counted, so the counter shows what the apiserver actually sends us.
    owner = labels.get(builders.PART_OF)
    ours = labels.get(builders.MANAGED_BY) == "z2m" and bool(owner)
    metrics.CHILD_EVENTS.labels(resource.plural, "true" if ours else "false").inc()
    if RUNTIME.scheduler is not None and ours and owner and namespace:
        RUNTIME.scheduler.trigger(namespace, owner)


for _group_version, _plural in CHILD_RESOURCES:
    _group, _, _version = _group_version.rpartition("/")
    kopf.on.event(_group, _version, _plural, id=f"child-{_plural}")(_child_changed)


@kopf.on.probe(id="scheduler")
def scheduler_alive(**_: Any) -> bool:
    """Liveness: the operator has finished start-up and can schedule passes."""
    return RUNTIME.scheduler is not None
