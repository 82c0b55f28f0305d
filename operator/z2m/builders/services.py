"""Stage 6's microservices: the app's image split into roles, one Deployment each.

Each service (`catalog.Microservice`: users, feed, notifications) runs the app's
container with `SERVICE` and `SERVICE_ROUTES` set, so the pod serves only its
routes; it has its own Service, HPA and PDB. The app's own Deployment stays and
keeps every route no service has taken yet (the page and its static files): the
services are carved out of it, not a rewrite of it. The gateway (`gateway`) is
what sends each path to its service.
"""

from __future__ import annotations

from typing import Any

from z2m import catalog, plan
from z2m.builders import app, meta, workloads

Obj = dict[str, Any]


def suffix(service: catalog.Microservice) -> str:
    """The child-name suffix and component of a service: `service-<role>`."""
    return f"{workloads.SERVICE_PREFIX}{service.role}"


def host(p: plan.Plan, service: catalog.Microservice) -> str:
    """The service's in-namespace DNS name (its Service listens on port 80)."""
    return meta.child(p.name, suffix(service))


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Every service's Deployment, Service, HPA and PDB, where the plan has them."""
    objs: list[Obj] = []
    for service in p.microservices:
        name = suffix(service)
        container = app.app_container(p, "web")
        ours = {"SERVICE", "SERVICE_ROUTES"}
        container["env"] = [e for e in container["env"] if e["name"] not in ours] + [
            {"name": "SERVICE", "value": service.role},
            {"name": "SERVICE_ROUTES", "value": ",".join(service.routes)},
        ]
        pod: Obj = {
            "containers": [container],
            "topologySpreadConstraints": workloads.spread(p, name),
        }
        objs += [
            # No replica count: the HPA owns it from the first apply.
            workloads.deployment(p, owner, name, name, None, pod),
            workloads.service(
                p, owner, meta.child(p.name, name), name, [("http", 80, p.spec.app.port)]
            ),
            workloads.hpa(p, owner, name, service.autoscaling),
            workloads.pdb(p, owner, name, name),
        ]
    return objs
