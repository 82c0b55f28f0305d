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
`--rps` through the app's Service for the whole walk, and journals every failed
request, so each change also reports the requests that failed during it. One node
of two cores cannot hold two stage-5 stacks at once, so the operator's walk and the
floor's run one after the other, in the same run; medians over `--runs` pairs of
walks, and ratios. The floor applies the objects all at once and deletes at once:
no drain of the queue, no rewiring first; its failed requests and lost jobs are
the price of that.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

from tests.cluster.helpers import SMALL_APP
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


def lost_writes(cluster: Cluster, namespace: str) -> str:
    """Acknowledged writes (from the journal) that the primary does not hold."""
    acked = sorted({int(e["post"]) for e in journal(cluster, namespace) if "post" in e})
    sql = f"SELECT count(*) FROM posts WHERE id IN ({','.join(map(str, acked))})"
    stored = subprocess.run(
        [
            *(cluster.kubectl_bin, "--kubeconfig", cluster.kubeconfig, "exec", "-n", namespace),
            *(f"{NAME}-db-0", "--", "psql", "-U", "app", "-d", "app", "-tAc", sql),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{len(acked) - int(stored or 0)} of {len(acked)}"


def available(cluster: Cluster, namespace: str) -> bool:
    """Every Deployment and StatefulSet available by the operator's own criterion."""
    workloads = cluster.workloads(namespace, builders.child_selector(NAME))
    return all((s := status.component_status(w)) is None or s.available for w in workloads)


def walk(
    cluster: Cluster, args: argparse.Namespace, spec: Obj, by_hand: bool
) -> tuple[list[tuple[float, int]], str]:
    """One walk in a fresh namespace: (seconds to Ready, failed requests) per change."""
    namespace = cluster.namespace("floor" if by_hand else "operator")
    tmp = Path(tempfile.mkdtemp(prefix="z2m-bench-"))
    rows: list[tuple[float, int]] = []
    try:
        if by_hand:
            # The owner: a ScalingStage in a namespace no operator watches.
            owner = cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, stage_body(NAME, spec, WALK[0], paused=True)
            )
            uid = owner["metadata"]["uid"]
            cluster.core.create_namespaced_secret(namespace, credentials(namespace, NAME))
            floor_change(cluster, namespace, spec, WALK[0], WALK[0], uid, tmp, args.timeout)
            wait_for(lambda: available(cluster, namespace), args.timeout, 1)
        else:
            helm_install(cluster, namespace)
            cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, stage_body(NAME, spec, WALK[0])
            )
            wait_for(lambda: ready_at(cluster, namespace, WALK[0]), args.timeout, 1)
        cluster.core.create_namespaced_pod(namespace, load_pod(args.rps))
        wait_for(lambda: any("post" in e for e in journal(cluster, namespace)), 300, 2)
        for before, stage in itertools.pairwise(WALK):
            t0, w0 = time.monotonic(), time.time()
            if by_hand:
                _, ready = floor_change(
                    cluster, namespace, spec, before, stage, uid, tmp, args.timeout
                )
                seconds = ready if ready is not None else args.timeout
            else:
                cluster.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"stage": stage}}
                )
                done = wait_for(lambda s=stage: ready_at(cluster, namespace, s), args.timeout, 0.5)
                seconds = (done or time.monotonic()) - t0
            failed = failed_between(cluster, namespace, w0, time.time() + 5)
            rows.append((seconds, failed))
            who = "floor" if by_hand else "operator"
            print(f"{who} {before}->{stage}: {seconds:.1f} s, {failed} failed", flush=True)
        return rows, lost_writes(cluster, namespace)
    finally:
        if not by_hand:
            helm = str(Path(cluster.kubectl_bin).parent / "helm")
            subprocess.run(
                [
                    *(helm, "--kubeconfig", cluster.kubeconfig, "uninstall"),
                    *(f"z2m-{namespace}", "-n", namespace),
                ],
                capture_output=True,
                check=False,
            )
        cluster.delete_namespace(namespace, wait_pods=300)


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
    # Half the default app CPU request, so that stage 5 fits a small kind node.
    spec: Obj = {"app": SMALL_APP}
    ours: list[list[tuple[float, int]]] = []
    floor: list[list[tuple[float, int]]] = []
    lost: dict[str, list[str]] = {"operator": [], "floor": []}
    for _ in range(args.runs):
        rows, gone = walk(cluster, args, spec, by_hand=False)
        ours.append(rows)
        lost["operator"].append(gone)
        rows, gone = walk(cluster, args, spec, by_hand=True)
        floor.append(rows)
        lost["floor"].append(gone)
    print()
    steps = "->".join(map(str, WALK))
    print(f"Real pods, kind, {args.runs} walk(s) of {steps} each, load {args.rps} rps")
    print("| change | operator Ready | floor Ready | ratio | failed (operator) | failed (floor) |")
    print("|---|---|---|---|---|---|")
    for i, (before, stage) in enumerate(itertools.pairwise(WALK)):
        op = median([r[i][0] for r in ours])
        fl = median([r[i][0] for r in floor])
        op_f = median([float(r[i][1]) for r in ours]) or 0.0
        fl_f = median([float(r[i][1]) for r in floor]) or 0.0
        print(
            f"| {before}->{stage} | {fmt(op)} | {fmt(fl)} | {ratio(op, fl)} "
            f"| {op_f:.0f} | {fl_f:.0f} |"
        )
    print(f"acknowledged writes lost: operator {lost['operator']}, floor {lost['floor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
