"""The pod status the kubelet reports, computed from what runs on the node.

Mimics ``convertToAPIContainerStatuses``, ``getPhase`` and the condition generators of
``pkg/kubelet``: the newest runtime container of a name gives its state, the one before
it ``lastState``; a start failure (ErrImagePull, ImagePullBackOff, CrashLoopBackOff...)
shows as a waiting state only when the kubelet will try again (never for an exited
container under restartPolicy Never); the phase is Pending while a container waits to
start, Running while one runs, and Succeeded/Failed once all have terminated and none
will restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from buildruntime.testing import objects
from buildruntime.testing.objects import JSON
from buildruntime.testing.process import Instance

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class ContainerRecord:
    """What the node knows of one container of the pod spec."""

    name: str
    instances: list[Instance] = field(default_factory=list)
    waiting: tuple[str, str] | None = None
    """The reason and message of the last start failure (the kubelet's reason cache)."""
    restarting: bool = False
    """Killed for a spec change; the new instance is being started."""
    ready_instance: Instance | None = None
    """The instance whose readiness probe last passed (a restart makes a new one)."""

    @property
    def current(self) -> Instance | None:
        return self.instances[-1] if self.instances else None

    def will_restart(self, restart_policy: str) -> bool:
        """``ShouldContainerBeRestarted``: whether the kubelet will start it (again)."""
        current = self.current
        if current is None or current.state == "created" or self.restarting:
            return True
        if current.running:
            return False
        if restart_policy == "Never":
            return False
        if restart_policy == "OnFailure":
            return current.exit_code != 0
        return True


def terminated_state(instance: Instance) -> JSON:
    state: JSON = {
        "exitCode": instance.exit_code,
        "reason": instance.reason,
        "startedAt": instance.started_at,
        "finishedAt": instance.finished_at,
        "containerID": instance.container_id,
    }
    if instance.message:
        state["message"] = instance.message
    return state


def container_status(record: ContainerRecord, spec: JSON, restart_policy: str) -> JSON:
    current = record.current
    status: JSON = {
        "name": record.name,
        "state": {"waiting": {"reason": "ContainerCreating"}},
        "lastState": {},
        "ready": False,
        "restartCount": 0,
        "image": spec.get("image", ""),
        "imageID": "",
        "started": False,
    }
    if current is not None:
        status["image"] = current.reported_image
        status["imageID"] = current.image_id
        status["containerID"] = current.container_id
        status["restartCount"] = len(record.instances) - 1
        if current.running:
            status["state"] = {"running": {"startedAt": current.started_at}}
            # Without a readinessProbe a running container is ready; with one, once
            # the probe passed for this instance.
            status["ready"] = "readinessProbe" not in spec or record.ready_instance is current
            status["started"] = True
        elif current.terminated:
            status["state"] = {"terminated": terminated_state(current)}
        if len(record.instances) > 1:
            previous = record.instances[-2]
            if previous.terminated:
                status["lastState"] = {"terminated": terminated_state(previous)}
    if record.waiting is not None and not record.restarting and record.will_restart(restart_policy):
        reason, message = record.waiting
        if "terminated" in status["state"]:
            status["lastState"] = status["state"]
        waiting: JSON = {"reason": reason}
        if message:
            waiting["message"] = message
        status["state"] = {"waiting": waiting}
    # Key order as the kubelet serialises a ContainerStatus.
    order = (
        "name",
        "state",
        "lastState",
        "ready",
        "restartCount",
        "image",
        "imageID",
        "containerID",
        "started",
    )
    return {key: status[key] for key in order if key in status}


def phase(
    statuses: Sequence[JSON],
    records: Sequence[ContainerRecord],
    restart_policy: str,
    *,
    terminal: bool,
) -> str:
    """``getPhase``. ``terminal``: the pod is being deleted and its containers are done.

    A container being restarted for a spec change counts as running: the kubelet kills
    and starts it within one sync, so the pod never looks finished in between.
    """
    waiting = running = stopped = succeeded = 0
    for status, record in zip(statuses, records, strict=True):
        state = status["state"]
        if record.restarting or "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif status.get("lastState", {}).get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(
    previous: dict[str, JSON],
    type: str,
    ok: bool,
    reason: str | None = None,
    message: str | None = None,
) -> JSON:
    status = "True" if ok else "False"
    before = previous.get(type)
    condition: JSON = {
        "type": type,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": (
            before.get("lastTransitionTime")
            if before and before.get("status") == status
            else objects.api_time()
        ),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def conditions(
    previous: list[JSON], statuses: Sequence[JSON], pod_phase: str, *, sandbox: bool
) -> list[JSON]:
    """The kubelet's pod conditions, in the order it reports them."""
    before = {c.get("type", ""): c for c in previous}
    unready = [s["name"] for s in statuses if not s.get("ready")]
    completed = pod_phase in TERMINAL_PHASES
    reason: str | None = None
    message: str | None = None
    if completed:
        reason = "PodCompleted" if pod_phase == "Succeeded" else "PodFailed"
    elif unready:
        reason = "ContainersNotReady"
        message = f"containers with unready status: [{' '.join(unready)}]"

    ready = not unready and not completed
    result = [
        _condition(before, "PodReadyToStartContainers", sandbox),
        _condition(
            before, "Initialized", True, "PodCompleted" if pod_phase == "Succeeded" else None
        ),
        _condition(before, "Ready", ready, reason, message),
        _condition(before, "ContainersReady", ready, reason, message),
    ]
    if "PodScheduled" in before:
        result.append(before["PodScheduled"])
    return result
