"""The `z2m` command: run the operator, or render, plan and draw stages offline.

`render`, `plan`, `diagram`, `crd` and `docs` need no cluster: they call the
same pure layers the operator uses, so what they print is what it applies.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import yaml

from z2m import api, builders, catalog, crd, leader, plan, transition

Obj = dict[str, Any]
OFFLINE_UID = "00000000-0000-0000-0000-000000000000"


def _load(path: str) -> tuple[str, str, api.ScalingStageSpec]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == api.KIND]
    if not docs:
        raise SystemExit(f"z2m: {path} holds no {api.KIND}")
    meta = docs[0].get("metadata") or {}
    return (
        meta.get("name", "app"),
        meta.get("namespace", "default"),
        api.ScalingStageSpec.model_validate(docs[0].get("spec") or {}),
    )


def _objects(
    path: str, stage: int | None, prometheus_operator: bool = False, gateway_api: bool = False
) -> list[Obj]:
    name, namespace, spec = _load(path)
    if stage is not None:
        spec = spec.model_copy(update={"stage": stage})
    the_plan = plan.resolve(spec, name=name, namespace=namespace)
    owner = builders.Owner(name=name, uid=OFFLINE_UID)
    return builders.build(
        the_plan, owner, prometheus_operator=prometheus_operator, gateway_api=gateway_api
    )


def _plan(path: str | None, from_stage: int | None, to_stage: int) -> list[str]:
    if from_stage is None and path is not None:
        from_stage = _load(path)[2].stage
    target = catalog.stage(to_stage)
    if target.plan_only:
        return blueprint_lines(target, from_stage)
    if not target.implemented:
        raise plan.NotBuiltError(target)
    if path is None or from_stage is None:
        raise SystemExit(f"z2m: plan --to {to_stage} needs -f FILE")
    before, after = _objects(path, from_stage), _objects(path, to_stage)
    return [
        f"stage {from_stage} -> {to_stage}:",
        *(plan_lines(before, after) or ["  nothing changes"]),
    ]


def _changed_fields(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _changed_fields(old.get(k), new.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if old == new else [path]


def plan_lines(before: list[Obj], after: list[Obj], owner_uid: str = OFFLINE_UID) -> list[str]:
    """The stage change, phase by phase: what is added (+), changed (~), removed (-).

    A step that waits on gates (see `transition`) says which.
    """
    old = {builders.key(o): o for o in before}
    lines = []
    for phase in transition.phases(before, after, owner_uid):
        shown = []
        for step in phase.steps:
            k = builders.key(step.obj)
            label = f"{k[1]} {k[2]}"
            if step.action == "delete":
                kept = " (its PVCs are kept)" if k[1] == "StatefulSet" else ""
                line = f"- {label}{kept}"
            elif k not in old:
                line = f"+ {label}"
            elif fields := _changed_fields(old[k], step.obj):
                more = " ..." if len(fields) > 6 else ""
                line = f"~ {label}: {', '.join(fields[:6])}{more}"
            else:
                continue
            gates = f"  [once: {', '.join(sorted(step.gates))}]" if step.gates else ""
            shown.append(f"  {line}{gates}")
        if shown:
            lines += [f"{phase.name}:", *shown]
    lines += [f"note: {note}" for note in transition.notes(before, after)]
    return lines


def _not_built(entry: catalog.Stage) -> str:
    if entry.plan_only:
        return f"a plan only, z2m builds none of it (z2m plan --to {entry.number})"
    return "not built yet, z2m runs nothing for it"


def blueprint_lines(entry: catalog.Stage, running: int | None) -> list[str]:
    """A plan-only stage, as `z2m plan --to N` prints it: what it adds, costs and needs."""
    if entry.blueprint is None:
        return []
    top = catalog.stage(catalog.MAX_IMPLEMENTED)
    built = running is not None and running <= catalog.MAX_IMPLEMENTED
    kept = f"stage {running} keeps running" if built else "the stage that runs keeps running"
    lines = [
        f"stage {entry.number} ({entry.title}) is a plan only: z2m builds none of it "
        f"and changes nothing: {kept} as it is.",
        f"The seed's figures: {entry.users} users, {entry.rps} RPS, "
        f"${entry.monthly_cost_usd}/month for the whole stage (stage {top.number}, the highest "
        f"z2m builds: ${top.monthly_cost_usd}/month). The seed does not price it piece by piece.",
        "",
        "What it adds, what each bill grows with, and what you must bring:",
    ]
    for a in entry.blueprint.additions:
        lines += [
            f"  + {a.name}: {a.what}",
            f"      cost: {a.cost}",
            f"      you bring: {'; '.join(a.user_brings)}",
        ]
    lines += ["", "Why one cluster and one operator should not run it:"]
    lines += [f"  - {why}" for why in entry.blueprint.why_not_here]
    return lines


def diagram(number: int) -> str:
    """A Mermaid flowchart of one stage, drawn from the same plan the builders use."""
    entry = catalog.stage(number)
    if not entry.implemented:
        # Nothing runs for this stage, so nothing is drawn but the fact.
        return f'flowchart TD\n    none["stage {number}: {_not_built(entry)}"]'
    lines = ["flowchart TD", '    users(["Users"])']
    p = plan.resolve(api.ScalingStageSpec(stage=number), name="app", namespace="default")
    front = "users"
    if p.edge_cache:
        lines.append('    edge["Edge cache (nginx): static assets"]')
        lines.append("    users --> edge")
        front = "edge"
    if p.app_autoscaling:
        a = p.app_autoscaling
        app = f"App x{a.min_replicas}-{a.max_replicas} (HPA at {a.cpu_percent}% CPU)"
    else:
        app = f"App x{p.app_replicas}"
    if p.colocated_database:
        lines += [
            '    subgraph node["One machine"]',
            f'        app["{app}"]',
            '        db[("PostgreSQL (own StatefulSet and volume)")]',
        ]
        lines.append("    end")
        lines.append(f"    {front} --> app")
        lines.append("    app --> db")
        return "\n".join(lines)
    lines.append(f'    lb{{{{"Service (load balancer)"}}}}\n    app["{app}"]')
    if p.gateway:
        # Stage 6: one entry point, the services carved out of the app behind it.
        lines.append(
            '    gw{{"API gateway (nginx): routing, rate limiting, authentication; '
            'a Gateway + HTTPRoute (routing only) where the Gateway API is served"}}'
        )
        lines.append(f"    {front} --> gw --> lb --> app")
        for m in p.microservices:
            a = m.autoscaling
            lines.append(
                f'    svc_{m.role}["{m.role} service x{a.min_replicas}-{a.max_replicas} (HPA)"]'
            )
            lines.append(f"    gw -- {' '.join(m.routes)} --> svc_{m.role}")
            lines.append(f"    svc_{m.role} --> db")
    else:
        lines.append(f"    {front} --> lb --> app")
    lines.append('    db[("PostgreSQL primary (Patroni)")]\n    app -- writes --> db')
    if p.failover_standbys:
        sync = "synchronous" if p.synchronous else "streaming"
        lines.append('    standby[("Failover standby (promoted by Patroni)")]')
        lines.append(f"    db -. {sync} .-> standby")
    if p.read_replicas:
        lines.append(f'    ro[("Read replicas x{p.read_replicas}")]')
        lines.append("    app -- reads --> ro\n    db -. streaming .-> ro")
    if p.redis_cluster is not None:
        c = p.redis_cluster
        shape = f"{c.primaries} primaries + {c.primaries * c.replicas_per_primary} replicas"
        lines.append(f'    cache[("Redis Cluster: {shape}")]\n    app -- cache-aside --> cache')
        for m in p.microservices:
            lines.append(f"    svc_{m.role} -- cache-aside --> cache")
    elif p.redis:
        extra = f" + {p.redis_replicas} replica + Sentinel" if p.sentinel else ""
        lines.append(f'    cache[("Redis{extra}")]\n    app -- cache-aside --> cache')
    if p.event_streaming:
        cap = p.spec.streaming.partitions
        workers = f"Consumer group: workers x{p.workers}" + (
            f" (HPA, at most {cap})" if p.worker_autoscaling else ""
        )
        lines.append(f'    kafka[["Kafka (KRaft), topic of {cap} partitions"]]')
        lines.append(f'    workers["{workers}"]')
        lines.append("    app -- jobs --> kafka --> workers\n    workers --> db")
    elif p.queue:
        workers = f"Workers x{p.workers}" + (" (HPA)" if p.worker_autoscaling else "")
        lines.append(f'    mq[["RabbitMQ"]]\n    workers["{workers}"]')
        lines.append("    app -- jobs --> mq --> workers\n    workers --> db")
    if p.monitoring:
        lines.append('    mon["Prometheus + Alertmanager (alert rules; Grafana dashboard)"]')
        lines.append("    mon -. scrapes .-> app")
        if p.queue or p.event_streaming:
            lines.append("    mon -. scrapes .-> workers")
    if p.stage.topology is not None and p.stage.topology.search:
        offered = "OpenSearch" if p.search else "OpenSearch (opt-in: spec.search.enabled)"
        lines.append(f'    search[("{offered}")]\n    app -. search, indexing .-> search')
    if entry.topology is not None and entry.topology.regions:
        lines.append(
            '    regions["Regions: app, services, read replicas and Redis Cluster spread by '
            'topology.kubernetes.io/region; the primary stays in one"]'
        )
    if p.shards:
        lines.append(
            f'    shards[("PostgreSQL shards x{p.shards} by user ID (Patroni, logical WAL): '
            "the rows move in at 5 -> 6 and back at 6 -> 5; the app gets DATABASE_SHARDS "
            "after the move's fence\")]"
        )
    return "\n".join(lines)


def docs() -> str:
    """docs/stages.md: the catalog as a table, and every stage's diagram."""
    out = [
        "# The stages",
        "",
        "Generated by `z2m docs` from `operator/z2m/catalog.py`. Do not edit by hand.",
        "",
        "| stage | users | RPS | app | read replicas | cache | jobs | monthly cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in catalog.STAGES:
        t = s.topology
        if t is None:
            built = "plan only" if s.plan_only else "not built yet"
            cells = f"{built} | | |"
        else:
            app = (
                f"{t.app_autoscaling.min_replicas}-{t.app_autoscaling.max_replicas} (HPA)"
                if t.app_autoscaling
                else str(t.app_replicas)
            )
            cache = "Redis + replica" if t.redis_replicas else ("Redis" if t.redis else "-")
            if t.redis_cluster is not None:
                cache = f"Redis Cluster ({t.redis_cluster.nodes} nodes)"
            if t.microservices:
                app += f" + {len(t.microservices)} services (HPA) behind a gateway"
            queue = f"RabbitMQ + {t.workers} workers" if t.queue else "-"
            if t.event_streaming:
                queue = f"Kafka + {t.workers} workers (consumer group)"
            cells = f"{app} | {t.read_replicas} | {cache} | {queue}"
        out.append(f"| {s.number} | {s.users} | {s.rps} | {cells} | ${s.monthly_cost_usd} |")
    for s in catalog.STAGES:
        out += ["", f"## Stage {s.number}: {s.title}", ""]
        if not s.implemented:
            out += [f"**{_not_built(s).capitalize()}.** The seed adds:", ""]
        out += [f"- {line}" for line in s.adds]
        if s.blueprint is not None:
            out += [
                "",
                "| piece | what | its bill grows with | you bring |",
                "|---|---|---|---|",
            ]
            out += [
                f"| {a.name} | {a.what} | {a.cost} | {'; '.join(a.user_brings)} |"
                for a in s.blueprint.additions
            ]
            out += ["", "Why one cluster and one operator should not run it:", ""]
            out += [f"- {why}" for why in s.blueprint.why_not_here]
        out += ["", "```mermaid", diagram(s.number), "```"]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run the operator until interrupted."""
    import kopf
    from prometheus_client import start_http_server

    from z2m import handlers  # registers the handlers

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        os.environ["Z2M_KUBECONFIG"] = args.kubeconfig
    # One list of namespaces for Kopf's watches and for every list of our own.
    given = args.namespace or os.environ.get("Z2M_NAMESPACES", "").split(",")
    namespaces = sorted({n for n in given if n})
    os.environ["Z2M_NAMESPACES"] = ",".join(namespaces)
    if args.leader_elect:
        leader.Timing(args.lease_duration, args.renew_deadline, args.retry_period)  # validates
        os.environ.update(
            Z2M_LEADER_ELECT="true",
            Z2M_LEASE_NAME=args.lease_name,
            Z2M_LEASE_NAMESPACE=args.lease_namespace,
            Z2M_IDENTITY=args.identity,
            Z2M_LEASE_DURATION=str(args.lease_duration),
            Z2M_RENEW_DEADLINE=str(args.renew_deadline),
            Z2M_RETRY_PERIOD=str(args.retry_period),
        )
    start_http_server(args.metrics_port, addr=args.bind)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=f"http://{args.bind}:{args.health_port}/healthz",
    )
    del handlers
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `z2m` console script."""
    parser = argparse.ArgumentParser(prog="z2m", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run the operator")
    p_run.add_argument("--kubeconfig")
    p_run.add_argument(
        "--namespace",
        action="append",
        help="serve only this namespace, an exact name (repeatable; default $Z2M_NAMESPACES, "
        "else the whole cluster)",
    )
    p_run.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - a pod's probes need it
    p_run.add_argument("--health-port", type=int, default=8080)
    p_run.add_argument("--metrics-port", type=int, default=9090)
    p_run.add_argument("--verbose", action="store_true")
    election = p_run.add_argument_group(
        "leader election", "run several replicas: only the holder of a Lease reconciles"
    )
    election.add_argument("--leader-elect", action="store_true")
    election.add_argument("--lease-name", default="z2m-operator")
    election.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="default $POD_NAMESPACE, else default",
    )
    election.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
        help="this replica's name in the Lease (default $POD_NAME, else host and a random suffix)",
    )
    election.add_argument("--lease-duration", type=float, default=leader.Timing.lease_duration)
    election.add_argument("--renew-deadline", type=float, default=leader.Timing.renew_deadline)
    election.add_argument("--retry-period", type=float, default=leader.Timing.retry_period)

    p_render = sub.add_parser("render", help="print the manifests of a stage")
    p_render.add_argument("-f", "--file", required=True)
    p_render.add_argument("--stage", type=int)
    p_render.add_argument(
        "--prometheus-operator",
        action="store_true",
        help="as on a cluster that serves the Prometheus Operator's PodMonitor and "
        "PrometheusRule: stage 5 writes those instead of running a Prometheus",
    )
    p_render.add_argument(
        "--gateway-api",
        action="store_true",
        help="as on a cluster that serves the Gateway API: stage 6 writes a Gateway and an "
        "HTTPRoute instead of running its own nginx gateway",
    )

    p_plan = sub.add_parser("plan", help="what changes between two stages")
    p_plan.add_argument("-f", "--file", help="a ScalingStage (needed unless --to is plan only)")
    p_plan.add_argument("--from", dest="from_stage", type=int, help="default: the file's stage")
    p_plan.add_argument("--to", dest="to_stage", type=int, required=True)

    p_diagram = sub.add_parser("diagram", help="a Mermaid diagram of a stage")
    p_diagram.add_argument("--stage", type=int, required=True)

    sub.add_parser("crd", help="print the ScalingStage CRD")
    sub.add_parser("docs", help="print docs/stages.md")

    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
        if args.command == "render":
            objs = _objects(args.file, args.stage, args.prometheus_operator, args.gateway_api)
            print(yaml.safe_dump_all(objs, sort_keys=False), end="")
        elif args.command == "plan":
            print("\n".join(_plan(args.file, args.from_stage, args.to_stage)))
        elif args.command == "diagram":
            print(diagram(args.stage))
        elif args.command == "crd":
            print(crd.render(), end="")
        elif args.command == "docs":
            print(docs(), end="")
    except (plan.PlanError, KeyError) as exc:
        print(f"z2m: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
