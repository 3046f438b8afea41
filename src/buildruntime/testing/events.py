"""core/v1 Events as the kubelet's and scheduler's event recorders post them.

Mimics ``client-go/tools/record``: an event about a pod (``fieldPath``
``spec.containers{name}`` when it concerns one container) named ``<pod>.<hex>``; an
identical event repeated (same object, reason, message, type and source) is not posted
again but updated in place with ``count + 1`` and a new ``lastTimestamp``, as the
recorder's EventCorrelator does, which a watch sees as MODIFIED.
"""

from __future__ import annotations

import time
import uuid

from buildruntime.testing import objects
from buildruntime.testing.apiserver import APIServer
from buildruntime.testing.objects import JSON

NORMAL = "Normal"
WARNING = "Warning"
KUBELET = "kubelet"
SCHEDULER = "default-scheduler"

_AggregationKey = tuple[str, str, str, str, str, str, str]


class EventRecorder:
    """Posts events to the fake API server, aggregating repeats."""

    def __init__(self, server: APIServer, node_name: str) -> None:
        self._server = server
        self._node_name = node_name
        self._names: dict[_AggregationKey, str] = {}
        self._last_suffix = 0

    def _name(self, pod_name: str) -> str:
        suffix = max(time.time_ns(), self._last_suffix + 1)
        self._last_suffix = suffix
        return f"{pod_name}.{suffix:x}"

    def record(
        self,
        pod: JSON,
        reason: str,
        message: str,
        *,
        type: str = NORMAL,
        component: str = KUBELET,
        container: str | None = None,
    ) -> None:
        """Post (or aggregate) one event about ``pod`` or one of its containers."""
        meta = pod["metadata"]
        namespace, pod_name, uid = meta["namespace"], meta["name"], meta["uid"]
        field_path = f"spec.containers{{{container}}}" if container else ""
        key = (namespace, uid, field_path, reason, message, type, component)
        now = objects.api_time()
        name = self._names.get(key)
        existing = None if name is None else self._server.get("events", namespace, name)
        if existing is not None:
            updated = objects.evolve(
                existing, count=int(existing.get("count", 1)) + 1, lastTimestamp=now
            )
            self._server.write("events", updated)
            return
        name = self._name(pod_name)
        self._names[key] = name
        involved: JSON = {
            "kind": "Pod",
            "namespace": namespace,
            "name": pod_name,
            "uid": uid,
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        source: JSON = {"component": component}
        if component == KUBELET:
            source["host"] = self._node_name
        event: JSON = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": self._node_name if component == KUBELET else "",
        }
        objects.record_manager(
            event, component, {k: v for k, v in event.items() if k != "metadata"}
        )
        self._server.write("events", event)
