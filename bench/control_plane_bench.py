"""Benchmark (not a test): what the local control plane costs.

Prints the warm `hack/cluster.sh up` time (median of several runs), the
control plane's memory (RSS of every process it started, summed, after the
cluster settles) and, with --cold, the time to build every binary from empty
Go build and binary caches (modules already downloaded are reused; this takes
20+ minutes on 2 cores).

    .venv/bin/python bench/control_plane_bench.py [--runs 3] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cluster(command: str, env: dict[str, str]) -> None:
    subprocess.run(
        [str(ROOT / "hack" / "cluster.sh"), command],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def rss_kib(state: Path) -> tuple[int, dict[str, int]]:
    """Sum VmRSS of the processes whose pid files kwokctl keeps for this cluster."""
    per: dict[str, int] = {}
    for pidfile in state.glob("kwok/clusters/*/pids/*.pid"):
        pid = pidfile.read_text().strip()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                per[pidfile.stem] = int(line.split()[1])
    return sum(per.values()), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()

    if args.cold:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as gocache:
            env = {**os.environ, "Z2M_CACHE": cache, "GOCACHE": gocache}
            started = time.perf_counter()
            subprocess.run([str(ROOT / "hack" / "build-binaries.sh")], env=env, check=True)
            print(f"cold build of all binaries: {time.perf_counter() - started:.0f} s")

    subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh")], check=True, stdout=subprocess.DEVNULL
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        env = {**os.environ, "Z2M_CLUSTER_DIR": str(state), "Z2M_CLUSTER_NAME": "z2m-bench"}
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            cluster("up", env)
            times.append(time.perf_counter() - started)
            if len(times) < args.runs:
                cluster("down", env)
        time.sleep(20)  # let the controllers settle before reading memory
        total, per = rss_kib(state)
        cluster("down", env)
    print(
        f"warm cluster-up: median {statistics.median(times):.1f} s over {len(times)} runs "
        f"({', '.join(f'{t:.1f}' for t in times)})"
    )
    print(f"control plane memory (RSS): {total / 1024:.0f} MiB")
    for name, kib in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26} {kib / 1024:7.0f} MiB")


if __name__ == "__main__":
    main()
