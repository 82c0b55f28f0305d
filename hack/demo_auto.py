"""Drive the auto-promotion demo (run through hack/demo-auto.sh, not directly).

Real PostgreSQL, two real `python -m sample_app` processes, a real Prometheus
scraping them every second (labelled as pods shop-app-0 and shop-app-1 in
namespace demo), the operator running against the local control plane, and
the sample app's load generator. Load rises, the stage climbs 1 -> 2 -> 3;
load stops, the stage comes back 3 -> 2 -> 1. Small windows keep it short.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import prometheus as prom  # noqa: E402
from tests import services  # noqa: E402

NAMESPACE, NAME = "demo", "shop"
KUBECONFIG = os.environ.get("Z2M_DEMO_KUBECONFIG", str(ROOT / ".cluster" / "kubeconfig"))
KUBECTL = os.environ["Z2M_DEMO_KUBECTL"]
LOAD_RPS = float(os.environ.get("Z2M_DEMO_RPS", "30"))
LOAD_SECONDS = float(os.environ.get("Z2M_DEMO_LOAD_SECONDS", "50"))


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=check,
    )
    return out.stdout


def stage() -> int:
    return int(kubectl("get", "sstage", NAME, "-n", NAMESPACE, "-o", "jsonpath={.spec.stage}"))


def say(text: str) -> None:
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {text}", flush=True)


class EventPrinter:
    """Prints each new Event on the ScalingStage once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self) -> None:
        raw = kubectl(
            "get", "events", "-n", NAMESPACE,
            "--field-selector", f"involvedObject.name={NAME}", "-o", "json",
        )  # fmt: skip
        items = sorted(json.loads(raw)["items"], key=lambda e: e["metadata"]["creationTimestamp"])
        for e in items:
            if e["metadata"]["uid"] in self.seen:
                continue
            self.seen.add(e["metadata"]["uid"])
            print(f"  event {e['type']:<7} {e['reason']:<22} {e['message'][:300]}", flush=True)


def watch(until: float, events: EventPrinter, done: object = None) -> None:
    last = ""
    while time.monotonic() < until:
        line = kubectl(
            "get", "sstage", NAME, "-n", NAMESPACE, "--no-headers", "-o",
            "custom-columns=STAGE:.spec.stage,RECOMMENDED:.status.recommendedStage,"
            "ACTION:.status.lastDecision.action,BOTTLENECK:.status.lastDecision.bottleneck,"
            "RPS:.status.lastDecision.signals.rps",
        ).strip()  # fmt: skip
        if line != last:
            print(f"  sstage  stage/recommended/action/bottleneck/rps: {' '.join(line.split())}")
            last = line
        events()
        if callable(done) and done():
            return
        time.sleep(2)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="z2m-demo-auto-"))
    with contextlib.ExitStack() as stack:
        say("starting PostgreSQL and two sample_app processes")
        pg = stack.enter_context(services.postgres_primary(tmp))
        dsn = pg.dsn
        apps = [stack.enter_context(services.sample_app(tmp, DATABASE_URL=dsn)) for _ in range(2)]
        targets = [
            prom.Target(f"127.0.0.1:{a.port}", NAMESPACE, f"{NAME}-app-{i}")
            for i, a in enumerate(apps)
        ]
        say("starting Prometheus (scrape every 1 s) on " + ", ".join(t.address for t in targets))
        server = stack.enter_context(prom.prometheus(tmp / "prometheus", targets))
        say(f"Prometheus at {server.url}; starting the operator for namespace {NAMESPACE}")
        kubectl("create", "namespace", NAMESPACE, check=False)
        kubectl("delete", "sstage", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait")
        log = (tmp / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "z2m"), "run", "--kubeconfig", KUBECONFIG,
                "--namespace", NAMESPACE, "--bind", "127.0.0.1",
                "--health-port", str(services.free_port()),
                "--metrics-port", str(services.free_port()),
            ],
            env={**os.environ, "Z2M_PROMOTION_TICK": "1", "Z2M_PROMOTION_REFRESH": "10"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(operator.wait, 20)
        stack.callback(operator.terminate)
        body = {
            "apiVersion": "z2m.dev/v1alpha1",
            "kind": "ScalingStage",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "stage": 1,
                "promotion": {
                    "mode": "auto",
                    "prometheus": {"url": server.url, "rateWindow": "10s"},
                    "intervalSeconds": 2,
                    "promoteWindowSeconds": 10,
                    "demoteWindowSeconds": 20,
                    "cooldownSeconds": 5,
                    "minStage": 1,
                    "maxStage": 3,
                },
            },
        }
        kubectl("apply", "-f", "-", stdin=json.dumps(body))
        print(kubectl("get", "sstage", NAME, "-n", NAMESPACE, "-o", "yaml").split("status:")[0])
        events = EventPrinter()
        watch(time.monotonic() + 12, events)

        say(f"load rises: {LOAD_RPS:g} RPS for {LOAD_SECONDS:g} s (stage 1 carries < 1 RPS)")
        load = subprocess.Popen(
            [
                sys.executable, "-m", "sample_app.load",
                *[arg for a in apps for arg in ("--url", a.url)],
                "--rps", str(LOAD_RPS), "--duration", str(LOAD_SECONDS), "--users", "10",
            ],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        watch(time.monotonic() + LOAD_SECONDS + 15, events, done=lambda: load.poll() is not None)
        print("  load generator:", (load.communicate()[0] or "").strip().splitlines()[-1:])

        say("load stopped: the stage comes back down after the longer demote window")
        watch(time.monotonic() + 100, events, done=lambda: stage() == 1)
        watch(time.monotonic() + 3, events)
        say("history")
        history = kubectl(
            "get", "sstage", NAME, "-n", NAMESPACE, "-o", "jsonpath={.status.history}"
        )
        for entry in json.loads(history or "[]"):
            print(
                f"  {entry['time']}  {entry['fromStage']} -> {entry['toStage']}  by {entry['by']}"
            )
            print(f"      {entry['reason'][:400]}")
        print()
        print(kubectl("get", "sstage", "-n", NAMESPACE))
        ok = stage() == 1 and len(json.loads(history or "[]")) >= 4
        kubectl("delete", "sstage", NAME, "-n", NAMESPACE, "--ignore-not-found")
    say("done: the stage climbed and came back down" if ok else "demo did not complete")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
