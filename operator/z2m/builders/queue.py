"""RabbitMQ, from stage 4: its StatefulSet and Service.

The workers that consume its jobs are the app's pods: `app.workers` builds them.
"""

from __future__ import annotations

from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

AMQP_PORT = 5672
AMQP_MANAGEMENT_PORT = 15672


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """RabbitMQ's StatefulSet and Service, where the plan has the queue."""
    if not p.queue:
        return []
    container: Obj = {
        "name": "rabbitmq",
        "image": p.spec.queue.image,
        "env": [
            {"name": "RABBITMQ_DEFAULT_USER", "value": "z2m"},
            meta.secret_env(p, "RABBITMQ_DEFAULT_PASS", "queue-password"),
        ],
        "ports": [
            {"name": "amqp", "containerPort": AMQP_PORT},
            {"name": "management", "containerPort": AMQP_MANAGEMENT_PORT},
        ],
        "readinessProbe": {"tcpSocket": {"port": AMQP_PORT}, "periodSeconds": 10},
        "resources": workloads.footprint("queue", p.spec.queue.resources),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/rabbitmq"},
            {
                "name": "z2m-scripts",
                "mountPath": "/etc/rabbitmq/conf.d/20-z2m.conf",
                "subPath": "rabbitmq.conf",
                "readOnly": True,
            },
        ],
    }
    return [
        workloads.statefulset(
            p,
            owner,
            "queue",
            "queue",
            1,
            [container],
            p.spec.queue.storage,
            run_as=catalog.SERVER_UIDS["rabbitmq"],
        ),
        workloads.service(
            p,
            owner,
            meta.child(p.name, "queue"),
            "queue",
            [("amqp", AMQP_PORT, AMQP_PORT), ("management", AMQP_MANAGEMENT_PORT, 15672)],
        ),
    ]
