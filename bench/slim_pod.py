"""A slim typed schema of a pod watch event, for msgspec: only the fields a
``PodSnapshot`` reads. msgspec skips every other field (managedFields, the rest of the
spec and status) without building objects for it, and ``gc=False`` structs are never
walked by the cyclic garbage collector. Used by informer_throughput.py to show what
decoding only what is kept would cost."""

from __future__ import annotations

import msgspec


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
