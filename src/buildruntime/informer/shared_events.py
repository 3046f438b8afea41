"""One watch of a namespace's pod Events for every build of a runtime, split by pod uid.

Kubernetes behaviour handled here:

- Events are not in the API server's watch cache: every events watch is an etcd watch of
  the whole namespace, and the API server decodes each Event of the namespace once per
  watch to test its field selector. With one watch per build, B concurrent builds cost
  B decodes per Event, B times as many Events: quadratic in the builds sharing a
  namespace (bench/RESULTS.md, "Server cost"). One watch of the namespace, split here by
  ``involvedObject.uid``, costs one decode per Event.
- No Event can name a pod before the pod exists: the watch starts, with no list, at the
  creation resourceVersion of the pod that is followed first (``created_at``), as a
  build's own events watch does (see :class:`~buildruntime.informer.reflector.Reflector`'s
  ``empty_at``). Creates run concurrently, so a pod created earlier can be followed
  later: a build announces its create before sending it (:meth:`SharedEventWatch.expect`,
  with a resourceVersion it has seen, which is older than its pod), and the watch starts
  at the oldest of those, so that every pod created meanwhile is covered. Should a pod
  still turn out older than the watch's start, the watch is started again from there;
  what comes twice is dropped by each build's store, which keeps an Event only if it is
  newer. The watch stops when no pod is followed or expected (nothing is left open
  between builds) and starts again, still unlisted, with the next.
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
from functools import partial

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
from buildruntime.informer.store import is_newer
from buildruntime.informer.watch_task import WatchTask

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

    __slots__ = ("_pod_uid", "_watch", "synced")

    def __init__(self, watch: SharedEventWatch, pod_uid: str, synced: anyio.Event) -> None:
        self._watch = watch
        self._pod_uid = pod_uid
        self.synced = synced
        """Set once the watch has started (it lists nothing when it starts unlisted)."""

    def close(self) -> None:
        """Stop receiving the pod's Events. Safe to call more than once."""
        self._watch.unfollow(self._pod_uid)


class ExpectedPod:
    """A pod whose create is on its way: the watch must start no later than ``since``."""

    __slots__ = ("_watch", "since")

    def __init__(self, watch: SharedEventWatch, since: str) -> None:
        self._watch = watch
        self.since = since

    def cancel(self) -> None:
        """The create failed, or the pod is followed: stop holding the start back. Safe
        to call more than once."""
        self._watch.withdraw(self)


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
        self._task = WatchTask("shared events watch")
        self._synced: anyio.Event | None = None
        self._since: str | None = None
        """The resourceVersion the running watch started from (None: it listed)."""
        self.reflector: Reflector[EventSnapshot] | None = None
        self._followers: dict[str, _Follower] = {}
        self._expected: set[ExpectedPod] = set()
        self._held: TTLCache[str, list[tuple[str, EventSnapshot]]] = TTLCache(
            maxsize=max_held, ttl=hold
        )
        """Events of pods nobody follows (yet), by pod uid, in the order they came."""

    def open(self, task_group: TaskGroup) -> None:
        """Where the watch will run once a build follows a pod."""
        self._task.open(task_group)

    def close(self) -> None:
        """Stop the watch and forget the task group: a later :meth:`open` starts
        afresh."""
        self._stop()
        self._task.close()
        self._followers.clear()
        self._expected.clear()

    def expect(self, since: str | None) -> ExpectedPod | None:
        """Announce a pod create about to be sent; ``since``: a resourceVersion seen
        before it (the build's pod reflector's). None when ``since`` says nothing (the
        watch is then started again should the pod be older than it)."""
        if not since or since == "0":
            return None
        expected = ExpectedPod(self, since)
        self._expected.add(expected)
        return expected

    def withdraw(self, expected: ExpectedPod) -> None:
        """``expected`` no longer holds the watch's start back (see
        :meth:`ExpectedPod.cancel`)."""
        self._expected.discard(expected)
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if not self._followers and not self._expected:
            self._stop()

    def _stop(self) -> None:
        self._task.stop()
        self._synced = None
        self._since = None
        self.reflector = None
        self._held.clear()

    def follow(
        self,
        pod_uid: str,
        *,
        created_at: str | None,
        replace: ReplaceEvents,
        apply: ApplyEvent,
        expected: ExpectedPod | None = None,
    ) -> EventFollowing:
        """Route the Events of pod ``pod_uid`` to ``replace``/``apply``, those already
        held first. ``created_at``: the pod's creation resourceVersion (None: unknown,
        the watch lists); ``expected``: what :meth:`expect` gave before its create."""
        assert pod_uid not in self._followers, "this pod's Events are already followed"
        if expected is not None:
            self._expected.discard(expected)
        if self.reflector is None or _older(created_at, self._since):
            self._start(_oldest([created_at, *(e.since for e in self._expected)]))
        self._followers[pod_uid] = _Follower(replace, apply)
        for kind, event in self._held.pop(pod_uid, ()):
            apply(kind, event)
        assert self._synced is not None
        return EventFollowing(self, pod_uid, self._synced)

    def unfollow(self, pod_uid: str) -> None:
        if self._followers.pop(pod_uid, None) is not None:
            self._stop_if_idle()

    def _start(self, created_at: str | None) -> None:
        """(Re)start the watch from ``created_at``; a restart keeps what is held (the
        new watch delivers it again, and stores drop the repeats)."""
        if self._synced is None:
            self._synced = anyio.Event()
        self._since = created_at
        self.reflector = reflector = Reflector(
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
        self._task.start(partial(_run, reflector, self._synced))

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
        if not items:
            # A watch (re)started unlisted begins with an empty replace. Passed on, it
            # would empty the followers' stores, and the watch's repeats of what they
            # had would come back as news. Nothing is lost by not passing it: an Event
            # gone from a list has expired, which is not news for a build either.
            return
        by_pod: dict[str, list[EventSnapshot]] = {}
        for event in items:
            if event.pod_uid:
                by_pod.setdefault(event.pod_uid, []).append(event)
        for pod_uid, follower in list(self._followers.items()):
            follower.replace(by_pod.pop(pod_uid, []))
        self._held.clear()
        for pod_uid, events in by_pod.items():
            self._held[pod_uid] = [("ADDED", event) for event in events[:_HELD_PER_POD]]


def _older(created_at: str | None, since: str | None) -> bool:
    """Whether a pod created at ``created_at`` is older than where the running watch
    started (``since``; None: the watch listed, so it has everything)."""
    if since is None:
        return False
    if created_at is None:
        return True  # unknown: list, to be sure
    return is_newer(since, created_at)


def _oldest(versions: list[str | None]) -> str | None:
    """The oldest of these resourceVersions (None if any is unknown: then list). They
    compare as etcd revisions; should one not be a number, the first is taken."""
    if any(version is None for version in versions):
        return None
    known = [version for version in versions if version is not None]
    if all(version.isdigit() for version in known):
        return min(known, key=int)
    return known[0]


async def _run(reflector: Reflector[EventSnapshot], synced: anyio.Event) -> None:
    """The watch, and ``synced`` set once it has started (its own event is made anew by
    each restart; ``synced`` lasts as long as the builds' share of the watch)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(reflector.run)
        await reflector.synced.wait()
        synced.set()
