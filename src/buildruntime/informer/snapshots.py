"""Immutable, trimmed views of pods and events: what the runtime reads, nothing more.

A pod as the API server sends it carries managedFields, volumes, tolerations, full
container specs and more. The snapshots here are msgspec structs that declare only the
fields the step APIs and diagnosis read, in the wire's own shape, so a watch line is
decoded straight into a snapshot (:mod:`buildruntime.informer.decoders`): every other
field is skipped by the decoder without building an object for it, nothing is copied
from a dict afterwards, and a cached pod costs a few KiB instead of the ~46 KiB of the
decoded dict (or ~157 KiB of the client's model object). The structs are frozen and
``gc=False`` (never walked by the cyclic garbage collector: they hold no cycles), and
never mutated: a change is a new snapshot, so readers can hold one without locking.
What the runtime derives from the wire shape (a container's phase, whether a pod is
scheduled) is computed by properties, on the few reads there are, not on every decode.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ContainerPhase = Literal["waiting", "running", "terminated"]


class _Frozen(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """Base of every wire struct: immutable, untracked by the GC, camelCase on the wire."""


class ContainerStateDetail(_Frozen, frozen=True):
    """The content of ``state.waiting``, ``state.running`` or ``state.terminated``."""

    container_id: str | None = msgspec.field(default=None, name="containerID")
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


_NO_DETAIL = ContainerStateDetail()


class ContainerState(_Frozen, frozen=True):
    waiting: ContainerStateDetail | None = None
    running: ContainerStateDetail | None = None
    terminated: ContainerStateDetail | None = None


class ContainerStatus(_Frozen, frozen=True):
    """One entry of ``status.containerStatuses``."""

    name: str = ""
    image: str = ""
    image_id: str = msgspec.field(default="", name="imageID")
    status_container_id: str | None = msgspec.field(default=None, name="containerID")
    restart_count: int = 0
    ready: bool = False
    """The container passes its readinessProbe (a service's ports accept connections)."""
    state: ContainerState = ContainerState()
    last_state: ContainerState = ContainerState()
    """The previous instance's end, after a restart (an image patch restarts a container
    whatever the pod's restartPolicy)."""

    @property
    def phase(self) -> ContainerPhase:
        state = self.state
        if state.terminated is not None:
            return "terminated"
        if state.running is not None:
            return "running"
        return "waiting"

    @property
    def detail(self) -> ContainerStateDetail:
        """The detail of the current phase (terminated wins over running over waiting,
        as the kubelet reports only one, but a hand-written status may carry several)."""
        state = self.state
        return state.terminated or state.running or state.waiting or _NO_DETAIL

    @property
    def container_id(self) -> str | None:
        return self.status_container_id or self.detail.container_id

    @property
    def reason(self) -> str | None:
        return self.detail.reason

    @property
    def message(self) -> str | None:
        return self.detail.message

    @property
    def exit_code(self) -> int | None:
        return self.detail.exit_code

    @property
    def started_at(self) -> str | None:
        return self.detail.started_at

    @property
    def finished_at(self) -> str | None:
        return self.detail.finished_at


class PodMetadata(_Frozen, frozen=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    deletion_timestamp: str | None = None
    # Collections are nullable: Go writes an empty slice or map that lacks omitempty as
    # null (a pods BOOKMARK carries "spec": {"containers": null}), and a schema that
    # refused null would drop the whole event.
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class SpecContainer(_Frozen, frozen=True):
    name: str = ""
    image: str = ""


class PodSpecView(_Frozen, frozen=True):
    node_name: str | None = None
    containers: tuple[SpecContainer, ...] | None = None


class PodCondition(_Frozen, frozen=True):
    type: str = ""
    status: str = ""
    reason: str | None = None
    message: str | None = None


class PodStatusView(_Frozen, frozen=True):
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    conditions: tuple[PodCondition, ...] | None = None
    container_statuses: tuple[ContainerStatus, ...] | None = None


class PodSnapshot(_Frozen, frozen=True):
    """The fields of a pod the runtime reads."""

    metadata: PodMetadata = PodMetadata()
    spec: PodSpecView = PodSpecView()
    status: PodStatusView = PodStatusView()

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def uid(self) -> str:
        return self.metadata.uid

    @property
    def resource_version(self) -> str:
        return self.metadata.resource_version

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None

    @property
    def node_name(self) -> str | None:
        return self.spec.node_name

    @property
    def phase(self) -> str | None:
        return self.status.phase

    @property
    def reason(self) -> str | None:
        return self.status.reason

    @property
    def message(self) -> str | None:
        return self.status.message

    @property
    def containers(self) -> tuple[ContainerStatus, ...]:
        return self.status.container_statuses or ()

    @property
    def spec_images(self) -> dict[str, str]:
        """Each container's image as the spec names it, by container name."""
        return {container.name: container.image for container in self.spec.containers or ()}

    @property
    def scheduled(self) -> bool:
        if self.spec.node_name:
            return True
        return any(
            c.type == "PodScheduled" and c.status == "True" for c in self.status.conditions or ()
        )

    @property
    def unschedulable_message(self) -> str | None:
        """Why the scheduler could not place the pod, while it is not placed."""
        if self.scheduled:
            return None
        for condition in self.status.conditions or ():
            if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                return condition.message or "the pod is unschedulable"
        return None

    @property
    def disruption_message(self) -> str | None:
        """Why the pod is being disrupted (evicted, preempted), from DisruptionTarget."""
        for condition in self.status.conditions or ():
            if condition.type == "DisruptionTarget" and condition.status == "True":
                return condition.message or condition.reason
        return None

    def spec_image(self, container: str) -> str | None:
        for spec in self.spec.containers or ():
            if spec.name == container:
                return spec.image
        return None

    def container(self, name: str) -> ContainerStatus | None:
        for status in self.status.container_statuses or ():
            if status.name == name:
                return status
        return None

    def label(self, key: str) -> str | None:
        labels = self.metadata.labels
        return labels.get(key) if labels else None

    def annotation(self, key: str) -> str | None:
        annotations = self.metadata.annotations
        return annotations.get(key) if annotations else None


class EventMetadata(_Frozen, frozen=True):
    name: str = ""
    uid: str = ""
    resource_version: str = ""


class InvolvedObject(_Frozen, frozen=True):
    name: str = ""
    uid: str | None = None
    field_path: str | None = None


class EventSeries(_Frozen, frozen=True):
    count: int | None = None
    last_observed_time: str | None = None


class EventSnapshot(_Frozen, frozen=True):
    """The fields of a core/v1 Event the runtime reads."""

    metadata: EventMetadata = EventMetadata()
    involved_object: InvolvedObject = InvolvedObject()
    event_type: str | None = msgspec.field(default=None, name="type")
    reason_text: str | None = msgspec.field(default=None, name="reason")
    message_text: str | None = msgspec.field(default=None, name="message")
    event_count: int | None = msgspec.field(default=None, name="count")
    series: EventSeries | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    event_time: str | None = None

    @property
    def uid(self) -> str:
        return self.metadata.uid or self.metadata.name

    @property
    def resource_version(self) -> str:
        return self.metadata.resource_version

    @property
    def pod_name(self) -> str:
        return self.involved_object.name

    @property
    def pod_uid(self) -> str | None:
        return self.involved_object.uid

    @property
    def container(self) -> str | None:
        """The container named by involvedObject.fieldPath ``spec.containers{name}``
        (initContainers and ephemeralContainers are never steps, so they give None)."""
        path = self.involved_object.field_path
        if path and path.startswith("spec.containers{") and path.endswith("}"):
            return path[len("spec.containers{") : -1]
        return None

    @property
    def type(self) -> str:
        return self.event_type or "Normal"

    @property
    def reason(self) -> str:
        return self.reason_text or ""

    @property
    def message(self) -> str:
        return self.message_text or ""

    @property
    def count(self) -> int:
        series = self.series.count if self.series is not None else None
        return series or self.event_count or 1

    @property
    def first_seen(self) -> str | None:
        return self.first_timestamp or self.event_time

    @property
    def last_seen(self) -> str | None:
        observed = self.series.last_observed_time if self.series is not None else None
        return observed or self.last_timestamp or self.event_time


def pod_snapshot(obj: dict[str, Any]) -> PodSnapshot:
    """Trim a pod (decoded JSON, e.g. an item of a list) to a :class:`PodSnapshot`."""
    return msgspec.convert(obj, PodSnapshot, strict=False)


def event_snapshot(obj: dict[str, Any]) -> EventSnapshot:
    """Trim a core/v1 Event (decoded JSON) to an :class:`EventSnapshot`."""
    return msgspec.convert(obj, EventSnapshot, strict=False)
