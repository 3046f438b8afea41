"""One watch of a namespace's pod Events for every build of a runtime, split by pod uid.

Kubernetes behaviour handled here:

- Events are not in the API server's watch cache: every events watch is an etcd watch of
  the whole namespace, and the API server decodes each Event of the namespace once per
  watch to test its field selector. With one watch per build, B concurrent builds cost
  B decodes per Event, B times as many Events: quadratic in the builds sharing a
  namespace (bench/RESULTS.md, "Server cost"). One watch of the namespace, split here by
  ``involvedObject.uid``, costs one decode per Event.
- No Event can name a pod before the pod exists: the watch starts, with no list, at the
  resourceVersion of the first pod created through it (``created_at``), as a build's own
  events watch does (see :class:`~buildruntime.informer.reflector.Reflector`'s
  ``empty_at``). Every later pod is newer, so its Events come after that point.
- An Event can reach the watch before the call that created its pod has returned (the
  scheduler's ``Scheduled`` races the create response under load): Events of a pod uid
  nobody follows are held for ``hold`` seconds, and a build that follows the uid
  afterwards gets them first, in order. Events of pods no build follows (other
  workloads of the namespace) expire from there; at most ``max_held`` pods' worth are
  kept, the oldest dropped first.
- On a relist (a 410 Gone, the resync period) each follower receives its own pod's part
  of the list as a replace, as a build's own reflector would give it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup
from cachetools import TTLCache

from buildruntime.cluster.port import Cluster
from buildruntime.informer.decoders import EVENT_SNAPSHOTS
from buildruntime.informer.reflector import (
    UNOBSERVED,
    Reflector,
    ReflectorSettings,
    WatchObserver,
)
from buildruntime.informer.snapshots import EventSnapshot

ReplaceEvents = Callable[[list[EventSnapshot]], None]
ApplyEvent = Callable[[str, EventSnapshot], None]

SELECTOR = "involvedObject.kind=Pod"
"""The shared watch's field selector: every pod's Events in the namespace."""

_HELD_PER_POD = 256
"""Events kept for one pod nobody follows yet; a real pod has a few dozen before any
build could follow it."""


class _Follower:
    __slots__ = ("apply", "replace")

    def __init__(self, replace: ReplaceEvents, apply: ApplyEvent) -> None:
        self.replace = replace
        self.apply = apply


class EventFollowing:
    """One build's share of the watch: its pod's Events, until :meth:`close`."""

    __slots__ = ("_pod_uid", "_watch")

    def __init__(self, watch: SharedEventWatch, pod_uid: str) -> None:
        self._watch = watch
        self._pod_uid = pod_uid

    @property
    def reflector(self) -> Reflector[EventSnapshot]:
        """The shared reflector (its ``synced`` event, its ``last_error``)."""
        reflector = self._watch.reflector
        assert reflector is not None
        return reflector

    def close(self) -> None:
        """Stop receiving the pod's Events. Safe to call more than once."""
        self._watch.unfollow(self._pod_uid)


class SharedEventWatch:
    """The namespace's pod Events, routed to the builds that follow their pod's uid.

    Runs in the task group given to :meth:`open` (the runtime's), from the first
    :meth:`follow` until :meth:`close`.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        *,
        settings: ReflectorSettings | None = None,
        observer: WatchObserver = UNOBSERVED,
        hold: float = 60.0,
        max_held: int = 10_000,
    ) -> None:
        self._cluster = cluster
        self._namespace = namespace
        self._settings = settings
        self._observer = observer
        self._task_group: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self.reflector: Reflector[EventSnapshot] | None = None
        self._followers: dict[str, _Follower] = {}
        self._held: TTLCache[str, list[tuple[str, EventSnapshot]]] = TTLCache(
            maxsize=max_held, ttl=hold
        )
        """Events of pods nobody follows (yet), by pod uid, in the order they came."""

    def open(self, task_group: TaskGroup) -> None:
        """Where the watch will run once a build follows a pod."""
        self._task_group = task_group

    def close(self) -> None:
        """Stop the watch and forget the task group: a later :meth:`open` starts
        afresh."""
        if self._scope is not None:
            self._scope.cancel()
        self._scope = None
        self._task_group = None
        self.reflector = None
        self._followers.clear()
        self._held.clear()

    def follow(
        self,
        pod_uid: str,
        *,
        created_at: str | None,
        replace: ReplaceEvents,
        apply: ApplyEvent,
    ) -> EventFollowing:
        """Route the Events of pod ``pod_uid`` to ``replace``/``apply``, those already
        held first. ``created_at``: the pod's creation resourceVersion, where the watch
        starts if this is its first pod (None: it lists first)."""
        assert pod_uid not in self._followers, "this pod's Events are already followed"
        self._start(created_at)
        self._followers[pod_uid] = _Follower(replace, apply)
        for kind, event in self._held.pop(pod_uid, ()):
            apply(kind, event)
        return EventFollowing(self, pod_uid)

    def unfollow(self, pod_uid: str) -> None:
        self._followers.pop(pod_uid, None)

    def _start(self, created_at: str | None) -> None:
        if self.reflector is not None:
            return
        assert self._task_group is not None, "the shared events watch is not open"
        self.reflector = Reflector(
            self._cluster,
            "events",
            self._namespace,
            field_selector=SELECTOR,
            decoder=EVENT_SNAPSHOTS,
            replace=self._replace,
            apply=self._apply,
            settings=self._settings,
            empty_at=created_at,
            observer=self._observer,
        )
        # Made here, on the event loop (the runtime is built outside one), not in the
        # task: a close() before the task has started must still stop it.
        self._scope = anyio.CancelScope()
        self._task_group.start_soon(self._run, self.reflector, self._scope)

    @staticmethod
    async def _run(reflector: Reflector[EventSnapshot], scope: anyio.CancelScope) -> None:
        with scope:
            await reflector.run()

    # -- the reflector's callbacks --------------------------------------------------------

    def _apply(self, kind: str, event: EventSnapshot) -> None:
        pod_uid = event.pod_uid
        if not pod_uid:
            return
        follower = self._followers.get(pod_uid)
        if follower is not None:
            follower.apply(kind, event)
            return
        held = self._held.get(pod_uid)
        if held is None:
            self._held[pod_uid] = held = []
        if len(held) < _HELD_PER_POD:
            held.append((kind, event))

    def _replace(self, items: list[EventSnapshot]) -> None:
        by_pod: dict[str, list[EventSnapshot]] = {}
        for event in items:
            if event.pod_uid:
                by_pod.setdefault(event.pod_uid, []).append(event)
        for pod_uid, follower in list(self._followers.items()):
            follower.replace(by_pod.pop(pod_uid, []))
        self._held.clear()
        for pod_uid, events in by_pod.items():
            self._held[pod_uid] = [("ADDED", event) for event in events[:_HELD_PER_POD]]
