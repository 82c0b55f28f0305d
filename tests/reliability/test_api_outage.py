"""kube-apiserver, then etcd, killed and restarted in the middle of a stage change.

The operator (one replica, with leader election on as the chart runs it) must
ride it out in the same process: reconnect its watches, take its Lease back,
converge to the stage asked for, and say so in a few lines: one when the API is
lost, one when it answers again, not a traceback per retry.
"""

from __future__ import annotations

import re

import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import report
from tests.reliability import checks
from tests.reliability.conftest import ControlPlane, OperatorProcess
from z2m import kube

NAME = "shop"
DOWN_SECONDS = 15
"""Longer than the operator's renew deadline (7 s): it must step down and lead again."""
LOUD = re.compile(r"\[(WARNING|ERROR|CRITICAL) *\]|Traceback")


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_the_operator_rides_out_a_restart_of(
    component: str,
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator_process: OperatorProcess,
    control_plane: ControlPlane,
) -> None:
    op = operator_process
    op.args = ("--leader-elect", "--lease-namespace", namespace, "--identity", "solo")
    op.start()
    h.create(api_client, namespace, h.scaling_stage(NAME, 2))
    h.wait_ready(api_client, namespace, NAME, 2)
    pid, before = op.pid, len(op.output())

    h.set_stage(api_client, namespace, NAME, 3)  # the change starts, then the API goes
    away = control_plane.outage(component, DOWN_SECONDS)
    h.wait_ready(api_client, namespace, NAME, 3, timeout=180)
    # And it still follows changes made after the outage, through its new watches.
    h.set_stage(api_client, namespace, NAME, 4)
    h.wait_ready(api_client, namespace, NAME, 4, timeout=180)
    assert checks.problems(api_client, k, namespace, NAME, 4, {}) == []

    assert op.alive() and op.pid == pid and op.starts == 1  # the same process throughout
    lines = op.output()[before:].splitlines()
    loud = [line for line in lines if LOUD.search(line)]
    lost = [line for line in loud if "lost the Kubernetes API" in line]
    back = [line for line in loud if "the Kubernetes API answers again" in line]
    report(
        f"{component} restart: API away {away:.0f} s; operator kept its pid; "
        f"{len(loud)} log lines at WARNING or above ({len(lost)} 'lost', {len(back)} 'again')"
    )
    for line in loud:
        print("  ", line[:200])
    assert not [line for line in lines if "Traceback" in line]
    assert len(lost) <= 1 and len(back) == len(lost)
    if component == "kube-apiserver":
        assert len(lost) == 1  # connections were refused: it must have noticed, once
    # At most: lost the API, lost the Lease (past the renew deadline), the API again.
    assert len(loud) <= 3, loud
