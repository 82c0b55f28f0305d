"""Benchmark stage changes on real pods: the operator against the same objects applied by hand.

Not a test. It needs the kind cluster with our images loaded (`make bench-real` does
that, as `make images` does). Two fresh
namespaces, side by side in the same run:

- *operator*: z2m installed with its Helm chart, watching only that namespace; the
  stage is changed by patching `spec.stage`, and the change is done when the
  ScalingStage says Ready at the new stage;
- *floor*: the same rendered objects (same builders, same owner: a ScalingStage
  no operator watches) written with `kubectl apply --server-side`, then
  `kubectl delete` of what the new stage drops; done when every Deployment and
  StatefulSet is available by the operator's own criterion.

In each namespace a load generator pod sends the sample app's read-heavy mix at
`--rps` through the app's Service for the whole run, and journals every failed
request, so each change also reports the requests that failed during it. The
operator and the floor take turns, change by change, so they share the machine's
noise. Medians over `--runs` walks, and ratios.

    .venv/bin/python bench/real_pods_bench.py [--kubeconfig .kind/kubeconfig-z2m] [--runs 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_bench import (
    GROUP,
    NAME,
    PLURAL,
    REPO_ROOT,
    VERSION,
    Cluster,
    credentials,
    floor_change,
    fmt,
    median,
    ratio,
    stage_body,
    wait_for,
)

from z2m import builders, status

Obj = dict[str, Any]
WALK = (1, 2, 3, 4, 5, 4, 3, 2, 1)


def load_pod(rps: int) -> Obj:
    """The sample app's load generator, journaling each acknowledged write and each error."""
    args = ["python", "-m", "sample_app.load", "--url", f"http://{NAME}-app", "--rps", str(rps)]
    args += ["--duration", "86400", "--users", "5", "--read-ratio", "0.8", "--journal"]
    return {
        "metadata": {"name": "load"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "load",
                    "image": "z2m/sample-app:0.1.0",
                    "imagePullPolicy": "IfNotPresent",
                    "command": args,
                }
            ],
        },
    }


def journal(cluster: Cluster, namespace: str) -> list[Obj]:
    """The load pod's journal lines."""
    out = subprocess.run(
        [cluster.kubectl_bin, "--kubeconfig", cluster.kubeconfig, "logs", "-n", namespace, "load"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def failed_between(cluster: Cluster, namespace: str, start: float, end: float) -> int:
    """Requests that failed in [start, end] (wall-clock, as the journal stamps them)."""
    return len([e for e in journal(cluster, namespace) if "error" in e and start <= e["t"] <= end])


def ready_at(cluster: Cluster, namespace: str, stage: int) -> bool:
    """Whether the ScalingStage is Ready at `stage` for its current generation."""
    obj = cluster.scaling_stage(namespace, NAME)
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
    return bool(
        st.get("stage") == stage
        and st.get("observedGeneration") == obj["metadata"]["generation"]
        and ready
        and ready["status"] == "True"
    )


def helm_install(cluster: Cluster, namespace: str) -> None:
    """z2m from its chart, watching only `namespace`."""
    helm = str(Path(cluster.kubectl_bin).parent / "helm")
    subprocess.run(
        [
            *(helm, "--kubeconfig", cluster.kubeconfig, "install", f"z2m-{namespace}"),
            *(str(REPO_ROOT / "charts" / "z2m"), "-n", namespace, "--skip-crds", "--wait"),
            *("--set", f"watchNamespaces={{{namespace}}}"),
            *("--set", f"appNamespaces={{{namespace}}}"),
            *("--set", f"fullnameOverride=z2m-{namespace}"),
        ],
        check=True,
        capture_output=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=str(REPO_ROOT / ".kind" / "kubeconfig-z2m"))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rps", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    kubectl_bin = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-binaries.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    cluster = Cluster(args.kubeconfig, f"{kubectl_bin}/kubectl")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    spec: Obj = {}
    op_ns, floor_ns = cluster.namespace("real"), cluster.namespace("floor")
    tmp = Path(tempfile.mkdtemp(prefix="z2m-bench-"))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        helm_install(cluster, op_ns)
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, op_ns, PLURAL, stage_body(NAME, spec, WALK[0])
        )
        # The floor's owner: a ScalingStage in a namespace no operator watches.
        owner = cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, floor_ns, PLURAL, stage_body(NAME, spec, WALK[0], paused=True)
        )
        uid = owner["metadata"]["uid"]
        cluster.core.create_namespaced_secret(floor_ns, credentials(floor_ns, NAME))
        floor_change(cluster, floor_ns, spec, WALK[0], WALK[0], uid, tmp, args.timeout)
        selector = builders.child_selector(NAME)
        wait_for(lambda: ready_at(cluster, op_ns, WALK[0]), args.timeout, 1)
        wait_for(
            lambda: all(
                (s := status.component_status(w)) is None or s.available
                for w in cluster.workloads(floor_ns, selector)
            ),
            args.timeout,
            1,
        )
        for ns in (op_ns, floor_ns):
            cluster.core.create_namespaced_pod(ns, load_pod(args.rps))
            wait_for(lambda n=ns: any("post" in e for e in journal(cluster, n)), 300, 2)
        for _ in range(args.runs):
            for before, stage in itertools.pairwise(WALK):
                label = f"{before}->{stage}"
                row = results.setdefault(label, {k: [] for k in ("op", "floor", "op_f", "fl_f")})
                t0, w0 = time.monotonic(), time.time()
                cluster.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, op_ns, PLURAL, NAME, {"spec": {"stage": stage}}
                )
                done = wait_for(lambda s=stage: ready_at(cluster, op_ns, s), args.timeout, 0.5)
                row["op"].append((done or time.monotonic()) - t0)
                row["op_f"].append(failed_between(cluster, op_ns, w0, time.time() + 5))
                w1 = time.time()
                _, ready = floor_change(
                    cluster, floor_ns, spec, before, stage, uid, tmp, args.timeout
                )
                row["floor"].append(ready if ready is not None else args.timeout)
                row["fl_f"].append(failed_between(cluster, floor_ns, w1, time.time() + 5))
                print(
                    f"{label}: operator {row['op'][-1]:.1f} s, {row['op_f'][-1]} failed; "
                    f"floor {row['floor'][-1]:.1f} s, {row['fl_f'][-1]} failed",
                    flush=True,
                )
        lost = {}
        for ns in (op_ns, floor_ns):
            acked = {int(e["post"]) for e in journal(cluster, ns) if "post" in e}
            pod = f"{NAME}-db-0"
            sql = f"SELECT count(*) FROM posts WHERE id IN ({','.join(map(str, sorted(acked)))})"
            stored = subprocess.run(
                [
                    *(cluster.kubectl_bin, "--kubeconfig", cluster.kubeconfig, "exec"),
                    *("-n", ns, pod, "--", "psql", "-U", "app", "-d", "app", "-tAc", sql),
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            lost[ns] = f"{len(acked) - int(stored or 0)} of {len(acked)}"
    finally:
        helm = str(Path(cluster.kubectl_bin).parent / "helm")
        subprocess.run(
            [helm, "--kubeconfig", cluster.kubeconfig, "uninstall", f"z2m-{op_ns}", "-n", op_ns],
            capture_output=True,
            check=False,
        )
        for ns in (op_ns, floor_ns):
            cluster.delete_namespace(ns)
    print()
    walk = "->".join(map(str, WALK))
    print(f"Real pods, kind, {args.runs} walk(s) of {walk}, load {args.rps} rps")
    print("| change | operator Ready | floor Ready | ratio | failed (operator) | failed (floor) |")
    print("|---|---|---|---|---|---|")
    for label, row in results.items():
        print(
            f"| {label} | {fmt(median(row['op']))} | {fmt(median(row['floor']))} "
            f"| {ratio(median(row['op']), median(row['floor']))} "
            f"| {median(row['op_f']):.0f} | {median(row['fl_f']):.0f} |"
        )
    print(f"acknowledged writes lost: operator {lost[op_ns]}, floor {lost[floor_ns]}")
    return 0


if __name__ == "__main__":
    kubernetes.client.rest.logger.setLevel("WARNING")
    sys.exit(main())
