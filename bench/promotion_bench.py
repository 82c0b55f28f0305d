"""Benchmark auto-promotion: reaction time, and the promotion loop's cost at fleet scale.

Not a test. It brings up its own local control plane (hack/cluster.sh with
its own state directory, or the one Z2M_CLUSTER_DIR and Z2M_CLUSTER_NAME
name), a real Prometheus scraping an exporter with the sample app's metric
names (tests/prometheus.py), and runs `z2m run` as a separate process so its
CPU and memory can be read from /proc.

1. Reaction: an object at stage 1 in auto mode with a promote window of W
   seconds (`--window`, `--reaction-interval`, `--reaction-tick`); the exporter's
   load jumps far over the stage's band at t0; the time until spec.stage is 2 is
   the reaction. Median of `--runs`, and its ratio to W (the floor is W plus the
   rate() rise and the wait for the first tick whose grouped reading shows the
   breach: the load starts just after a tick, so nearly a whole tick).
2. Cost: `--objects` ScalingStages, each its own scrape target (every 5 s). The
   promotion loop (`promote.run_forever`, the code the operator runs) in its
   own process, so that its CPU (percent of one core) and resident memory are
   its own and the reconciler's work on the objects' children does not drown
   it. It takes the ScalingStages from a watch, as the operator takes them from
   Kopf's index. Sampled every 10 s, first with every object `manual`, then with
   every object in `recommend` mode evaluating every `--interval` s: the loop as
   shipped (one grouped query per signal for all the objects due in a tick) and,
   unless `--skip-per-object`, the loop asking each object's queries alone (as
   before grouping; the bench switches grouping off). CPU per evaluation is the
   process's CPU seconds (/proc) over the sample divided by its evaluations.
   The Prometheus queries per evaluation and per tick are counted by the loop
   (`z2m_prometheus_queries_total`) and by Prometheus itself.

    .venv/bin/python bench/promotion_bench.py [--objects 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import kubernetes  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests import prometheus as prom  # noqa: E402
from tests.services import free_port  # noqa: E402
from z2m import api, kube  # noqa: E402

GROUP, VERSION, PLURAL = api.GROUP, api.VERSION, api.PLURAL
TICKS = os.sysconf("SC_CLK_TCK")
TICK = 5.0  # the promotion loop's default Z2M_PROMOTION_TICK


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_value = check()
        if with_value:
            return with_value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout} s")


class Cluster:
    """The local control plane, in its own state directory."""

    def __init__(self, state: Path) -> None:
        # A control plane already chosen in the environment (hack/cluster.sh's variables) wins.
        state = Path(os.environ.get("Z2M_CLUSTER_DIR") or state)
        self.env = {
            **os.environ,
            "Z2M_CLUSTER_DIR": str(state),
            "Z2M_CLUSTER_NAME": os.environ.get("Z2M_CLUSTER_NAME") or "z2m-bench-promotion",
        }
        self.kubeconfig = str(state / "kubeconfig")
        binaries = Path(sh(str(REPO_ROOT / "hack" / "build-binaries.sh")).strip())
        self.kubectl = str(binaries / "kubectl")

    def up(self) -> None:
        subprocess.run([str(REPO_ROOT / "hack" / "cluster.sh"), "up"], check=True, env=self.env)
        sh(self.kubectl, "--kubeconfig", self.kubeconfig, "apply", "--server-side", "-f",
           str(REPO_ROOT / "crds"))  # fmt: skip
        sh(self.kubectl, "--kubeconfig", self.kubeconfig, "wait", "--for=condition=Established",
           "crd/scalingstages.z2m.dev")  # fmt: skip

    def down(self) -> None:
        subprocess.run([str(REPO_ROOT / "hack" / "cluster.sh"), "down"], check=False, env=self.env)


LOOP_ONLY = """
import asyncio, logging, sys, threading
import kubernetes, prometheus_client
from z2m import api, kube, promote
logging.basicConfig(level=logging.WARNING)
prometheus_client.start_http_server(int(sys.argv[3]), addr="127.0.0.1")
if sys.argv[2] == "per-object":  # the loop before grouping: every object asks alone
    promote.Loop._fleet_for = lambda self, obj, fleets: None
client = kube.Kube.connect(kube.load_config(sys.argv[1]))
stages = {}

def follow():  # the ScalingStages from a watch, as the operator has them from Kopf's
    custom = kubernetes.client.CustomObjectsApi(client.client.client)
    args = (api.GROUP, api.VERSION, api.PLURAL)
    while True:
        listing = custom.list_cluster_custom_object(*args)
        stages.clear()
        stages.update((o["metadata"]["uid"], o) for o in listing["items"])
        stream = kubernetes.watch.Watch().stream(
            custom.list_cluster_custom_object, *args,
            resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=300)
        try:
            for event in stream:
                obj = event["object"]
                if event["type"] == "DELETED":
                    stages.pop(obj["metadata"]["uid"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    stages[obj["metadata"]["uid"]] = obj
        except Exception:
            pass

threading.Thread(target=follow, daemon=True).start()
asyncio.run(promote.run_forever(client, source=lambda: list(stages.values())))
"""


class Operator:
    """`z2m run` (or only its promotion loop) as a child process, with /proc readings."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str,
        log: Path,
        loop_only: bool = False,
        grouped: bool = True,
        **env: str,
    ) -> None:
        self.metrics_port = free_port()
        argv = [
            str(REPO_ROOT / ".venv" / "bin" / "z2m"), "run", "--kubeconfig", kubeconfig,
            "--namespace", namespace, "--bind", "127.0.0.1",
            "--health-port", str(free_port()), "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        if loop_only:
            mode = "grouped" if grouped else "per-object"
            argv = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", LOOP_ONLY, kubeconfig,
                    mode, str(self.metrics_port)]  # fmt: skip
        self.process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

    def counter(self, name: str, **labels: str) -> float:
        """A counter of the process's own /metrics, summed over the labels not given."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def sample(self, seconds: float, every: float = 10.0) -> tuple[list[float], list[float]]:
        """CPU percent (of one core) per slice, and RSS at the end of each slice."""
        cpu, rss = [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            c0, t0 = self.cpu_seconds(), time.monotonic()
            time.sleep(every)
            cpu.append(100 * (self.cpu_seconds() - c0) / (time.monotonic() - t0))
            rss.append(self.rss_mib())
        return cpu, rss

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def each(names: list[str], call: Callable[[str], Any]) -> None:
    """`call` for every name, 16 at a time: 1,000 creates one by one take minutes here."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(call, names))


def query_count(server: prom.Prometheus) -> float:
    """Instant queries Prometheus has answered, from its own /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line
    )


def body(name: str, url: str, mode: str, window: str, **promotion: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {
            "stage": 1,
            "promotion": {
                "mode": mode,
                "prometheus": {"url": url, "rateWindow": window},
                "minStage": 1,
                "maxStage": 3,
                **promotion,
            },
        },
    }


def reaction(
    custom: Any, namespace: str, server: prom.Prometheus, exporter: prom.Exporter,
    window: int, runs: int, interval: int,
) -> list[float]:  # fmt: skip
    times = []
    for run in range(runs):
        exporter.set(rps=0.0, cpu_percent=1.0)
        name = f"react-{run}"
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL,
            body(name, server.url, "auto", "4s", intervalSeconds=interval,
                 promoteWindowSeconds=window,
                 demoteWindowSeconds=window * 10, cooldownSeconds=0),
        )  # fmt: skip

        def get(n: str = name) -> dict[str, Any]:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, n
            )
            return obj

        def fits(n: str = name) -> bool:
            conds = (get(n).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Recommendation" and c["reason"] == "StageFits" for c in conds)

        wait(fits, 60 + 2 * interval, f"{name} evaluated at rest")
        t0 = time.monotonic()
        exporter.set(rps=1000.0, cpu_percent=95.0)

        def promoted(n: str = name) -> bool:
            return bool(get(n)["spec"]["stage"] == 2)

        wait(promoted, 120 + 2 * window, f"{name} promoted", 0.05)
        times.append(time.monotonic() - t0)
        print(f"  run {run + 1}: stage 1 -> 2 after {times[-1]:.2f} s (window {window} s)")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    exporter.set(rps=0.0, cpu_percent=1.0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=5, help="reaction: promote window, s")
    parser.add_argument("--reaction-interval", type=int, default=1, help="its intervalSeconds")
    parser.add_argument("--reaction-tick", type=float, default=0.5, help="Z2M_PROMOTION_TICK")
    parser.add_argument("--skip-cost", action="store_true", help="measure the reaction only")
    parser.add_argument(
        "--refresh", default="300", help="Z2M_PROMOTION_REFRESH of the loop in the cost phase"
    )
    parser.add_argument(
        "--skip-per-object", action="store_true", help="measure the grouped loop only"
    )
    parser.add_argument("--interval", type=int, default=15)
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="z2m-promotion-bench-"))
    cluster = Cluster(REPO_ROOT / ".cluster" / "bench-promotion")
    cluster.up()
    namespace = "bench"
    client = kube.load_config(cluster.kubeconfig)
    core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
    exporter = prom.Exporter()
    exporter.set(rps=0.0, cpu_percent=1.0, latency_seconds=0.02)
    names = [f"s{i:03d}" for i in range(args.objects)]
    reacting = [prom.Target(exporter.target, namespace, f"react-{r}-app-0") for r in range(9)]
    # 200 targets every 5 s (40 scrapes/s) rather than every second, on a 2-core machine.
    targets = [prom.Target(exporter.target, namespace, f"{n}-app-0") for n in names]
    operator: Operator | None = None
    try:
        try:
            core.create_namespace(
                kubernetes.client.V1Namespace(
                    metadata=kubernetes.client.V1ObjectMeta(name=namespace)
                )
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:  # left by an earlier run with --keep-cluster
                raise
        with prom.prometheus(tmp / "prometheus-reaction", reacting) as server:
            wait(lambda: server.query("count(up == 1)")["data"]["result"], 60, "scrapes")
            operator = Operator(
                cluster.kubeconfig, namespace, tmp / "operator.log",
                Z2M_PROMOTION_TICK=str(args.reaction_tick),
            )  # fmt: skip
            print(f"\n== reaction: sustained breach -> next stage, window {args.window} s, "
                  f"interval {args.reaction_interval} s, tick {args.reaction_tick} s")  # fmt: skip
            times = reaction(
                custom, namespace, server, exporter, args.window, args.runs, args.reaction_interval
            )
            operator.stop()
        if args.skip_cost:
            print(json.dumps({"reaction_runs_s": [round(t, 2) for t in times],
                              "reaction_median_s": round(statistics.median(times), 2),
                              "reaction_over_window": round(statistics.median(times) / args.window,
                                                            2)}))  # fmt: skip
            return 0
        with prom.prometheus(tmp / "prometheus", targets, scrape_interval="5s") as server:
            wait(lambda: server.query("count(up == 1)")["data"]["result"], 60, "scrapes")

            print(f"\n== cost: {args.objects} ScalingStages in mode manual (the loop only lists)")
            operator = Operator(
                cluster.kubeconfig, namespace, tmp / "loop.log", loop_only=True,
                Z2M_PROMOTION_REFRESH=args.refresh,
            )  # fmt: skip
            created = time.monotonic()
            each(names, lambda n: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL,
                body(n, server.url, "manual", "20s", intervalSeconds=args.interval),
            ))  # fmt: skip
            print(f"  created {len(names)} in {time.monotonic() - created:.1f} s")

            time.sleep(10)
            base_cpu, base_rss = operator.sample(args.sample_seconds / 2)
            print(f"  cpu% slices {[round(c, 1) for c in base_cpu]}, rss MiB {base_rss[-1]:.0f}")

            print(f"\n== cost: the same {args.objects} in recommend mode, "
                  f"interval {args.interval} s")  # fmt: skip
            each(names, lambda n: custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, n,
                {"spec": {"promotion": {"mode": "recommend"}}},
            ))  # fmt: skip

            def all_evaluated() -> bool:
                items = cast(
                    dict[str, Any],
                    custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
                )
                done = [i for i in items["items"] if (i.get("status") or {}).get("lastDecision")]
                return bool(len(done) >= args.objects)

            started = time.monotonic()
            wait(all_evaluated, 600, "every object evaluated", 1)
            first_pass = time.monotonic() - started
            print(f"  every object evaluated within {first_pass:.1f} s of switching")
            costs = {"grouped": measure(operator, server, args.sample_seconds)}
            operator.stop()
            if not args.skip_per_object:
                operator = Operator(
                    cluster.kubeconfig, namespace, tmp / "loop-alone.log", loop_only=True,
                    grouped=False, Z2M_PROMOTION_REFRESH=args.refresh,
                )  # fmt: skip
                time.sleep(args.interval)  # its first evaluations are due at once: let them pass
                costs["per-object"] = measure(operator, server, args.sample_seconds)
    finally:
        if operator is not None:
            operator.stop()
        exporter.close()
        if not args.keep_cluster:
            cluster.down()

    wanted = args.objects / args.interval
    # An object is due `interval` s after its evaluation ended and is picked up at the
    # next tick (5 s): the loop's own cadence, at which "keeping up" is judged.
    cadence = args.objects / (args.interval + TICK)
    results: dict[str, Any] = {
        "reaction_window_s": args.window,
        "reaction_median_s": round(statistics.median(times), 2),
        "reaction_runs_s": [round(t, 2) for t in times],
        "reaction_over_window": round(statistics.median(times) / args.window, 2),
        "objects": args.objects,
        "interval_s": args.interval,
        "refresh_s": args.refresh,
        "evaluations_per_s_wanted": round(wanted, 1),
        "evaluations_per_s_at_the_loops_cadence": round(cadence, 1),
        "first_full_pass_s": round(first_pass, 1),
        "cpu_percent_manual_median": round(statistics.median(base_cpu), 1),
        "rss_mib_manual_median": round(statistics.median(base_rss), 1),
    }
    for mode, c in costs.items():
        results[mode] = {
            **c,
            "keeps_up": bool(c["evaluations_per_s"] >= 0.9 * cadence),
            "cpu_ms_per_evaluation": round(
                10
                * (c["cpu_percent_median"] - statistics.median(base_cpu))
                / max(c["evaluations_per_s"], 0.01),
                2,
            ),
        }
    if "per-object" in costs:
        g, o = costs["grouped"], costs["per-object"]
        results["ratio_per_object_over_grouped"] = {
            "queries_per_s": round(
                o["prometheus_queries_per_s"] / max(g["prometheus_queries_per_s"], 0.01), 1
            ),
            "cpu_percent": round(o["cpu_percent_median"] / max(g["cpu_percent_median"], 0.1), 2),
        }
    results["load_average"] = os.getloadavg()
    print("\n== results")
    print(json.dumps(results, indent=2))
    return 0


def measure(operator: Operator, server: prom.Prometheus, seconds: float) -> dict[str, Any]:
    """The loop's CPU, memory, evaluations and Prometheus queries over `seconds`."""
    q0, t0 = query_count(server), time.monotonic()
    e0 = operator.counter("z2m_decisions_total")
    early0 = operator.counter("z2m_promotion_early_evaluations_total")
    f0 = operator.counter("z2m_prometheus_queries_total", scope="fleet")
    s0 = operator.counter("z2m_prometheus_queries_total", scope="object")
    c0 = operator.cpu_seconds()
    cpu, rss = operator.sample(seconds)
    spent = operator.cpu_seconds() - c0
    elapsed = time.monotonic() - t0
    evaluations = operator.counter("z2m_decisions_total") - e0
    early = operator.counter("z2m_promotion_early_evaluations_total") - early0
    fleet = operator.counter("z2m_prometheus_queries_total", scope="fleet") - f0
    alone = operator.counter("z2m_prometheus_queries_total", scope="object") - s0
    answered = query_count(server) - q0
    rate = f"{evaluations / elapsed:.1f} evaluations/s, {answered / elapsed:.1f} queries/s"
    print(f"  cpu% slices {[round(c, 1) for c in cpu]}, rss MiB {rss[-1]:.0f}, {rate}")
    return {
        "evaluations_per_s": round(evaluations / elapsed, 1),
        "early_evaluations": int(early),
        "prometheus_queries_per_s": round(answered / elapsed, 1),
        "queries_per_evaluation": round((fleet + alone) / max(evaluations, 1), 3),
        "queries_per_tick": round((fleet + alone) / (elapsed / TICK), 1),
        "cpu_ms_per_evaluation_from_proc": round(1000 * spent / max(evaluations, 1), 2),
        "cpu_percent_mean": round(100 * spent / elapsed, 1),
        "grouped_queries": int(fleet),
        "single_queries": int(alone),
        "cpu_percent_median": round(statistics.median(cpu), 1),
        "rss_mib_median": round(statistics.median(rss), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
