"""Kubernetes, RabbitMQ and Redis Sentinel I/O for the reconciler, and nothing else.

Every call here is synchronous (the official `kubernetes` client); the
reconciler runs them in worker threads so that one slow apiserver call never
blocks Kopf's event loop. Builders never import this module.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import kubernetes
import redis
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from z2m import api, builders, cache, metrics, redis_handover

log = logging.getLogger(__name__)

Obj = dict[str, Any]
HANDOVER_MANAGER = "z2m-replicas-handover"
RECONCILER_MANAGER = "z2m-reconciler"
"""Field manager of the status the reconciler rebuilds every pass."""
PROMOTER_MANAGER = "z2m-promoter"
"""Field manager of the status the promotion loop writes (decisions, its conditions)."""


class NotLeadingError(RuntimeError):
    """A write refused because this replica does not hold the leader Lease (see `leader`)."""


def plain(_client: Any, instance: Obj) -> Obj:
    """An answer as the apiserver's JSON: the dynamic client's `serializer` for a plain dict.

    The same dict as `ResourceInstance(...).to_dict()`, list items given their
    apiVersion and kind as it gives them, without building and flattening a
    ResourceInstance tree (about half a millisecond of CPU per object).
    """
    kind = instance.get("kind") or ""
    if kind.endswith("List") and "items" in instance:
        instance["items"] = instance["items"] or []
        for item in instance["items"]:
            item.setdefault("apiVersion", instance.get("apiVersion"))
            item.setdefault("kind", kind[:-4])
    return instance


def _always() -> bool:
    return True


def brief(exc: BaseException) -> str:
    """An exception in one line, without the response headers ApiException carries."""
    if isinstance(exc, ApiException):
        return f"{type(exc).__name__} {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def load_config(kubeconfig: str | None = None) -> ApiClient:
    """An API client from a kubeconfig, the in-cluster service account, or ~/.kube/config."""
    # The kubernetes package's config loaders carry no type hints.
    if kubeconfig:
        client: ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
        return client
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


@dataclass
class Kube:
    """A thin, typed face over the dynamic client for the few verbs the operator uses.

    One instance is shared by every reconcile thread. The dynamic client's
    discovery cache is not thread-safe, so lookups go through one lock, and
    kinds the server does not serve are remembered for a while instead of
    re-reading discovery on every miss. With `namespaces`, lists stay inside them.
    With `watched` (the operator's watch-fed indices), children of the kinds it
    holds are read from memory instead of listed.
    Every write first asks `may_write` (the leader election's fence) and raises
    `NotLeadingError` when it says no.
    """

    client: DynamicClient
    namespaces: tuple[str, ...] = ()
    """The namespaces the operator serves (`z2m run --namespace`); empty: the cluster."""
    watched: cache.Children | None = None
    """Children from the operator's watches; None: every child kind is listed."""
    may_write: Callable[[], bool] = _always
    missing_ttl: float = 60.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _missing: dict[tuple[str, str], float] = field(default_factory=dict)
    _node_counts: dict[str, tuple[float, int | None]] = field(default_factory=dict)
    """Per node label (zone, region): when it was last counted, and the count."""

    @classmethod
    def connect(
        cls,
        api_client: ApiClient,
        namespaces: tuple[str, ...] = (),
        may_write: Callable[[], bool] = _always,
    ) -> Kube:
        """Wrap an API client; discovery is lazy and cached by the dynamic client."""
        client = DynamicClient(api_client)  # type: ignore[no-untyped-call]
        return cls(client, namespaces, may_write=may_write)

    def _fence(self, verb: str, kind: str) -> None:
        if not self.may_write():
            raise NotLeadingError(f"not the leader: refusing to {verb} a {kind}")

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._lock:
            return self.client.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """One object as a dict, or None when it does not exist."""
        metrics.API_REQUESTS.labels("get", kind).inc()
        try:
            obj: Obj = self._resource(api_version, kind).get(
                name=name, namespace=namespace, serializer=plain
            )
        except NotFoundError:
            return None
        return obj

    def scaling_stage(self, namespace: str, name: str) -> Obj | None:
        """The ScalingStage, fresh from the apiserver."""
        return self.get(f"{api.GROUP}/{api.VERSION}", api.KIND, namespace, name)

    def list_scaling_stages(self) -> list[Obj]:
        """Every ScalingStage the operator serves: in its namespaces, else in the cluster."""
        resource = self._resource(f"{api.GROUP}/{api.VERSION}", api.KIND)
        items: list[Obj] = []
        for namespace in self.namespaces or (None,):
            metrics.API_REQUESTS.labels("list", api.KIND).inc()
            items += resource.get(namespace=namespace, serializer=plain)["items"]
        return items

    def apply(self, obj: Obj, manager: str = builders.FIELD_MANAGER, dry_run: bool = False) -> Obj:
        """Server-side apply under one field manager, taking ownership of conflicts.

        With `dry_run`, the apiserver validates and admits the object but stores nothing.
        """
        meta = obj["metadata"]
        self._fence("apply", obj["kind"])
        metrics.API_REQUESTS.labels("apply", obj["kind"]).inc()
        result = self._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
            body=apply_body(obj),
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=manager,
            force_conflicts=True,
            **({"dry_run": "All"} if dry_run else {}),
        )
        applied: Obj = result.to_dict()
        return applied

    def annotate(self, obj: Obj, annotations: dict[str, str]) -> Obj:
        """Merge-patch some annotations of an existing object, and nothing else."""
        self._fence("patch", obj["kind"])
        meta = obj["metadata"]
        metrics.API_REQUESTS.labels("patch", obj["kind"]).inc()
        result = self._resource(obj["apiVersion"], obj["kind"]).patch(
            name=meta["name"],
            namespace=meta.get("namespace"),
            body={"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )
        patched: Obj = result.to_dict()
        return patched

    def children(self, namespace: str, owner_name: str) -> list[Obj]:
        """Every prunable object labelled as a child of the ScalingStage.

        Kinds the watches hold come from memory; only the others are listed.
        """
        found: list[Obj] = []
        held: frozenset[cache.Kind] = frozenset()
        if self.watched is not None:
            found += self.watched.read(namespace, owner_name)
            held = self.watched.kinds
        for api_version, kind in sorted(builders.PRUNABLE):
            if (api_version, kind) in held or not self.has_kind(api_version, kind):
                continue
            metrics.API_REQUESTS.labels("list", kind).inc()
            try:
                listing = self._resource(api_version, kind).get(
                    namespace=namespace, label_selector=builders.child_selector(owner_name)
                )
            except NotFoundError:
                # Discovery still names a kind whose CRD is gone (the Prometheus
                # Operator's, uninstalled): no such children can exist any more.
                self._forget(api_version, kind)
                continue
            for item in listing.to_dict()["items"]:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                found.append(item)
        return found

    def delete(self, obj: Obj) -> None:
        """Delete a child; its pods follow through the garbage collector."""
        meta = obj["metadata"]
        self._fence("delete", obj["kind"])
        metrics.API_REQUESTS.labels("delete", obj["kind"]).inc()
        with contextlib.suppress(NotFoundError):  # already gone is what we wanted
            self._resource(obj["apiVersion"], obj["kind"]).delete(
                name=meta["name"],
                namespace=meta["namespace"],
                body={"propagationPolicy": "Background"},
            )

    def _forget(self, api_version: str, kind: str) -> None:
        """Re-read discovery, and remember the kind as missing for a while."""
        with self._lock:
            self.client.resources.invalidate_cache()
        self._missing[(api_version, kind)] = time.monotonic()

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the apiserver serves a kind (a CRD's, for one)."""
        key = (api_version, kind)
        if time.monotonic() - self._missing.get(key, -self.missing_ttl) < self.missing_ttl:
            return False
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            self._missing[key] = time.monotonic()
            return False
        self._missing.pop(key, None)
        return True

    def prometheus_operator(self) -> bool:
        """Whether the cluster serves the Prometheus Operator's PodMonitor and PrometheusRule."""
        return all(self.has_kind(v, k) for v, k in builders.PROMETHEUS_OPERATOR_KINDS)

    def gateway_api(self) -> bool:
        """Whether the cluster serves the Gateway API's Gateway and HTTPRoute."""
        return all(self.has_kind(v, k) for v, k in builders.GATEWAY_API_KINDS)

    def ensure_credentials(self, namespace: str, owner_name: str) -> Obj | None:
        """Create the credentials Secret once; an existing one is never rotated or logged.

        Returns the Secret, or None when the operator may create but not read
        Secrets in this namespace (see manifests/02-rbac.yaml).
        """
        name = builders.secret_name(owner_name)
        core = kubernetes.client.CoreV1Api(self.client.client)
        metrics.API_REQUESTS.labels("get", "Secret").inc()
        try:
            existing: Obj = core.read_namespaced_secret(name, namespace).to_dict()
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise
            readable = exc.status == 404
        else:
            missing = [k for k in builders.SECRET_KEYS if k not in (existing.get("data") or {})]
            if not missing:
                return existing
            # Add only what is missing (an older operator version); never overwrite a value.
            patch = {"data": {k: _b64(secrets.token_hex(24)) for k in missing}}
            self._fence("patch", "Secret")
            metrics.API_REQUESTS.labels("patch", "Secret").inc()
            patched: Obj = core.patch_namespaced_secret(name, namespace, patch).to_dict()
            return patched
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                # No owner reference: the data on the retained PVCs needs these passwords.
                "labels": {**builders.labels(owner_name, "credentials"), builders.RETAINED: "true"},
            },
            # Hex keeps every password safe inside a URL without quoting.
            "data": {k: _b64(secrets.token_hex(24)) for k in builders.SECRET_KEYS},
        }
        self._fence("create", "Secret")
        metrics.API_REQUESTS.labels("create", "Secret").inc()
        try:
            created: Obj = core.create_namespaced_secret(
                namespace, kubernetes.client.V1Secret.model_validate(body)
            ).to_dict()
            return created
        except ApiException as exc:
            if exc.status != 409:
                raise
        # It exists already (another pass, or we may not read it): never overwrite it.
        if not readable:
            return None
        metrics.API_REQUESTS.labels("get", "Secret").inc()
        again: Obj = core.read_namespaced_secret(name, namespace).to_dict()
        return again

    def hand_over_replicas(self, deployment: Obj) -> bool:
        """Let an autoscaler own `spec.replicas` without a drop to one replica.

        When our field manager stops sending `spec.replicas`, server-side apply
        would remove the field and the Deployment would default to 1 replica.
        So another manager first claims the current value; then ours can let go.
        Returns whether a hand-over was written.
        """
        current = self.get(
            "apps/v1",
            "Deployment",
            deployment["metadata"]["namespace"],
            deployment["metadata"]["name"],
        )
        if current is None or not _owns_replicas(current, builders.FIELD_MANAGER):
            return False
        claim = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": current["metadata"]["name"],
                "namespace": current["metadata"]["namespace"],
            },
            "spec": {"replicas": current["spec"]["replicas"]},
        }
        self.apply(claim, manager=HANDOVER_MANAGER)
        return True

    def claims(self, namespace: str, selector: str) -> list[Obj]:
        """The PersistentVolumeClaims in a namespace that match a label selector."""
        metrics.API_REQUESTS.labels("list", "PersistentVolumeClaim").inc()
        listing = self._resource("v1", "PersistentVolumeClaim").get(
            namespace=namespace, label_selector=selector
        )
        return list(listing.to_dict()["items"])

    def pods(self, namespace: str, owner_name: str) -> list[Obj]:
        """The pods of one ScalingStage's children (read only while one is not ready)."""
        metrics.API_REQUESTS.labels("list", "Pod").inc()
        listing = self._resource("v1", "Pod").get(
            namespace=namespace, label_selector=builders.child_selector(owner_name)
        )
        return list(listing.to_dict()["items"])

    def postgres_members(self, namespace: str, scope: str) -> tuple[str | None, list[Obj]]:
        """Patroni's leader lock holder (None when free) and the pods of its members."""
        metrics.API_REQUESTS.labels("get", "ConfigMap").inc()
        lock = self.get("v1", "ConfigMap", namespace, f"{scope}-leader") or {}
        leader = ((lock.get("metadata") or {}).get("annotations") or {}).get("leader") or None
        metrics.API_REQUESTS.labels("list", "Pod").inc()
        pods = self._resource("v1", "Pod").get(
            namespace=namespace, label_selector=f"{builders.POSTGRES_CLUSTER}={scope}"
        )
        return leader, list(pods.to_dict()["items"])

    def zones(self) -> int | None:
        """How many zones the cluster's nodes are in (re-read each minute); None if unknown.

        A node without the zone label counts as a zone of its own only when no node has
        one. Unknown when the operator may not list nodes (the chart's namespaced mode).
        """
        return self._count_nodes_by(builders.ZONE)

    def regions(self) -> int | None:
        """How many regions the cluster's nodes are in, counted as `zones` counts zones."""
        return self._count_nodes_by(builders.REGION)

    def _count_nodes_by(self, label: str) -> int | None:
        now = time.monotonic()
        cached = self._node_counts.get(label)
        if cached is not None and now - cached[0] < self.missing_ttl:
            return cached[1]
        metrics.API_REQUESTS.labels("list", "Node").inc()
        try:
            nodes = self._resource("v1", "Node").get().to_dict()["items"]
        except ApiException as exc:
            if exc.status != 403:
                raise
            count = None
        else:
            labels = [(n["metadata"].get("labels") or {}).get(label) for n in nodes]
            count = len({z for z in labels if z}) or (1 if nodes else 0)
        self._node_counts[label] = (now, count)
        return count

    def expand_claim(self, namespace: str, name: str, size: str) -> None:
        """Ask for a bigger volume: the claim's request grows, its StorageClass does the rest."""
        self._fence("patch", "PersistentVolumeClaim")
        metrics.API_REQUESTS.labels("patch", "PersistentVolumeClaim").inc()
        self._resource("v1", "PersistentVolumeClaim").patch(
            name=name,
            namespace=namespace,
            body={"spec": {"resources": {"requests": {"storage": size}}}},
            content_type="application/merge-patch+json",
        )

    def storage_class(self, name: str) -> Obj | None:
        """A StorageClass (cluster-scoped), or None when it does not exist."""
        metrics.API_REQUESTS.labels("get", "StorageClass").inc()
        try:
            obj = self._resource("storage.k8s.io/v1", "StorageClass").get(name=name)
        except NotFoundError:
            return None
        result: Obj = obj.to_dict()
        return result

    def apply_status(self, namespace: str, name: str, status: Obj, manager: str) -> Obj:
        """Server-side apply `status` on the status subresource as field manager `manager`.

        Each status writer has its own manager (RECONCILER_MANAGER, PROMOTER_MANAGER)
        and sends only the fields it owns, every time: fields it sent before and no
        longer sends are removed, and fields another manager owns are left alone.
        `conditions` is a map list keyed by `type`, so each condition belongs to the
        writer that sets it. Conflicts are forced only to take fields over from the
        merge patches of older z2m versions; the two writers' fields are disjoint.
        """
        resource = self._resource(f"{api.GROUP}/{api.VERSION}", api.KIND)
        self._fence("apply", f"{api.KIND}/status")
        metrics.API_REQUESTS.labels("apply", f"{api.KIND}/status").inc()
        body: Obj = {
            "apiVersion": f"{api.GROUP}/{api.VERSION}",
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        result: Obj = resource.status.server_side_apply(
            body=apply_body(body),
            name=name,
            namespace=namespace,
            field_manager=manager,
            force_conflicts=True,
            serializer=plain,
        )
        return result

    def event(self, scaling_stage: Obj, kind: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on the ScalingStage."""
        meta = scaling_stage["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "z2m"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        core = kubernetes.client.CoreV1Api(self.client.client)
        self._fence("create", "Event")
        metrics.API_REQUESTS.labels("create", "Event").inc()
        core.create_namespaced_event(
            meta["namespace"], kubernetes.client.CoreV1Event.model_validate(body)
        )


def apply_body(obj: Obj) -> bytes:
    """An apply patch as JSON that the apiserver's YAML reader takes whatever the text.

    The client would send `json.dumps(obj)`, which writes a character beyond the
    BMP (an emoji in an env value) as a surrogate pair of escapes; the apiserver
    reads apply patches as YAML, which refuses those, so every apply of that
    object would fail. Such characters are sent as UTF-8 instead, and the few YAML
    forbids or folds raw (DEL, C1 controls, the line separators, U+FFFE/F) as escapes.
    """
    text = json.dumps(obj, ensure_ascii=False)
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


_YAML_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufffe\uffff]")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_value(secret: Obj, key: str) -> str:
    """A decoded value of a Secret read through the client."""
    return base64.b64decode(secret["data"][key]).decode()


def _owns_replicas(obj: Obj, manager: str) -> bool:
    for entry in (
        obj["metadata"].get("managed_fields") or obj["metadata"].get("managedFields") or []
    ):
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields = entry.get("fields_v1") or entry.get("fieldsV1") or {}
        if "f:replicas" in fields.get("f:spec", {}):
            return True
    return False


def queue_depth(
    management_url: str, user: str, password: str, queue: str, timeout: float = 5.0
) -> int:
    """Messages in a RabbitMQ queue (ready and unacknowledged), from the management API.

    Anything that goes wrong raises, so that the caller keeps the queue rather than
    guessing. That includes a queue that does not exist: workers declare it when they
    start, so its absence means the operator and the app disagree, not that it is empty.
    """
    url = f"{management_url.rstrip('/')}/api/queues/%2F/{urllib.parse.quote(queue, safe='')}"
    response = httpx.get(url, auth=(user, password), timeout=timeout)
    if response.status_code == 404:
        raise LookupError(f"RabbitMQ has no queue {queue!r}")
    response.raise_for_status()
    body = response.json()
    # "messages" counts ready and unacknowledged jobs alike: a job a worker holds counts.
    # A queue the statistics collector has not reported on yet has no count: unknown, not 0.
    if "messages" not in body:
        raise ValueError(f"RabbitMQ has no message count for queue {queue!r} yet")
    return int(body["messages"])


def redis_master(
    sentinel: str, master_name: str, password: str, timeout: float = 3.0
) -> redis_handover.Master:
    """The Redis master that the Sentinel at `sentinel` (host:port) names, as it sees itself.

    Reached directly, like the queue's management API. Its name is the one it
    announces to Sentinel (`replica-announce-ip`), else the address Sentinel gave.
    Anything that goes wrong raises, so that the caller keeps Redis as it is.
    """
    host, _, port = sentinel.rpartition(":")
    with redis.Redis(
        host=host, port=int(port), socket_timeout=timeout, decode_responses=True
    ) as watcher:
        found = watcher.sentinel_get_master_addr_by_name(master_name)
    if not found:
        raise LookupError(f"Sentinel {sentinel} knows no master {master_name!r}")
    address, master_port = str(found[0]), int(found[1])
    with redis.Redis(
        host=address,
        port=master_port,
        password=password,
        socket_timeout=timeout,
        decode_responses=True,
    ) as master:
        announced = master.config_get("replica-announce-ip").get("replica-announce-ip") or ""
        info = master.info("replication")
    return redis_handover.Master.from_info(str(announced) or address, info)


def redis_failover(sentinel: str, master_name: str, timeout: float = 3.0) -> bool:
    """Ask Sentinel to fail `master_name` over; False when a failover is already running."""
    host, _, port = sentinel.rpartition(":")
    with redis.Redis(host=host, port=int(port), socket_timeout=timeout) as watcher:
        try:
            watcher.sentinel_failover(master_name)
        except redis.ResponseError as exc:
            if "INPROG" not in str(exc):
                raise
            return False
    return True


def patroni_switchover(
    api_url: str, leader: str, candidate: str, password: str, timeout: float = 10.0
) -> str:
    """Ask Patroni (the leader's REST API) to hand the primary to `candidate`; its answer."""
    response = httpx.post(
        f"{api_url}/switchover",
        json={"leader": leader, "candidate": candidate},
        auth=(builders.PATRONI_API_USER, password),
        timeout=timeout,
    )
    if response.status_code >= 400:
        raise RuntimeError(f"Patroni answered {response.status_code}: {response.text.strip()}")
    return response.text.strip()
