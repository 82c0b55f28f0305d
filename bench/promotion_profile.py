"""Profile one promotion evaluation's CPU against a real apiserver and a stand-in Prometheus.

Not a test. Creates `--objects` ScalingStages in `recommend` mode in a namespace
of the cluster behind `--kubeconfig` (the local control plane:
`hack/cluster.sh up`), answers the loop's grouped Prometheus queries in-process
(an httpx MockTransport with one series per object), and runs rounds of
`Loop.dispatch` over the objects as listed, the code the operator runs. It
prints the process's CPU per evaluation (user + system, from the OS, so it
counts the Kubernetes client's threads too) and, with `--profile`, the top
functions by cumulative time from cProfile.

    .venv/bin/python bench/promotion_profile.py --kubeconfig KUBECONFIG \
        [--objects 50] [--rounds 6] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import kubernetes  # noqa: E402

from z2m import api, kube, metrics, promote  # noqa: E402

NAMESPACE = "profile-promotion"
URL = "http://prometheus.invalid:9090"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decisions() -> float:
    """Evaluations so far, whatever their verdict."""
    return sum(
        s.value
        for family in metrics.DECISIONS.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )


def prometheus(names: list[str]) -> httpx.MockTransport:
    """Grouped answers: every object at rest (one request a second, 0.5 % CPU, nothing else)."""

    def handle(request: httpx.Request) -> httpx.Response:
        promql = parse_qs(urlparse(str(request.url)).query)["query"][0]
        value = "0.005" if "process_cpu" in promql else "1.0" if "requests_total" in promql else "0"
        result = [
            {"metric": {"namespace": NAMESPACE, "name": n}, "value": [time.time(), value]}
            for n in names
        ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return httpx.Response(200, content=json.dumps(body).encode())

    return httpx.MockTransport(handle)


def scaling_stage(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "stage": 1,
            "promotion": {
                "mode": "recommend",
                "prometheus": {"url": URL, "rateWindow": "20s"},
                "intervalSeconds": 1,
                "minStage": 1,
                "maxStage": 3,
            },
        },
    }


async def rounds(
    client: kube.Kube, names: list[str], count: int, refresh: float
) -> tuple[int, float, float]:
    """Evaluate every object `count` times; (evaluations, CPU seconds, wall seconds)."""
    async with httpx.AsyncClient(transport=prometheus(names)) as http:
        loop = promote.Loop(kube=client, http=http, refresh_seconds=refresh)
        loop.dispatch(await asyncio.to_thread(client.list_scaling_stages), time.monotonic())
        await asyncio.gather(*loop._running.values())  # the first round writes every status
        evaluations, cpu, wall = 0, 0.0, 0.0
        for _ in range(count):
            items = await asyncio.to_thread(client.list_scaling_stages)
            c0, t0 = cpu_seconds(), time.monotonic()
            before = decisions()
            loop._due.clear()
            loop.dispatch(items, t0)
            await asyncio.gather(*loop._running.values())
            evaluations += int(decisions() - before)
            cpu += cpu_seconds() - c0
            wall += time.monotonic() - t0
        loop.executor.shutdown()
        return evaluations, cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--refresh", type=float, default=300.0, help="Z2M_PROMOTION_REFRESH; 0: write every time"
    )
    args = parser.parse_args()

    api_client = kube.load_config(args.kubeconfig)
    core = kubernetes.client.CoreV1Api(api_client)
    custom = kubernetes.client.CustomObjectsApi(api_client)
    names = [f"p{i:04d}" for i in range(args.objects)]
    try:
        core.create_namespace(
            kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=NAMESPACE))
        )
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    listing = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL)
    existing = {o["metadata"]["name"] for o in listing["items"]}
    for name in names:
        if name not in existing:
            custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, scaling_stage(name)
            )
    client = kube.Kube.connect(api_client, namespaces=(NAMESPACE,))
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    evaluations, cpu, wall = asyncio.run(rounds(client, names, args.rounds, args.refresh))
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    per = 1000 * cpu / max(evaluations, 1)
    print(f"{evaluations} evaluations, {per:.2f} ms CPU each, {wall / args.rounds:.2f} s a round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
