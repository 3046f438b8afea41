"""The namespace monitor: every build the runtime made in a namespace, as domain events.

One informer (a pod reflector over the pods labelled as the runtime's own and an events
reflector over the namespace's pod events, one cache) feeds every build: each pod gets a
fan-out and a build view built from its own annotations (its steps and placeholder
image) the first time it is seen, and every build view publishes its domain events to
the one topic :meth:`NamespaceMonitor.events` follows. Two watches in
all, however many builds run; the reflectors ride out dropped watches, 410s and outages,
and the fan-outs drop what a relist repeats, so no transition is lost or reported twice.

```python
async with NamespaceMonitor(cluster, "ci") as monitor:
    async for event in monitor.events():
        print(json.dumps(event.to_json()))
```
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio
from cachetools import TTLCache

from buildruntime.build_view import BuildView
from buildruntime.cluster.port import Cluster
from buildruntime.events import BuildEvent
from buildruntime.informer.fanout import PodFanout
from buildruntime.informer.informer import Informer
from buildruntime.informer.reflector import Reflector, ReflectorSettings
from buildruntime.informer.snapshots import EventSnapshot, PodSnapshot
from buildruntime.informer.store import Delta, Store
from buildruntime.informer.topic import Topic
from buildruntime.labels import BUILD_ID, managed_selector
from buildruntime.spec import PAUSE_ANNOTATION, STEPS_ANNOTATION

log = logging.getLogger("buildruntime.monitor")

__all__ = ["NamespaceMonitor"]


class NamespaceMonitor:
    """Watches every pod the runtime labelled in ``namespace``, with their events.

    ``hold_unknown``: how long an event about a pod not seen yet is kept, waiting for
    the pod (the two watches are not ordered with each other); events about pods that
    are not the runtime's are dropped after it. ``keep_deleted``: how long a deleted
    pod's fan-out stays, for the events that trail its deletion.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str = "default",
        *,
        settings: ReflectorSettings | None = None,
        retain: int = 10_000,
        hold_unknown: float = 30.0,
        max_held: int = 10_000,
        keep_deleted: float = 60.0,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.informer = Informer(
            cluster,
            namespace,
            pod_labels=managed_selector(),
            event_fields="involvedObject.kind=Pod",
            on_pod=self._on_pod,
            on_event=self._on_event,
            settings=settings,
        )
        self.fanouts: dict[str, _PodBuild] = {}
        """Each build pod's fan-out and view, by pod uid."""
        self._ignored: set[str] = set()
        """Uids of labelled pods without the runtime's annotations: not builds."""
        self._topic: Topic[BuildEvent] = Topic(retain=retain)
        self._held: TTLCache[str, tuple[str, str | None, Delta[EventSnapshot]]] = TTLCache(
            maxsize=max_held, ttl=hold_unknown
        )
        """Events of pods not seen yet, by event uid: (pod name, pod uid, delta); they
        expire after ``hold_unknown`` seconds, the oldest go first past ``max_held``."""
        self._deleted: deque[tuple[float, str]] = deque()
        self._keep_deleted = keep_deleted
        self._stack: AsyncExitStack | None = None

    @property
    def store(self) -> Store:
        return self.informer.store

    @property
    def pod_reflector(self) -> Reflector[PodSnapshot]:
        return self.informer.pod_reflector

    @property
    def event_reflector(self) -> Reflector[EventSnapshot]:
        reflector = self.informer.event_reflector
        assert reflector is not None, "the monitor is not running"
        return reflector

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(self._topic.close)
        stack.callback(tg.cancel_scope.cancel)
        await tg.start(self.informer.run)
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        finally:
            for build in self.fanouts.values():
                build.view.close()

    async def wait_synced(self) -> None:
        """Wait until both reflectors have listed once (the cache holds the namespace)."""
        await self.informer.wait_synced()

    @property
    def synced(self) -> bool:
        return self.informer.event_reflector is not None and self.informer.synced

    def events(self, *, from_now: bool = False) -> AsyncIterator[BuildEvent]:
        """Every domain event of every build seen (from the first retained one, or from
        now), until the monitor is closed."""
        if from_now:
            return self._topic.follow(start=self._topic.next_seq)
        return self._topic.follow()

    # -- pods -------------------------------------------------------------------------

    def _on_pod(self, delta: Delta[PodSnapshot]) -> None:
        old, new = delta.old, delta.new
        if old is not None and new is not None and old.uid != new.uid:
            # The same name, another pod: the first is gone, the second is new.
            self._route_pod(Delta(old, None))
            self._route_pod(Delta(None, new))
        else:
            self._route_pod(delta)
        self._expire()

    def _route_pod(self, delta: Delta[PodSnapshot]) -> None:
        pod = delta.new or delta.old
        assert pod is not None
        build = self.fanouts.get(pod.uid)
        if build is None:
            if delta.new is None or pod.uid in self._ignored:
                return
            build = _PodBuild.for_pod(pod, publish=[self._topic])
            if build is None:
                log.debug("pod %s carries the runtime's label but not its annotations", pod.name)
                self._ignored.add(pod.uid)
                return
            self.fanouts[pod.uid] = build
            build.fanout.on_pod(delta)
            self._release_held(pod)
            return
        build.fanout.on_pod(delta)
        if delta.new is None:
            self._deleted.append((anyio.current_time(), pod.uid))
            self._ignored.discard(pod.uid)

    # -- events -----------------------------------------------------------------------

    def _on_event(self, delta: Delta[EventSnapshot]) -> None:
        event = delta.new
        if event is None:
            return
        build = self._build_for(event)
        if build is not None:
            build.fanout.on_event(delta)
        elif not (event.pod_uid and event.pod_uid in self._ignored):
            self._hold(event, delta)
        self._expire()

    def _build_for(self, event: EventSnapshot) -> _PodBuild | None:
        if event.pod_uid:
            return self.fanouts.get(event.pod_uid)
        pod = self.store.pods.get(event.pod_name)
        return self.fanouts.get(pod.uid) if pod is not None else None

    def _hold(self, event: EventSnapshot, delta: Delta[EventSnapshot]) -> None:
        self._held[event.uid] = (event.pod_name, event.pod_uid, delta)

    def _release_held(self, pod: PodSnapshot) -> None:
        fanout = self.fanouts[pod.uid].fanout
        ready = [
            uid
            for uid, (name, pod_uid, _) in list(self._held.items())
            if pod_uid == pod.uid or (not pod_uid and name == pod.name)
        ]
        for uid in ready:
            fanout.on_event(self._held.pop(uid)[2])

    def _expire(self) -> None:
        now = anyio.current_time()
        self._held.expire()
        while self._deleted and now - self._deleted[0][0] >= self._keep_deleted:
            _, uid = self._deleted.popleft()
            build = self.fanouts.get(uid)
            if build is not None and build.fanout.gone:
                build.view.close()
                del self.fanouts[uid]


class _PodBuild:
    """One build pod the monitor follows: its fan-out and the view it feeds."""

    __slots__ = ("fanout", "view")

    def __init__(self, fanout: PodFanout, view: BuildView) -> None:
        self.fanout = fanout
        self.view = view

    @classmethod
    def for_pod(cls, pod: PodSnapshot, *, publish: list[Topic[BuildEvent]]) -> _PodBuild | None:
        """From the pod's own annotations, for a pod the runtime made; None otherwise."""
        steps = pod.annotation(STEPS_ANNOTATION)
        placeholder = pod.annotation(PAUSE_ANNOTATION)
        build_id = pod.label(BUILD_ID)
        if not steps or not placeholder or not build_id:
            return None
        names = steps.split(",")
        view = BuildView(build_id, names, publish=publish)
        return cls(PodFanout(names, placeholder, view, pod_uid=pod.uid), view)
