"""Benchmark the z2m operator against the floor: kubectl applying the same objects.

Not a test. It needs the local control plane to be up (`hack/cluster.sh up`,
kubeconfig `.cluster/kubeconfig`, the ScalingStage CRD installed) and leaves
it up; it works only in fresh namespaces named `bench-op-*` and deletes them.
`z2m run` runs as a separate process, so its CPU and memory are read from
/proc.

1. Stage changes. One ScalingStage (examples/shop.yaml) is moved around the
   cycle 1 -> 4 -> 5 -> 2 -> 1, `--runs` times. For each change:

   - operator: the time from patching `spec.stage` until it is *applied*
     (status.observedGeneration == metadata.generation AND the set of
     prunable children equals the set the builders render for the new stage)
     and until it is *Ready* (additionally status.ready == "True" at the new
     stage).
   - floor: in another namespace, a real but paused ScalingStage exists only
     to give the children a real owner uid (paused, because the operator's
     periodic re-check reaches every namespace, not only its own). The
     same rendered objects (same builders, same plan, same owner reference)
     are written with `kubectl apply --server-side --force-conflicts
     --field-manager=bench`, then `kubectl delete --wait=false` of the
     prunable objects the new stage no longer has. *Applied* is the children
     set equalling the new stage's (the operator's test); *Ready* is
     every Deployment and StatefulSet being available by the operator's own
     criterion (`z2m.status.component_status`).

   The operator and the floor run alternately, change by change, so they share
   the machine's noise.
2. A fleet. `--fleet` ScalingStages at stage `--fleet-stage` are created at
   once (one `kubectl apply` of the CRs) while a fresh operator runs; the time
   until all are applied and all Ready, the operator's CPU seconds, its RSS
   and peak RSS (VmHWM), and its API requests by verb (its own
   `z2m_api_requests_total`) against kubectl's (counted from its `-v=6` log).
   Once all are Ready, one more periodic re-check of every object is counted
   alone: a settled fleet's resync should list nothing and write nothing.
   `--fleet-runs` repeats it for medians; `--fleet-only` skips phase 1. The
   floor is one `kubectl apply --server-side` of all their rendered objects
   (with the credentials Secrets the operator would create), owned by real
   paused ScalingStages created beforehand (their creation is timed apart).
   The fleet is at stage 2 by default (two pods per object): three KWOK nodes
   hold 330 pods unless the cluster was started with more
   (`Z2M_NODE_PODS=800 hack/cluster.sh up` holds 1,000 stage-2 objects).
   If the operator does not converge within `--fleet-timeout`, the table says
   so and how many objects it got to.

The cycle stops early when `--budget` seconds would be exceeded. A stub
RabbitMQ management API on loopback answers "empty" so that demotions below
stage 4 may remove the queue (the pods are fake).

Medians and ratios only: the machine is small and shared.

    .venv/bin/python bench/operator_bench.py [--runs 7] [--fleet 100] [--fleet-stage 2]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import yaml
from kubernetes.client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from z2m import api, builders, kube, plan, status

REPO_ROOT = Path(__file__).resolve().parents[1]
Obj = dict[str, Any]
Key = tuple[str, str]
GROUP, VERSION, PLURAL = api.GROUP, api.VERSION, api.PLURAL
TICKS = os.sysconf("SC_CLK_TCK")
CYCLE = ((1, 4), (4, 5), (5, 2), (2, 1))
NAME = "shop"
WORKLOADS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))


# --- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Poll until `check` is true; the monotonic time it first was, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    return None


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def fmt(seconds: float | None) -> str:
    """Seconds for the table."""
    return "timeout" if seconds is None else f"{seconds:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    """The ratio a / b for the table."""
    return "-" if a is None or not b else f"{a / b:.1f}x"


class QuietStub(http.server.BaseHTTPRequestHandler):
    """A RabbitMQ management API whose every queue is empty.

    The pods are fake (KWOK), so there is no RabbitMQ; without an answer the
    operator (rightly) never removes the queue on a demotion below stage 4.
    """

    def do_GET(self) -> None:
        """Answer any queue lookup with zero messages."""
        body = json.dumps({"messages": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


@contextlib.contextmanager
def quiet_rabbitmq() -> Iterator[str]:
    """Serve `QuietStub` on loopback; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


# --- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    """The running local control plane, seen through kubectl and the Python client."""

    kubeconfig: str
    kubectl_bin: str
    client: ApiClient = field(init=False)
    k: kube.Kube = field(init=False)
    core: Any = field(init=False)
    custom: Any = field(init=False)
    namespaces: list[str] = field(default_factory=list)
    served: list[tuple[str, str]] = field(init=False)
    """Prunable kinds the apiserver serves, asked once.

    The operator asks on every listing; a kind that is not served (CloudNativePG's
    Cluster, here) makes the dynamic client refresh its whole discovery cache each
    time. The bench's own polling must not add that load.
    """

    def __post_init__(self) -> None:
        self.client = kube.load_config(self.kubeconfig)
        self.k = kube.Kube.connect(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.served = [p for p in sorted(builders.PRUNABLE) if self.k.has_kind(*p)]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl; raise with its stderr on failure."""
        done = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} ...: {done.stderr.strip()}")
        return done.stdout

    def kubectl_log(self, *args: str) -> str:
        """Run kubectl; its stderr (with -v=6, one line per request it sent)."""
        done = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} ...: {done.stderr[-2000:]}")
        return done.stderr

    def raw_list(
        self, api_version: str, kind: str, namespace: str, selector: str | None = None
    ) -> list[Obj]:
        """A namespaced LIST as plain JSON: no client models, so polling 1,000s stays cheap."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        query = [("labelSelector", selector)] if selector else []
        method, url, headers, _, _ = self.client.param_serialize(
            "GET",
            f"{base}/namespaces/{namespace}/{kind.lower()}s",
            query_params=query,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(method, url, header_params=headers)
        items: list[Obj] = json.loads(response.read())["items"]
        for item in items:
            item["apiVersion"], item["kind"] = api_version, kind
        return items

    def raw_children(self, namespace: str, selector: str) -> list[Obj]:
        """`children`, as plain JSON."""
        return [o for a, k in self.served for o in self.raw_list(a, k, namespace, selector)]

    def namespace(self, role: str) -> str:
        """Create a fresh namespace, remembered for clean-up."""
        name = f"bench-op-{role}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(
            {"metadata": {"name": name, "labels": {"z2m.dev/bench": "operator"}}}
        )
        self.namespaces.append(name)
        return name

    def delete_namespace(self, name: str, wait_pods: float = 0) -> None:
        """Delete a namespace; optionally wait (bounded) until its pods are gone."""
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespace(name)
        if wait_pods:
            wait_for(lambda: not self.core.list_namespaced_pod(name, limit=1).items, wait_pods, 0.5)

    def scaling_stage(self, namespace: str, name: str) -> Obj:
        """A ScalingStage as a dict."""
        obj: Obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return obj

    def scaling_stages(self, namespace: str) -> list[Obj]:
        """Every ScalingStage in a namespace."""
        items: list[Obj] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        return items

    def children(self, namespace: str, selector: str) -> list[Obj]:
        """Prunable objects matching a label selector (the kinds the operator lists)."""
        found: list[Obj] = []
        for api_version, kind in self.served:
            listing = self.k.client.resources.get(api_version=api_version, kind=kind).get(
                namespace=namespace, label_selector=selector
            )
            for item in listing.to_dict()["items"]:
                item["apiVersion"], item["kind"] = api_version, kind
                found.append(item)
        return found

    def workloads(self, namespace: str, selector: str) -> list[Obj]:
        """Deployments and StatefulSets matching a label selector."""
        found: list[Obj] = []
        for api_version, kind in WORKLOADS:
            listing = self.k.client.resources.get(api_version=api_version, kind=kind).get(
                namespace=namespace, label_selector=selector
            )
            for item in listing.to_dict()["items"]:
                item["kind"] = kind
                found.append(item)
        return found


def keys(objs: list[Obj]) -> set[Key]:
    """(kind, name) of the prunable objects among `objs`."""
    return {
        (o["kind"], o["metadata"]["name"])
        for o in objs
        if (o["apiVersion"], o["kind"]) in builders.PRUNABLE
    }


def by_owner(objs: list[Obj]) -> dict[str, set[Key]]:
    """Children grouped by their owner label."""
    out: dict[str, set[Key]] = {}
    for o in objs:
        owner = (o["metadata"].get("labels") or {}).get(builders.PART_OF, "")
        out.setdefault(owner, set()).add((o["kind"], o["metadata"]["name"]))
    return out


def all_available(workloads: list[Obj]) -> bool:
    """Whether every workload is available by the operator's own criterion."""
    return all((s := status.component_status(w)) is None or s.available for w in workloads)


# --- what gets applied ----------------------------------------------------------------------


def base_spec(management_url: str) -> Obj:
    """examples/shop.yaml's spec, with the queue's depth read from the quiet stub."""
    with (REPO_ROOT / "examples" / "shop.yaml").open() as f:
        doc = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == api.KIND)
    spec: Obj = dict(doc["spec"])
    spec["queue"] = {"managementUrl": management_url}
    return spec


def stage_body(name: str, spec: Obj, stage: int, paused: bool = False) -> Obj:
    """A ScalingStage manifest; the floor's are paused.

    Paused, because the operator's periodic re-check lists ScalingStages in every
    namespace, not only the ones it was started with: without it the operator
    converges the floor's namespace back to the floor object's stage every 30 s.
    """
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {**spec, "stage": stage, **({"paused": True} if paused else {})},
    }


def credentials(namespace: str, owner: str) -> Obj:
    """The Secret the operator creates once per ScalingStage (fixed values here)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": builders.secret_name(owner),
            "namespace": namespace,
            "labels": {**builders.labels(owner, "credentials"), builders.RETAINED: "true"},
        },
        "data": {
            k: base64.b64encode(b"bench-" + k.encode()).decode() for k in builders.SECRET_KEYS
        },
    }


def render(spec: Obj, stage: int, namespace: str, name: str, uid: str) -> list[Obj]:
    """Exactly what the operator builds for this spec."""
    model = api.ScalingStageSpec.model_validate({**spec, "stage": stage})
    the_plan = plan.resolve(model, name=name, namespace=namespace)
    return builders.build(the_plan, builders.Owner(name=name, uid=uid))


def write_yaml(path: Path, objs: list[Obj]) -> Path:
    """Objects as one multi-document YAML file."""
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return path


def resource_arg(obj: Obj) -> str:
    """The `kind.group/name` kubectl takes for an object."""
    group = obj["apiVersion"].rpartition("/")[0]
    kind = obj["kind"].lower()
    return (
        f"{kind}.{group}/{obj['metadata']['name']}"
        if group
        else f"{kind}/{obj['metadata']['name']}"
    )


# --- the operator process -------------------------------------------------------------------


class Operator:
    """`z2m run` as a child process, with /proc and /metrics readings."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path, **env: str) -> None:
        self.health, self.metrics_port = free_port(), free_port()
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                str(REPO_ROOT / ".venv" / "bin" / "z2m"),
                "run",
                "--kubeconfig",
                kubeconfig,
                "--namespace",
                namespace,
                "--bind",
                "127.0.0.1",
                "--health-port",
                str(self.health),
                "--metrics-port",
                str(self.metrics_port),
            ],
            # Only the queue's quiet period is shortened (from 15 s): it is a deliberate
            # safety wait, not work, and the stub already answers "empty". All else default.
            env={**os.environ, "Z2M_QUEUE_QUIET_SECONDS": "0", **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds until Kopf's liveness endpoint answers 200."""
        t0 = time.monotonic()

        def ok() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"z2m run exited; see {self.log}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.health}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        if wait_for(ok, timeout, 0.2) is None:
            raise TimeoutError(f"z2m run not healthy within {timeout} s; see {self.log}")
        return time.monotonic() - t0

    def _proc(self, name: str) -> str:
        return Path(f"/proc/{self.process.pid}/{name}").read_text()

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds of the process so far (all threads)."""
        fields = self._proc("stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def memory_mib(self, field_name: str) -> float:
        """A memory line of /proc/<pid>/status (VmRSS, VmHWM) in MiB."""
        for line in self._proc("status").splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metrics(self) -> dict[str, float]:
        """The operator's own counters, summed per name and label set we care about."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "z2m_reconciles_total":
                    out[f"passes_{s.labels['outcome']}"] = s.value
                elif s.name == "z2m_writes_total":
                    verb, kind = s.labels["verb"], s.labels["kind"]
                    out[f"writes_{verb}"] = out.get(f"writes_{verb}", 0.0) + s.value
                    out[f"writes_{verb}_{kind}"] = s.value
                elif s.name in ("z2m_reconcile_duration_seconds_sum",):
                    out["pass_seconds"] = s.value
                elif s.name == "z2m_reconcile_errors_total":
                    out["errors"] = out.get("errors", 0.0) + s.value
                elif s.name == "z2m_api_requests_total":
                    verb = s.labels["verb"]
                    out[f"api_{verb}"] = out.get(f"api_{verb}", 0.0) + s.value
        out["passes"] = sum(v for k, v in out.items() if k.startswith("passes_"))
        return out

    def stop(self) -> None:
        """Stop gracefully (SIGINT, as Ctrl-C), then harder."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counter differences."""
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


# --- phase 1: stage changes -----------------------------------------------------------------


@dataclass
class Change:
    """Timings of one kind of stage change, operator and floor."""

    op_applied: list[float] = field(default_factory=list)
    op_ready: list[float] = field(default_factory=list)
    floor_applied: list[float] = field(default_factory=list)
    floor_ready: list[float] = field(default_factory=list)
    passes: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    timeouts: int = 0


def operator_change(
    cluster: Cluster, namespace: str, spec: Obj, stage: int, uid: str, timeout: float
) -> tuple[float | None, float | None]:
    """Patch spec.stage; seconds until applied and until Ready."""
    want = keys(render(spec, stage, namespace, NAME, uid))
    selector = builders.child_selector(NAME)
    t0 = time.monotonic()
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"stage": stage}}
    )

    def caught_up(need_ready: bool) -> Callable[[], bool]:
        def check() -> bool:
            obj = cluster.scaling_stage(namespace, NAME)
            st = obj.get("status") or {}
            if st.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
            if need_ready and (st.get("ready") != "True" or st.get("stage") != stage):
                return False
            return keys(cluster.children(namespace, selector)) == want

        return check

    applied = wait_for(caught_up(False), timeout, 0.05)
    if applied is None:
        return None, None
    ready = wait_for(caught_up(True), timeout, 0.05)
    return applied - t0, None if ready is None else ready - t0


def floor_change(
    cluster: Cluster,
    namespace: str,
    spec: Obj,
    before: int,
    stage: int,
    uid: str,
    tmp: Path,
    timeout: float,
) -> tuple[float, float | None]:
    """Apply stage `stage` over `before` with kubectl, delete what it drops; applied, Ready."""
    new = render(spec, stage, namespace, NAME, uid)
    gone = keys(render(spec, before, namespace, NAME, uid)) - keys(new)
    old_objs = [
        o
        for o in render(spec, before, namespace, NAME, uid)
        if (o["kind"], o["metadata"]["name"]) in gone
    ]
    path = write_yaml(tmp / f"floor-{stage}.yaml", new)
    selector = builders.child_selector(NAME)
    t0 = time.monotonic()
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", str(path)
    )
    if old_objs:
        # Background deletion without kubectl's own wait loop, as the operator deletes;
        # then the same "applied" test as the operator's: the children are the new set.
        cluster.kubectl("delete", "--wait=false", "-n", namespace, *map(resource_arg, old_objs))
    want = keys(new)
    done = wait_for(lambda: keys(cluster.children(namespace, selector)) == want, timeout, 0.05)
    applied = (done or time.monotonic()) - t0
    ready = wait_for(lambda: all_available(cluster.workloads(namespace, selector)), timeout, 0.05)
    return applied, None if ready is None else ready - t0


def stage_changes(
    cluster: Cluster, spec: Obj, runs: int, tmp: Path, deadline: float
) -> tuple[dict[tuple[int, int], Change], Obj]:
    """Phase 1; returns timings per change and notes about the operator."""
    op_ns, floor_ns = cluster.namespace("changes"), cluster.namespace("changes-floor")
    operator = Operator(cluster.kubeconfig, op_ns, tmp / "operator-changes.log")
    notes: Obj = {"log": str(operator.log)}
    try:
        notes["startup_s"] = operator.wait_healthy()
        start = CYCLE[0][0]
        # The operator's object, created at the cycle's start and left to settle.
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, op_ns, PLURAL, stage_body(NAME, spec, start)
        )
        op_uid = cluster.scaling_stage(op_ns, NAME)["metadata"]["uid"]
        t0 = time.monotonic()

        def settled() -> bool:
            st = cluster.scaling_stage(op_ns, NAME).get("status") or {}
            return st.get("ready") == "True" and st.get("stage") == start

        if wait_for(settled, 90, 0.1) is None:
            raise TimeoutError("the operator did not make the first ScalingStage Ready")
        notes["create_ready_s"] = time.monotonic() - t0
        # The floor's owner: a real ScalingStage nobody reconciles, for its uid.
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, floor_ns, PLURAL, stage_body(NAME, spec, start, paused=True)
        )
        floor_uid = cluster.scaling_stage(floor_ns, NAME)["metadata"]["uid"]
        first = [credentials(floor_ns, NAME), *render(spec, start, floor_ns, NAME, floor_uid)]
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=bench",
            "-f",
            str(write_yaml(tmp / "floor-start.yaml", first)),
        )
        selector = builders.child_selector(NAME)
        wait_for(lambda: all_available(cluster.workloads(floor_ns, selector)), 60, 0.2)

        results = {c: Change() for c in CYCLE}
        for run in range(runs):
            if time.monotonic() > deadline:
                print(f"  time budget reached after {run} runs", flush=True)
                break
            for before, after in CYCLE:
                r = results[(before, after)]
                m0 = operator.metrics()
                op_applied, op_ready = operator_change(cluster, op_ns, spec, after, op_uid, 60)
                if op_ready is None:
                    r.timeouts += 1
                    raise TimeoutError(f"operator: {before} -> {after} not Ready within 60 s")
                # Let trailing passes (child events after Ready) finish before counting.
                time.sleep(0.5)
                m = delta(operator.metrics(), m0)
                fl_applied, fl_ready = floor_change(
                    cluster, floor_ns, spec, before, after, floor_uid, tmp, 60
                )
                r.op_applied.append(op_applied or 0.0)
                r.op_ready.append(op_ready)
                r.floor_applied.append(fl_applied)
                if fl_ready is not None:
                    r.floor_ready.append(fl_ready)
                r.passes.append(m.get("passes", 0.0))
                r.writes.append(m.get("writes_apply", 0.0) + m.get("writes_delete", 0.0))
                print(
                    f"  run {run + 1} {before}->{after}: operator applied {fmt(op_applied)}, "
                    f"Ready {fmt(op_ready)} ({m.get('passes', 0):.0f} passes); "
                    f"floor applied {fmt(fl_applied)}, Ready {fmt(fl_ready)}",
                    flush=True,
                )
        notes["idle"] = idle_probe(cluster, operator, op_ns)
        notes["children_ms"] = children_probe(cluster, op_ns)
        notes["cpu_s"] = operator.cpu_seconds()
        notes["hwm_mib"] = operator.memory_mib("VmHWM")
        notes["metrics"] = operator.metrics()
        return results, notes
    finally:
        operator.stop()
        notes["errors_in_log"] = count_errors(operator.log)


def idle_probe(cluster: Cluster, operator: Operator, namespace: str, touches: int = 3) -> Obj:
    """Trigger passes with nothing to change (annotation edits); count what they write."""
    selector = builders.child_selector(NAME)
    time.sleep(1.0)

    def versions() -> dict[Key, str]:
        return {
            (o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for o in cluster.children(namespace, selector)
        }

    def events() -> int:
        return len(cluster.core.list_namespaced_event(namespace).items)

    children_before, events_before, m0 = versions(), events(), operator.metrics()
    status_writes = 0
    for i in range(touches):
        patched = cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, NAME,
            {"metadata": {"annotations": {"z2m.dev/bench-touch": str(i)}}},
        )  # fmt: skip
        rv = patched["metadata"]["resourceVersion"]
        time.sleep(1.5)
        if cluster.scaling_stage(namespace, NAME)["metadata"]["resourceVersion"] != rv:
            status_writes += 1
    m = delta(operator.metrics(), m0)
    after = versions()
    return {
        "touches": touches,
        "passes": m.get("passes", 0.0),
        "pass_seconds": m.get("pass_seconds", 0.0),
        "changed_passes": m.get("passes_changed", 0.0),
        "children_rewritten": sum(1 for k, v in after.items() if children_before.get(k) != v),
        "scalingstage_rewritten": status_writes,
        "events": events() - events_before,
        "writes_by_kind": ", ".join(
            f"{k.removeprefix('writes_')} {v:.0f}"
            for k, v in sorted(m.items())
            if k.count("_") == 2 and k.startswith("writes_") and v
        ),
    }


def children_probe(cluster: Cluster, namespace: str, repeats: int = 5) -> tuple[float, float]:
    """Median ms of the operator's own `Kube.children`, as shipped and without unserved kinds.

    Run in this process against a fresh client; it shows what one listing costs
    when a kind the apiserver does not serve (CloudNativePG's Cluster) is asked
    for on every call, which makes the dynamic client re-read discovery.
    """
    k = kube.Kube.connect(kube.load_config(cluster.kubeconfig))
    k.children(namespace, NAME)

    def timed() -> float:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            k.children(namespace, NAME)
            samples.append(1000 * (time.perf_counter() - t0))
        return statistics.median(samples)

    shipped = timed()
    original = builders.PRUNABLE
    builders.PRUNABLE = set(cluster.served)
    try:
        k.children(namespace, NAME)
        served_only = timed()
    finally:
        builders.PRUNABLE = original
    return shipped, served_only


def count_errors(log: Path) -> int:
    """Tracebacks and ERROR lines in the operator's log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "Traceback" in line or "[ERROR" in line)


# --- phase 2: a fleet -----------------------------------------------------------------------


@dataclass
class Fleet:
    """Timings and costs of creating many ScalingStages at once (one run)."""

    count: int
    stage: int
    objects: int = 0
    op_applied: float | None = None
    op_ready: float | None = None
    floor_crs: float = 0.0
    floor_applied: float = 0.0
    floor_ready: float | None = None
    floor_requests: dict[str, int] = field(default_factory=dict)
    applied_count: int = 0
    ready_count: int = 0
    timeout: float = 0.0
    cpu_s: float = 0.0
    cpu_s_to_applied: float | None = None
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    hwm_mib: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    resync: dict[str, float] = field(default_factory=dict)
    errors_in_log: int = 0


# kubectl -v=6: `"Response" verb="PATCH" url=...` (older: `] PATCH https://...`).
REQUEST_LINE = re.compile(r'(?:verb="|\] )(GET|POST|PUT|PATCH|DELETE)(?:" url=| https?://)')


def kubectl_requests(stderr: str) -> dict[str, int]:
    """Requests kubectl sent, by verb, from its `-v=6` log."""
    out: dict[str, int] = {}
    for match in REQUEST_LINE.finditer(stderr):
        out[match.group(1)] = out.get(match.group(1), 0) + 1
    return out


def fleet(
    cluster: Cluster,
    spec: Obj,
    count: int,
    stage: int,
    tmp: Path,
    timeout: float,
    resync_seconds: float = 30.0,
) -> Fleet:
    """Phase 2: the operator, then the floor (with the operator's namespace gone first)."""
    out = Fleet(count, stage, timeout=timeout)
    names = [f"s{i:04d}" for i in range(count)]
    crs = write_yaml(tmp / "fleet-crs.yaml", [stage_body(n, spec, stage) for n in names])
    paused = write_yaml(
        tmp / "fleet-floor-crs.yaml", [stage_body(n, spec, stage, paused=True) for n in names]
    )
    per_stage = render(spec, stage, "x", "x", "x")
    out.objects = count * (len(per_stage) + 1)  # + the credentials Secret
    poll = max(1.0, count / 200)  # the bench's own listings must not load the apiserver

    op_ns = cluster.namespace("fleet")
    operator = Operator(
        cluster.kubeconfig,
        op_ns,
        tmp / "operator-fleet.log",
        Z2M_RESYNC_SECONDS=f"{resync_seconds:g}",
    )
    try:
        operator.wait_healthy()
        time.sleep(1.0)  # let the initial (empty) listing settle
        cpu0, out.rss_start_mib = operator.cpu_seconds(), operator.memory_mib("VmRSS")
        m0 = operator.metrics()
        t0 = time.monotonic()
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=bench", "-n", op_ns, "-f", str(crs)
        )

        wanted = {n: keys(render(spec, stage, op_ns, n, "x")) for n in names}
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            items = cluster.raw_list(f"{GROUP}/{VERSION}", api.KIND, op_ns)
            out.ready_count = sum(
                1 for i in items if (i.get("status") or {}).get("ready") == "True"
            )
            if out.op_applied is None:
                have = by_owner(cluster.raw_children(op_ns, f"{builders.MANAGED_BY}=z2m"))
                out.applied_count = sum(
                    1
                    for i in items
                    if (i.get("status") or {}).get("observedGeneration")
                    == i["metadata"]["generation"]
                    and have.get(i["metadata"]["name"]) == wanted[i["metadata"]["name"]]
                )
                if out.applied_count == count:
                    out.op_applied = now - t0
                    out.cpu_s_to_applied = operator.cpu_seconds() - cpu0
            if out.ready_count == count and out.op_applied is not None:
                out.op_ready = now - t0
                break
            time.sleep(poll)
        out.cpu_s = operator.cpu_seconds() - cpu0
        out.hwm_mib = operator.memory_mib("VmHWM")
        out.metrics = delta(operator.metrics(), m0)
        if out.op_ready is not None:
            # Settled: one more round of periodic re-checks of every object, counted alone.
            before = operator.metrics()
            c0 = operator.cpu_seconds()
            target = before.get("passes", 0.0) + count
            wait_for(lambda: operator.metrics().get("passes", 0.0) >= target, 3 * resync_seconds, 1)
            out.resync = delta(operator.metrics(), before)
            out.resync["cpu_s"] = operator.cpu_seconds() - c0
        out.rss_end_mib = operator.memory_mib("VmRSS")
        print(
            f"  operator: applied {fmt(out.op_applied)}, Ready {fmt(out.op_ready)} "
            f"({out.applied_count}/{count} applied, {out.ready_count}/{count} Ready), "
            f"{out.cpu_s:.1f} CPU s, peak RSS {out.hwm_mib:.0f} MiB, "
            f"requests {requests_text(out.metrics)}",
            flush=True,
        )
    finally:
        operator.stop()
        out.errors_in_log = count_errors(operator.log)
    cluster.delete_namespace(op_ns)
    floor_ns = cluster.namespace("fleet-floor")
    t0 = time.monotonic()
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=bench", "-n", floor_ns, "-f", str(paused)
    )
    out.floor_crs = time.monotonic() - t0
    # KWOK nodes hold a fixed number of pods: free the operator's before the floor makes its own.
    t0 = time.monotonic()
    wait_for(lambda: not cluster.core.list_namespaced_pod(op_ns, limit=1).items, 300, 0.5)
    print(f"  (operator's pods gone after {time.monotonic() - t0:.0f} s)", flush=True)
    uids = {
        i["metadata"]["name"]: i["metadata"]["uid"]
        for i in cluster.raw_list(f"{GROUP}/{VERSION}", api.KIND, floor_ns)
    }
    objs: list[Obj] = []
    for n in names:
        objs += [credentials(floor_ns, n), *render(spec, stage, floor_ns, n, uids[n])]
    path = write_yaml(tmp / "fleet-floor.yaml", objs)
    t0 = time.monotonic()
    log = cluster.kubectl_log(
        "apply", "--server-side", "--field-manager=bench", "-v=6", "-f", str(path)
    )
    out.floor_applied = time.monotonic() - t0
    out.floor_requests = kubectl_requests(log)
    selector = f"{builders.MANAGED_BY}=z2m"
    t_ready = wait_for(
        lambda: all_available(
            [w for a, k in WORKLOADS for w in cluster.raw_list(a, k, floor_ns, selector)]
        ),
        timeout,
        poll,
    )
    out.floor_ready = None if t_ready is None else t_ready - t0
    print(
        f"  floor: CRs {fmt(out.floor_crs)}, applied {fmt(out.floor_applied)}, "
        f"Ready {fmt(out.floor_ready)}, requests {out.floor_requests}",
        flush=True,
    )
    cluster.delete_namespace(floor_ns)
    wait_for(lambda: not cluster.core.list_namespaced_pod(floor_ns, limit=1).items, 300, 0.5)
    return out


def requests_text(m: dict[str, float]) -> str:
    """The operator's API requests by verb, from its own counter."""
    verbs = sorted(k.removeprefix("api_") for k in m if k.startswith("api_") and m[k])
    return ", ".join(f"{v} {m['api_' + v]:.0f}" for v in verbs) or "none"


# --- the report -----------------------------------------------------------------------------


def mean_pass(m: dict[str, float]) -> float:
    """Mean seconds per reconcile pass."""
    return m.get("pass_seconds", 0.0) / m["passes"] if m.get("passes") else 0.0


def floor_text(requests: dict[str, int]) -> str:
    """The floor's requests (kubectl's) by verb."""
    return ", ".join(f"{k} {v}" for k, v in sorted(requests.items())) or "none"


def fleet_report(runs: list[Fleet]) -> list[str]:
    """The fleet table (medians over `runs`), as Markdown lines."""
    fl = runs[0]

    def med(get: Callable[[Fleet], float | None]) -> float | None:
        return median([v for r in runs if (v := get(r)) is not None])

    def per(get: Callable[[Fleet], float]) -> str:
        value = med(get)
        return "-" if value is None else f"{value / fl.count:.1f}"

    oa, fa = med(lambda r: r.op_applied), med(lambda r: r.floor_applied)
    orr, fr = med(lambda r: r.op_ready), med(lambda r: r.floor_ready)
    op_requests = med(lambda r: sum(v for k, v in r.metrics.items() if k.startswith("api_")))
    floor_requests = med(lambda r: float(sum(r.floor_requests.values())))
    lines = [
        "",
        f"Fleet: {fl.count} ScalingStages at stage {fl.stage} created at once "
        f"({fl.objects} objects; median of {len(runs)} run(s))",
        "",
        "| | operator | floor | ratio |",
        "|---|---|---|---|",
        f"| all applied | {fmt(oa)} | {fmt(fa)} | {ratio(oa, fa)} |",
        f"| all Ready | {fmt(orr)} | {fmt(fr)} | {ratio(orr, fr)} |",
        f"| API requests per ScalingStage | {per(lambda r: op_requests or 0)} "
        f"| {per(lambda r: floor_requests or 0)} | {ratio(op_requests, floor_requests)} |",
        "",
    ]
    for i, r in enumerate(runs, 1):
        m, idle = r.metrics, r.resync
        lines += [
            f"Run {i}: operator {r.applied_count}/{r.count} applied, {r.ready_count}/{r.count} "
            f"Ready (timeout {r.timeout:.0f} s); creating the ScalingStages themselves took "
            f"{fmt(r.floor_crs)} (inside the operator's time, outside the floor's).",
            f"  operator process: {r.cpu_s:.1f} CPU s "
            f"({'-' if r.cpu_s_to_applied is None else f'{r.cpu_s_to_applied:.1f}'} until all "
            f"applied); RSS {r.rss_start_mib:.0f} MiB before, {r.rss_end_mib:.0f} MiB after, "
            f"peak (VmHWM) {r.hwm_mib:.0f} MiB; {m.get('passes', 0):.0f} passes "
            f"({m.get('pass_seconds', 0):.1f} s inside passes), "
            f"{m.get('writes_apply', 0):.0f} applies that changed something, "
            f"{m.get('errors', 0):.0f} failed passes, {r.errors_in_log} error lines in its log.",
            f"  operator requests by verb: {requests_text(m)}; "
            f"kubectl's (floor): {floor_text(r.floor_requests)}.",
        ]
        if idle:
            lines.append(
                f"  settled, one periodic re-check of every object: {idle.get('passes', 0):.0f} "
                f"passes, requests {requests_text(idle)}, {idle.get('cpu_s', 0):.1f} CPU s."
            )
    return lines


def report(
    spec: Obj, results: dict[tuple[int, int], Change], notes: Obj, fleets: list[Fleet]
) -> str:
    """The tables, as Markdown."""
    lines: list[str] = []
    if results:
        runs = len(next(iter(results.values())).op_applied)
        lines += [
            f"Stage changes (one ScalingStage, examples/shop.yaml; median of {runs} runs)",
            "",
            "| change | objects | operator applied | floor applied | ratio "
            "| operator Ready | floor Ready | ratio | passes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for (a, b), r in results.items():
        n = len(render(spec, b, "x", NAME, "x"))
        oa, fa = median(r.op_applied), median(r.floor_applied)
        orr, fr = median(r.op_ready), median(r.floor_ready)
        lines.append(
            f"| {a} -> {b} | {n} | {fmt(oa)} | {fmt(fa)} | {ratio(oa, fa)} | {fmt(orr)} "
            f"| {fmt(fr)} | {ratio(orr, fr)} | {median(r.passes) or 0:.0f} |"
        )
    if fleets:
        lines += fleet_report(fleets)
    if not results:
        return "\n".join(lines)
    idle = notes.get("idle") or {}
    lines += [
        "",
        f"Operator (stage-change phase): start-up to healthy {notes.get('startup_s', 0):.1f} s; "
        f"first ScalingStage created to Ready {notes.get('create_ready_s', 0):.1f} s; "
        f"{notes.get('cpu_s', 0):.1f} CPU s, peak RSS {notes.get('hwm_mib', 0):.0f} MiB; "
        f"{notes.get('errors_in_log', 0)} error lines in its log; "
        f"{notes.get('metrics', {}).get('passes', 0):.0f} passes, "
        f"{notes.get('metrics', {}).get('errors', 0):.0f} failed, mean pass "
        f"{mean_pass(notes.get('metrics', {})):.2f} s.",
        f"No-op probe: {idle.get('touches', 0)} annotation edits on a settled ScalingStage "
        f"caused {idle.get('passes', 0):.0f} passes "
        f"({idle.get('pass_seconds', 0):.2f} s in total), "
        f"{idle.get('changed_passes', 0):.0f} of them writing, "
        f"{idle.get('children_rewritten', 0)} children rewritten, "
        f"{idle.get('scalingstage_rewritten', 0)} status writes, "
        f"{idle.get('events', 0)} events; writes the operator counted: "
        f"{idle.get('writes_by_kind') or 'none'}.",
        "One `Kube.children()` listing (bench process, median): "
        f"{notes.get('children_ms', (0, 0))[0]:.0f} ms as shipped, "
        f"{notes.get('children_ms', (0, 0))[1]:.0f} ms when only served kinds are asked for.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run both phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=str(REPO_ROOT / ".cluster" / "kubeconfig"))
    parser.add_argument("--runs", type=int, default=7, help="cycles of 1->4->5->2->1, at most")
    parser.add_argument("--fleet", type=int, default=100, help="ScalingStages in phase 2")
    parser.add_argument("--fleet-stage", type=int, default=2)
    parser.add_argument("--fleet-timeout", type=float, default=80)
    parser.add_argument("--fleet-runs", type=int, default=1, help="fleet runs (medians)")
    parser.add_argument("--fleet-only", action="store_true", help="skip phase 1")
    parser.add_argument("--budget", type=float, default=360, help="seconds; fewer runs if short")
    parser.add_argument("--keep", action="store_true", help="keep the namespaces and logs")
    args = parser.parse_args()

    started = time.monotonic()
    binaries = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-binaries.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    cluster = Cluster(args.kubeconfig, str(Path(binaries) / "kubectl"))
    cluster.kubectl("get", "crd", "scalingstages.z2m.dev")
    tmp = Path(tempfile.mkdtemp(prefix="z2m-operator-bench-"))
    fleets: list[Fleet] = []
    try:
        with quiet_rabbitmq() as url:
            spec = base_spec(url)
            results: dict[tuple[int, int], Change] = {}
            notes: Obj = {}
            if not args.fleet_only:
                print(f"phase 1: stage changes, {args.runs} runs of {CYCLE}", flush=True)
                # Phase 1 stops starting runs when the fleet would no longer fit the budget.
                reserve = (2 * args.fleet_timeout + 50) * args.fleet_runs if args.fleet else 0
                results, notes = stage_changes(
                    cluster, spec, args.runs, tmp, started + args.budget - reserve
                )
            for run in range(args.fleet_runs if args.fleet else 0):
                print(
                    f"phase 2, run {run + 1}: {args.fleet} ScalingStages at stage "
                    f"{args.fleet_stage}",
                    flush=True,
                )
                fleets.append(
                    fleet(cluster, spec, args.fleet, args.fleet_stage, tmp, args.fleet_timeout)
                )
        print()
        print(report(spec, results, notes, fleets))
        print(f"\n(total {time.monotonic() - started:.0f} s; logs in {tmp})")
    finally:
        if not args.keep:
            for ns in cluster.namespaces:
                cluster.delete_namespace(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
