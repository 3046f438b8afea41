"""A slim typed schema of a pod watch event, for msgspec: only the fields a
``PodSnapshot`` reads. msgspec skips every other field (managedFields, the rest of the
spec and status) without building objects for it, and ``gc=False`` structs are never
walked by the cyclic garbage collector. Used by informer_throughput.py to show what
decoding only what is kept would cost."""

from __future__ import annotations

import msgspec

from buildruntime.informer.snapshots import ContainerPhase, ContainerSnapshot, PodSnapshot


class Detail(msgspec.Struct, gc=False):
    containerID: str | None = None
    reason: str | None = None
    message: str | None = None
    exitCode: int | None = None
    startedAt: str | None = None
    finishedAt: str | None = None


class State(msgspec.Struct, gc=False):
    waiting: Detail | None = None
    running: Detail | None = None
    terminated: Detail | None = None


class ContainerStatus(msgspec.Struct, gc=False):
    name: str = ""
    image: str = ""
    imageID: str = ""
    containerID: str | None = None
    restartCount: int = 0
    state: State | None = None


class Condition(msgspec.Struct, gc=False):
    type: str = ""
    status: str = ""
    reason: str | None = None
    message: str | None = None


class Status(msgspec.Struct, gc=False):
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = []
    containerStatuses: list[ContainerStatus] = []


class Container(msgspec.Struct, gc=False):
    name: str = ""
    image: str = ""


class Spec(msgspec.Struct, gc=False):
    nodeName: str | None = None
    containers: list[Container] = []


class Meta(msgspec.Struct, gc=False):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    deletionTimestamp: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Pod(msgspec.Struct, gc=False):
    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: Spec = msgspec.field(default_factory=Spec)
    status: Status = msgspec.field(default_factory=Status)


class WatchEvent(msgspec.Struct, gc=False):
    type: str
    object: Pod


decode = msgspec.json.Decoder(WatchEvent).decode


def _container(status: ContainerStatus) -> ContainerSnapshot:
    state = status.state or State()
    phase: ContainerPhase
    if state.terminated is not None:
        phase, detail = "terminated", state.terminated
    elif state.running is not None:
        phase, detail = "running", state.running
    else:
        phase, detail = "waiting", state.waiting or Detail()
    return ContainerSnapshot(
        name=status.name,
        image=status.image,
        image_id=status.imageID,
        container_id=status.containerID or detail.containerID,
        restart_count=status.restartCount,
        phase=phase,
        reason=detail.reason,
        message=detail.message,
        exit_code=detail.exitCode,
        started_at=detail.startedAt,
        finished_at=detail.finishedAt,
    )


def to_snapshot(pod: Pod) -> PodSnapshot:
    """The same PodSnapshot as ``buildruntime.informer.snapshots.pod_snapshot``, from
    the slim structs instead of a decoded dict."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    scheduled = bool(spec.nodeName)
    unschedulable: str | None = None
    disruption: str | None = None
    for condition in status.conditions:
        if condition.type == "PodScheduled":
            if condition.status == "True":
                scheduled = True
            elif condition.reason == "Unschedulable":
                unschedulable = condition.message or "the pod is unschedulable"
        elif condition.type == "DisruptionTarget" and condition.status == "True":
            disruption = condition.message or condition.reason
    return PodSnapshot(
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        labels=tuple(meta.labels.items()),
        annotations=tuple(
            (k, v) for k, v in meta.annotations.items() if k.startswith("buildruntime.io/")
        ),
        deleting=meta.deletionTimestamp is not None,
        node_name=spec.nodeName,
        phase=status.phase,
        reason=status.reason,
        message=status.message,
        scheduled=scheduled,
        unschedulable_message=None if scheduled else unschedulable,
        disruption_message=disruption,
        spec_images=tuple((c.name, c.image) for c in spec.containers),
        containers=tuple(_container(s) for s in status.containerStatuses),
    )


def decode_snapshot(line: bytes) -> PodSnapshot:
    """One watch line straight to a PodSnapshot, never building the full dict."""
    return to_snapshot(decode(line).object)
