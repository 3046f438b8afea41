"""A worker's identity and its Lease: the name, the manifest, the owner reference every
build pod carries, and what the Lease's times say about its holder.

A worker (one :class:`~buildruntime.Runtime`) holds a ``coordination.k8s.io/v1`` Lease
named after its ``worker_id`` for as long as it runs. Every pod it creates carries the
worker's id as a label and an ownerReference to that Lease, so when the Lease goes (the
worker's clean exit, or a reaper that found it unrenewed) Kubernetes' garbage collector
removes the pods, and the pods' Secrets with them.
"""

from __future__ import annotations

import math
import os
import re
import socket
from datetime import UTC, datetime

from buildruntime.cluster.port import JSON
from buildruntime.errors import SpecError
from buildruntime.labels import MANAGED_BY, MANAGED_BY_VALUE, WORKER
from buildruntime.names import dns1123_label_problem

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_PREFIX = "buildruntime-worker-"


def default_worker_id() -> str:
    """``<host name>-<process id>`` as a DNS-1123 label: lowercased, other characters
    replaced by '-', the host part shortened so that the whole fits 63 characters."""
    suffix = f"-{os.getpid()}"
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    host = host[: 63 - len(suffix)].strip("-") or "worker"
    return host + suffix


def check_worker_id(value: object) -> str:
    """``value`` if it is a valid worker id (a DNS-1123 label: it is a label value and
    part of the Lease's name); :class:`SpecError` naming ``worker_id`` otherwise."""
    problem = dns1123_label_problem(value)
    if problem:
        raise SpecError("worker_id", problem)
    assert isinstance(value, str)
    return value


def lease_name(worker_id: str) -> str:
    """The name of the worker's Lease. A worker id is at most 63 characters, so the
    name (at most 83) is always a valid object name: no shortening is ever needed."""
    return LEASE_PREFIX + worker_id


def micro_time(at: datetime | None = None) -> str:
    """A ``metav1.MicroTime`` (RFC 3339, microseconds, UTC), as a Lease's times are."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object) -> datetime | None:
    """A Lease's ``renewTime``/``acquireTime`` (or an object's creationTimestamp); None
    when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration_seconds(lease_duration: float) -> int:
    """``leaseDurationSeconds`` is a whole number: never shorter than the setting."""
    return max(1, math.ceil(lease_duration))


def render_lease(worker_id: str, namespace: str, lease_duration: float) -> JSON:
    """The worker's Lease as created: held by the worker, renewed now."""
    now = micro_time()
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": lease_name(worker_id),
            "namespace": namespace,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, WORKER: worker_id},
        },
        "spec": {
            "holderIdentity": worker_id,
            "leaseDurationSeconds": duration_seconds(lease_duration),
            "acquireTime": now,
            "renewTime": now,
        },
    }


def renewal(worker_id: str, lease_duration: float) -> JSON:
    """The merge patch that renews the worker's Lease (and takes it over, for a worker
    restarted under the same id)."""
    return {
        "spec": {
            "holderIdentity": worker_id,
            "leaseDurationSeconds": duration_seconds(lease_duration),
            "renewTime": micro_time(),
        }
    }


def owner_reference(lease: JSON) -> JSON:
    """The ownerReference a build pod carries to the worker's Lease. Not a controller
    reference and no ``blockOwnerDeletion``: deleting the Lease must not wait for its
    pods (the garbage collector deletes them in the background)."""
    meta = lease["metadata"]
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "name": meta["name"],
        "uid": meta["uid"],
    }


def last_renewed(lease: JSON) -> datetime | None:
    """When the holder last renewed the Lease, by the holder's clock (renewTime, else
    acquireTime, else when it was created)."""
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    for value in (spec.get("renewTime"), spec.get("acquireTime"), meta.get("creationTimestamp")):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return None


def declared_duration(lease: JSON) -> float:
    """The Lease's ``leaseDurationSeconds`` (0 when missing or malformed)."""
    value = (lease.get("spec") or {}).get("leaseDurationSeconds")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
