"""z2m: a Kubernetes operator that grows an application from zero to a million users.

The package is layered: `catalog`, `api`, `plan`, `builders` and `decide` are
pure (no client, no Kopf, no clock); `kube` does the I/O; `reconcile` ties
them together; `handlers` wires that into Kopf, gated by `leader` (a Lease
election) and quieted by `outage` (one line per lost API); `cli` is the command
line.
"""

__version__ = "0.1.0"
