"""The operator SIGKILLed at a random moment of a stage change, 20 times over walks 1..5..1.

After each kill the operator is started again, as a Deployment would: it must
converge to exactly the stage asked for, every child owned once by the
ScalingStage, no orphan and no duplicate, and every claim kept with its
identity. The moments come from a seeded random; the seed is printed, and
Z2M_CHAOS_SEED=<seed> repeats the same run.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from tests.reliability import checks
from tests.reliability.conftest import OperatorProcess
from z2m import kube

NAME = "shop"
KILLS = 20
LADDER = [2, 3, 4, 5, 4, 3, 2, 1]  # one walk 1..5..1, after stage 1
LATEST_KILL = 4.0
"""Kills land uniformly within this many seconds of the stage patch: while the change runs."""


def test_sigkill_at_a_random_moment_of_each_stage_change_always_converges(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator_process: OperatorProcess,
    empty_queue: str,
    kafka_servers: str,
    sentinel_watching: Callable[[str], str],
) -> None:
    seed = int(os.environ.get("Z2M_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    report(f"operator kills: seed {seed} (Z2M_CHAOS_SEED={seed} repeats the moments)")
    chance = random.Random(seed)
    spec: dict[str, Any] = {
        "queue": {"managementUrl": empty_queue},
        "streaming": {"bootstrapServers": kafka_servers},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
    }
    op = operator_process.start()
    h.create(api_client, namespace, h.scaling_stage(NAME, 1, **spec))
    h.wait_ready(api_client, namespace, NAME, 1)
    claims = h.claims(api_client, namespace)

    converged, failures, recoveries = 0, [], []
    for i in range(KILLS):
        stage = LADDER[i % len(LADDER)]
        h.set_stage(api_client, namespace, NAME, stage)
        moment = chance.uniform(0, LATEST_KILL)
        # The fault's moment is the point of the test, not a wait for a condition.
        time.sleep(moment)
        op.kill()
        op.start()
        restarted = time.monotonic()
        try:
            h.wait_ready(api_client, namespace, NAME, stage, timeout=180)
            found = eventually(
                lambda s=stage: (
                    not checks.problems(api_client, k, namespace, NAME, s, claims, **spec) or None
                ),
                timeout=60,
            )
            assert found
        except AssertionError:
            failures.append(
                (
                    i + 1,
                    stage,
                    round(moment, 2),
                    checks.problems(api_client, k, namespace, NAME, stage, claims, **spec),
                )
            )
            continue
        recoveries.append(time.monotonic() - restarted)
        converged += 1
        claims.update(h.claims(api_client, namespace))

    assert op.starts == KILLS + 1
    report(
        f"operator kills: {converged}/{KILLS} converged; restart to Ready median "
        f"{statistics.median(recoveries) if recoveries else float('nan'):.1f} s, "
        f"max {max(recoveries, default=float('nan')):.1f} s; {len(claims)} claims all kept"
    )
    assert converged == KILLS, f"seed {seed}: kill, stage, moment, problems: {failures}"
    assert {"data-shop-db-0", "data-shop-redis-0", "data-shop-queue-0"} <= set(claims)
