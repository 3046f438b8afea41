"""The scheduler of a one-node cluster.

Mimics kube-scheduler's observable behaviour: a new pod is bound within milliseconds
(``spec.nodeName`` and condition PodScheduled=True in one write, then a ``Scheduled``
event from ``default-scheduler``). When the pod cannot be placed (the
``unschedulable`` fault, a ``nodeSelector`` the node's labels do not satisfy, or
requests that do not fit what the node has left: the sum of its containers' requests,
a request defaulting to its limit, against the node's allocatable less the requests of
the pods already bound and not finished) it gets
PodScheduled=False/Unschedulable and a Warning ``FailedScheduling`` event, retried about
every second (the event's count rises) until it fits.
"""

from __future__ import annotations

import anyio

from buildruntime.testing import objects
from buildruntime.testing.apiserver import ADDED, APIServer
from buildruntime.testing.events import SCHEDULER, WARNING, EventRecorder
from buildruntime.testing.faults import Faults
from buildruntime.testing.objects import JSON
from buildruntime.testing.process import parse_quantity
from buildruntime.testing.tasks import Notifier, SystemTasks

RETRY_SECONDS = 1.0


def set_condition(status: JSON, condition: JSON) -> None:
    """Set a pod condition, keeping its ``lastTransitionTime`` when the status is the same."""
    conditions: list[JSON] = status.setdefault("conditions", [])
    for index, existing in enumerate(conditions):
        if existing.get("type") == condition["type"]:
            if existing.get("status") == condition["status"]:
                condition["lastTransitionTime"] = existing.get("lastTransitionTime")
            conditions[index] = condition
            return
    conditions.append(condition)


class Scheduler:
    """Binds pods to the one fake node."""

    def __init__(
        self,
        server: APIServer,
        recorder: EventRecorder,
        faults: Faults,
        tasks: SystemTasks,
        node_name: str,
        allocatable: dict[str, str] | None = None,
    ) -> None:
        self._server = server
        self.allocatable = {
            name: parse_quantity(amount)
            for name, amount in (allocatable or {"cpu": "4", "memory": "16Gi"}).items()
        }
        self._recorder = recorder
        self._faults = faults
        self._tasks = tasks
        self.node_name = node_name
        self.node_labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        self.changed = Notifier()

    def observe(self, resource: str, type: str, obj: JSON, previous: JSON | None) -> None:
        if resource == "pods" and type == ADDED and not obj.get("spec", {}).get("nodeName"):
            meta = obj["metadata"]
            self._tasks.spawn(
                self._schedule, meta["namespace"], meta["name"], meta["uid"], name="fake-scheduler"
            )

    def _unschedulable_because(self, pod: JSON) -> str | None:
        if self._faults.unschedulable_message is not None:
            return self._faults.unschedulable_message
        selector = pod.get("spec", {}).get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
        wanted = pod_requests(pod)
        used: dict[str, float] = {}
        for (_, _), other in self._server.pods.objects.items():
            if other["spec"].get("nodeName") != self.node_name:
                continue
            if (other.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for name, amount in pod_requests(other).items():
                used[name] = used.get(name, 0.0) + amount
        short = sorted(
            name
            for name, amount in wanted.items()
            if name in self.allocatable and used.get(name, 0.0) + amount > self.allocatable[name]
        )
        if short:
            reasons = ", ".join(f"1 Insufficient {name}" for name in short)
            return (
                f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available: "
                "1 No preemption victims found for incoming pod."
            )
        return None

    async def _schedule(self, namespace: str, name: str, uid: str) -> None:
        await anyio.sleep(0.001)
        while True:
            pod = self._server.get("pods", namespace, name)
            if (
                pod is None
                or pod["metadata"]["uid"] != uid
                or pod["spec"].get("nodeName")
                or pod["metadata"].get("deletionTimestamp")
            ):
                return
            why = self._unschedulable_because(pod)
            updated = objects.clone(pod)
            if why is None:
                updated["spec"]["nodeName"] = self.node_name
                set_condition(
                    updated["status"],
                    {
                        "type": "PodScheduled",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": objects.api_time(),
                    },
                )
                objects.record_manager(
                    updated,
                    "kube-scheduler",
                    {"status": {"conditions": updated["status"]["conditions"]}},
                    "status",
                )
                self._server.write("pods", updated)
                self._recorder.record(
                    updated,
                    "Scheduled",
                    f"Successfully assigned {namespace}/{name} to {self.node_name}",
                    component=SCHEDULER,
                )
                return
            set_condition(
                updated["status"],
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "lastProbeTime": None,
                    "lastTransitionTime": objects.api_time(),
                    "reason": "Unschedulable",
                    "message": why,
                },
            )
            if updated["status"] != pod["status"]:
                objects.record_manager(
                    updated,
                    "kube-scheduler",
                    {"status": {"conditions": updated["status"]["conditions"]}},
                    "status",
                )
                self._server.write("pods", updated)
            self._recorder.record(
                updated, "FailedScheduling", why, type=WARNING, component=SCHEDULER
            )
            await self.changed.wait(RETRY_SECONDS)


def pod_requests(pod: JSON) -> dict[str, float]:
    """What the scheduler reserves for a pod: the sum of its containers' requests, a
    missing request defaulting to the container's limit (the API server's defaulting)."""
    total: dict[str, float] = {}
    for container in pod.get("spec", {}).get("containers") or []:
        resources = container.get("resources") or {}
        effective = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, amount in effective.items():
            total[name] = total.get(name, 0.0) + parse_quantity(str(amount))
    return total
