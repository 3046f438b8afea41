"""Immutable, trimmed views of pods and events: what the runtime reads, nothing more.

A pod as the API server sends it carries managedFields, volumes, tolerations, full
container specs and more; the cache keeps only the fields the step APIs and diagnosis
read, in slotted frozen dataclasses, so a cached pod costs a few KiB instead of the
~46 KiB of the decoded dict (or ~157 KiB of the client's model object). Snapshots are
never mutated: a change is a new snapshot, so readers can hold one without locking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ContainerPhase = Literal["waiting", "running", "terminated"]


@dataclass(frozen=True, slots=True)
class ContainerSnapshot:
    """One entry of ``status.containerStatuses``."""

    name: str
    image: str
    image_id: str
    container_id: str | None
    restart_count: int
    phase: ContainerPhase
    reason: str | None
    message: str | None
    exit_code: int | None
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True, slots=True)
class PodSnapshot:
    """The fields of a pod the runtime reads."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    deleting: bool
    node_name: str | None
    phase: str | None
    reason: str | None
    message: str | None
    scheduled: bool
    unschedulable_message: str | None
    disruption_message: str | None
    spec_images: tuple[tuple[str, str], ...]
    containers: tuple[ContainerSnapshot, ...]

    def spec_image(self, container: str) -> str | None:
        for name, image in self.spec_images:
            if name == container:
                return image
        return None

    def container(self, name: str) -> ContainerSnapshot | None:
        for status in self.containers:
            if status.name == name:
                return status
        return None

    def label(self, key: str) -> str | None:
        for name, value in self.labels:
            if name == key:
                return value
        return None

    def annotation(self, key: str) -> str | None:
        for name, value in self.annotations:
            if name == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class EventSnapshot:
    """The fields of a core/v1 Event the runtime reads."""

    uid: str
    resource_version: str
    pod_name: str
    pod_uid: str | None
    container: str | None  # from involvedObject.fieldPath "spec.containers{name}"
    type: str
    reason: str
    message: str
    count: int
    first_seen: str | None
    last_seen: str | None


def _container(status: dict[str, Any]) -> ContainerSnapshot:
    state = status.get("state") or {}
    phase: ContainerPhase
    if "terminated" in state and state["terminated"] is not None:
        phase, detail = "terminated", state["terminated"]
    elif "running" in state and state["running"] is not None:
        phase, detail = "running", state["running"]
    else:
        phase, detail = "waiting", state.get("waiting") or {}
    return ContainerSnapshot(
        name=status.get("name", ""),
        image=status.get("image", ""),
        image_id=status.get("imageID", ""),
        container_id=status.get("containerID") or detail.get("containerID"),
        restart_count=int(status.get("restartCount") or 0),
        phase=phase,
        reason=detail.get("reason"),
        message=detail.get("message"),
        exit_code=detail.get("exitCode"),
        started_at=detail.get("startedAt"),
        finished_at=detail.get("finishedAt"),
    )


def pod_snapshot(obj: dict[str, Any]) -> PodSnapshot:
    """Trim a pod (decoded JSON) to a :class:`PodSnapshot`."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    scheduled = bool(spec.get("nodeName"))
    unschedulable: str | None = None
    disruption: str | None = None
    for condition in status.get("conditions") or ():
        kind = condition.get("type")
        if kind == "PodScheduled":
            if condition.get("status") == "True":
                scheduled = True
            elif condition.get("reason") == "Unschedulable":
                unschedulable = condition.get("message") or "the pod is unschedulable"
        elif kind == "DisruptionTarget" and condition.get("status") == "True":
            disruption = condition.get("message") or condition.get("reason")
    return PodSnapshot(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        labels=tuple((meta.get("labels") or {}).items()),
        annotations=tuple(
            (k, v)
            for k, v in (meta.get("annotations") or {}).items()
            if k.startswith("buildruntime.io/")
        ),
        deleting=meta.get("deletionTimestamp") is not None,
        node_name=spec.get("nodeName"),
        phase=status.get("phase"),
        reason=status.get("reason"),
        message=status.get("message"),
        scheduled=scheduled,
        unschedulable_message=None if scheduled else unschedulable,
        disruption_message=disruption,
        spec_images=tuple(
            (c.get("name", ""), c.get("image", "")) for c in spec.get("containers") or ()
        ),
        containers=tuple(_container(s) for s in status.get("containerStatuses") or ()),
    )


def _field_path_container(field_path: str | None) -> str | None:
    # "spec.containers{name}" (also initContainers/ephemeralContainers, ignored as non-steps)
    if field_path and field_path.startswith("spec.containers{") and field_path.endswith("}"):
        return field_path[len("spec.containers{") : -1]
    return None


def event_snapshot(obj: dict[str, Any]) -> EventSnapshot:
    """Trim a core/v1 Event (decoded JSON) to an :class:`EventSnapshot`."""
    meta = obj.get("metadata") or {}
    involved = obj.get("involvedObject") or {}
    series = obj.get("series") or {}
    count = int(series.get("count") or obj.get("count") or 1)
    return EventSnapshot(
        uid=meta.get("uid") or meta.get("name", ""),
        resource_version=meta.get("resourceVersion", ""),
        pod_name=involved.get("name", ""),
        pod_uid=involved.get("uid"),
        container=_field_path_container(involved.get("fieldPath")),
        type=obj.get("type") or "Normal",
        reason=obj.get("reason") or "",
        message=obj.get("message") or "",
        count=count,
        first_seen=obj.get("firstTimestamp") or obj.get("eventTime"),
        last_seen=series.get("lastObservedTime")
        or obj.get("lastTimestamp")
        or obj.get("eventTime"),
    )
