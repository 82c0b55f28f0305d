"""Kafka at stage 5 (event streaming): its StatefulSet and headless Service.

One KRaft node, broker and controller in one process, its log on a kept volume. The
environment is the official apache/kafka image's (every KAFKA_FOO_BAR is the
property foo.bar), so that image runs from the same objects as z2m's own
(hack/images/kafka). The cluster id is derived from the ScalingStage's uid: the same
on every boot, and formatted into the volume only on the first.

The workers that form the consumer group are the app's pods: `app.stream_workers`
builds them. The topic is made by the app itself, with `spec.streaming.partitions`.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
DATA_DIR = "/var/lib/kafka/data"
HEAP = "-Xmx384m -Xms384m"


def bootstrap_servers(p: plan.Plan) -> str:
    """Where the app and workers find Kafka: the headless Service, which names the pod."""
    return f"{meta.child(p.name, 'streaming')}:{KAFKA_PORT}"


def cluster_id(owner: meta.Owner) -> str:
    """A Kafka cluster id (22 characters of URL-safe base64) fixed by the owner's uid."""
    try:
        raw = uuid.UUID(owner.uid).bytes
    except ValueError:  # `z2m render` of a file has no uid
        raw = uuid.uuid5(uuid.NAMESPACE_URL, f"z2m:{owner.name}").bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Kafka's StatefulSet and headless Service, where the plan streams events."""
    if not p.event_streaming:
        return []
    service = meta.child(p.name, "streaming")
    # Clients reach the broker by the name it advertises: the pod's own DNS name.
    advertised = f"$(POD_NAME).{service}.{p.namespace}.svc"
    controller = f"127.0.0.1:{CONTROLLER_PORT}"
    settings = {
        "CLUSTER_ID": cluster_id(owner),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{KAFKA_PORT},CONTROLLER://{controller}",
        "KAFKA_ADVERTISED_LISTENERS": (
            f"PLAINTEXT://{advertised}:{KAFKA_PORT},CONTROLLER://{controller}"
        ),
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS": controller,
        "KAFKA_LOG_DIRS": DATA_DIR,
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        # The app makes its topic with the partitions asked for; a typo makes none.
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_HEAP_OPTS": HEAP,
    }
    container: Obj = {
        "name": "kafka",
        "image": p.spec.streaming.image,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *({"name": k, "value": v} for k, v in settings.items()),
        ],
        "ports": [{"name": "kafka", "containerPort": KAFKA_PORT}],
        "readinessProbe": {"tcpSocket": {"port": KAFKA_PORT}, "periodSeconds": 5},
        "resources": workloads.footprint("streaming", p.spec.streaming.resources),
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/kafka"}],
    }
    return [
        workloads.statefulset(
            p,
            owner,
            "streaming",
            "streaming",
            1,
            [container],
            p.spec.streaming.storage,
            run_as=catalog.SERVER_UIDS["kafka"],
        ),
        workloads.service(
            p, owner, service, "streaming", [("kafka", KAFKA_PORT, KAFKA_PORT)], headless=True
        ),
    ]
