"""The cache: the latest snapshot of each watched pod and event, and the deltas between.

Like client-go's DeltaFIFO feeding an indexer, but in one step: every watch event or
relist is applied here, and what changed comes back as deltas for the fan-out. A relist
(``replace``) compares the new list with what is cached and returns the differences,
deletions included, so a transition that happened while the watch was down is still
seen as a change. Stale or duplicated updates (a resourceVersion not newer than the one
cached for the same object) are dropped. A pod's new snapshot shares the parts that did
not change with the one it replaces (:mod:`~buildruntime.informer.sharing`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from buildruntime.informer.sharing import share_unchanged
from buildruntime.informer.snapshots import EventSnapshot, PodSnapshot

S = TypeVar("S", PodSnapshot, EventSnapshot)


@dataclass(frozen=True, slots=True)
class Delta(Generic[S]):
    """One object's change: ``old`` None means added, ``new`` None means deleted."""

    old: S | None
    new: S | None


def is_newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is newer than ``current``.

    resourceVersions are opaque in theory, but every API server issues etcd revisions,
    which increase; when both parse as integers, compare them so a duplicated or
    out-of-order delivery cannot roll the cache back.
    """
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


class Store:
    """Pods by name and events by uid, as immutable snapshots."""

    def __init__(self) -> None:
        self.pods: dict[str, PodSnapshot] = {}
        self.events: dict[str, EventSnapshot] = {}

    # Pods: keyed by name, so a pod recreated under the same name shows as a uid change.

    def apply_pod(self, kind: str, new: PodSnapshot) -> Delta[PodSnapshot] | None:
        """Apply one watch event (ADDED, MODIFIED or DELETED) for a pod."""
        old = self.pods.get(new.name)
        if kind == "DELETED":
            if old is None or old.uid != new.uid:
                return None
            del self.pods[new.name]
            return Delta(old, None)
        if old is not None and old.uid == new.uid:
            if not is_newer(new.resource_version, old.resource_version):
                return None
            new = share_unchanged(old, new)
        self.pods[new.name] = new
        return Delta(old, new)

    def replace_pods(self, items: Iterable[PodSnapshot]) -> list[Delta[PodSnapshot]]:
        """A relist: cache exactly ``items``, returning every difference."""
        fresh = {snap.name: snap for snap in items}
        deltas: list[Delta[PodSnapshot]] = []
        for name, gone in list(self.pods.items()):
            if name not in fresh:
                del self.pods[name]
                deltas.append(Delta(gone, None))
        for name, new in fresh.items():
            old = self.pods.get(name)
            if old is not None and old.uid == new.uid:
                if old.resource_version == new.resource_version:
                    continue
                new = share_unchanged(old, new)
            self.pods[name] = new
            deltas.append(Delta(old, new))
        return deltas

    # Events: keyed by uid; a repeated event is the same object with a higher count.

    def apply_event(self, kind: str, new: EventSnapshot) -> Delta[EventSnapshot] | None:
        """Apply one watch event for a core/v1 Event."""
        old = self.events.get(new.uid)
        if kind == "DELETED":
            # Events expire (TTL, one hour by default); that is not news for a build.
            self.events.pop(new.uid, None)
            return None
        if old is not None and not is_newer(new.resource_version, old.resource_version):
            return None
        self.events[new.uid] = new
        return Delta(old, new)

    def replace_events(self, items: Iterable[EventSnapshot]) -> list[Delta[EventSnapshot]]:
        """A relist of events: new and changed ones come back as deltas; vanished ones
        are dropped silently (they expired)."""
        fresh = {snap.uid: snap for snap in items}
        deltas: list[Delta[EventSnapshot]] = []
        for uid, new in fresh.items():
            old = self.events.get(uid)
            if old is not None and old.resource_version == new.resource_version:
                continue
            deltas.append(Delta(old, new))
        self.events = fresh
        return deltas
