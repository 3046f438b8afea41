"""The informer: a pods reflector and an events reflector feeding one store, whose deltas
go to handlers (client-go's ``SharedIndexInformer``: reflector + store + handlers).

A build has one over its own pod, from a watch of its own (by its build-id label) or from
its share of the runtime's one watch of its pods (by name, :mod:`.shared_pods`), and, once
the pod exists, the Events about exactly that pod (by uid): from a watch of its own, or
from its share of the runtime's one watch of the namespace's pod Events
(:mod:`.shared_events`). The namespace monitor has one over every pod the runtime
labelled and the namespace's pod Events. The store is the cache; handlers are called
with each difference in the order the reflectors applied them, and must not block.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup, TaskStatus

from buildruntime.cluster.port import Cluster
from buildruntime.informer.decoders import EVENT_SNAPSHOTS, POD_SNAPSHOTS
from buildruntime.informer.reflector import (
    UNOBSERVED,
    Reflector,
    ReflectorSettings,
    WatchObserver,
)
from buildruntime.informer.shared_events import EventFollowing, ExpectedPod, SharedEventWatch
from buildruntime.informer.shared_pods import PodFollowing, SharedPodWatch
from buildruntime.informer.snapshots import EventSnapshot, PodSnapshot
from buildruntime.informer.store import Delta, Store

PodHandler = Callable[[Delta[PodSnapshot]], None]
EventHandler = Callable[[Delta[EventSnapshot]], None]


class Informer:
    """Pods matching a label selector and, from when it is known, Events matching a
    field selector, cached in one :class:`Store`; every change goes to the handlers."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        *,
        pod_labels: str | None,
        on_pod: PodHandler,
        on_event: EventHandler,
        settings: ReflectorSettings | None = None,
        event_fields: str | None = None,
        observer: WatchObserver = UNOBSERVED,
        shared_pods: tuple[SharedPodWatch, str] | None = None,
    ) -> None:
        """``shared_pods``: a runtime's shared pods watch and the name of the pod to take
        from it, instead of a reflector of the informer's own (``pod_labels`` is then
        not used)."""
        self.cluster = cluster
        self.namespace = namespace
        self.store = Store()
        self._on_pod = on_pod
        self._on_event = on_event
        self._settings = settings
        self._observer = observer
        self._shared_pods = shared_pods
        self._pod_following: PodFollowing | None = None
        self._own_pod_reflector: Reflector[PodSnapshot] | None = None
        if shared_pods is None:
            self._own_pod_reflector = Reflector(
                cluster,
                "pods",
                namespace,
                label_selector=pod_labels,
                decoder=POD_SNAPSHOTS,
                replace=self._replace_pods,
                apply=self._apply_pod,
                settings=settings,
                observer=observer,
            )
        self.event_reflector: Reflector[EventSnapshot] | None = None
        """The informer's own events reflector, if it has one (not when it follows a
        shared watch)."""
        self._following: EventFollowing | None = None
        self._event_fields = event_fields
        self._task_group: TaskGroup | None = None

    @property
    def pod_reflector(self) -> Reflector[PodSnapshot]:
        """The reflector that lists and watches the informer's pods: its own, or the
        shared watch's from when :meth:`run` has started following it."""
        if self._own_pod_reflector is not None:
            return self._own_pod_reflector
        assert self._pod_following is not None, "the informer has not started"
        return self._pod_following.reflector

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the reflectors (or follow the shared pods watch) until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                if self._shared_pods is not None:
                    shared, pod_name = self._shared_pods
                    self._pod_following = shared.follow(
                        pod_name, replace=self._replace_pods, apply=self._apply_pod
                    )
                else:
                    tg.start_soon(self.pod_reflector.run)
                if self._event_fields is not None:
                    self._start_events(self._event_fields)
                task_status.started()
                if self._pod_following is not None:
                    # The shared watch's bug is this build's too: it fails with it.
                    raise await self._pod_following.failure()
                await anyio.sleep_forever()
        finally:
            self._task_group = None
            if self._following is not None:
                self._following.close()
            if self._pod_following is not None:
                self._pod_following.close()

    def watch_events(self, field_selector: str, *, empty_at: str | None = None) -> None:
        """Start the events reflector with ``field_selector`` (once; the informer runs).
        ``empty_at``: a resourceVersion at which no Event matched (see :class:`Reflector`)."""
        assert self._task_group is not None, "the informer is not running"
        assert self.event_reflector is None, "events are already watched"
        self._start_events(field_selector, empty_at)

    def follow_events(
        self,
        shared: SharedEventWatch,
        pod_uid: str,
        *,
        created_at: str | None,
        expected: ExpectedPod | None = None,
    ) -> None:
        """Take the Events of pod ``pod_uid`` from ``shared`` (once; the informer runs)
        instead of a watch of the informer's own. ``created_at``: the pod's creation
        resourceVersion (see :meth:`SharedEventWatch.follow`)."""
        assert self._task_group is not None, "the informer is not running"
        assert self.event_reflector is None, "events are already watched"
        assert self._following is None, "events are already followed"
        self._following = shared.follow(
            pod_uid,
            created_at=created_at,
            replace=self._replace_events,
            apply=self._apply_event,
            expected=expected,
        )

    def _start_events(self, field_selector: str, empty_at: str | None = None) -> None:
        assert self._task_group is not None
        self.event_reflector = Reflector(
            self.cluster,
            "events",
            self.namespace,
            field_selector=field_selector,
            decoder=EVENT_SNAPSHOTS,
            replace=self._replace_events,
            apply=self._apply_event,
            settings=self._settings,
            empty_at=empty_at,
            observer=self._observer,
        )
        self._task_group.start_soon(self.event_reflector.run)

    @property
    def synced(self) -> bool:
        """Both reflectors (those started) have listed once."""
        events = self._events_synced()
        return self.pod_reflector.synced.is_set() and (events is None or events.is_set())

    async def wait_synced(self) -> None:
        """Wait until the reflectors started so far have listed once."""
        await self.pod_reflector.synced.wait()
        events = self._events_synced()
        if events is not None:
            await events.wait()

    def _events_synced(self) -> anyio.Event | None:
        if self._following is not None:
            return self._following.synced
        return self.event_reflector.synced if self.event_reflector is not None else None

    # -- store → handlers ---------------------------------------------------------------

    def _replace_pods(self, items: list[PodSnapshot]) -> None:
        for delta in self.store.replace_pods(items):
            self._on_pod(delta)

    def _apply_pod(self, kind: str, pod: PodSnapshot) -> None:
        delta = self.store.apply_pod(kind, pod)
        if delta is not None:
            self._on_pod(delta)

    def _replace_events(self, items: list[EventSnapshot]) -> None:
        for delta in self.store.replace_events(items):
            self._on_event(delta)

    def _apply_event(self, kind: str, event: EventSnapshot) -> None:
        delta = self.store.apply_event(kind, event)
        if delta is not None:
            self._on_event(delta)
