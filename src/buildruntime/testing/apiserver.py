"""The in-memory API server's storage: objects, one resourceVersion counter, the change
history that watches replay, lists, and compaction.

It mimics etcd behind the kube-apiserver's watch cache: every write (to a pod or an
event) takes the next resourceVersion; each resource keeps its recent changes, so a watch
can resume from any version still held; versions older than the compaction point (or
trimmed out of the bounded history) answer 410 Gone. Objects are stored as compact JSON
and every object handed out is a fresh copy, so callers may mutate what they get.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from buildruntime.testing import objects
from buildruntime.testing.objects import JSON
from buildruntime.testing.selectors import (
    EVENT_FIELDS,
    LEASE_FIELDS,
    POD_FIELDS,
    SECRET_FIELDS,
    Selector,
    event_fields,
    labels_of,
    lease_fields,
    pod_fields,
    secret_fields,
)

Key = tuple[str, str]

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(slots=True)
class Change:
    """One entry of a resource's change history (what etcd's watch would replay)."""

    rv: int
    type: str
    namespace: str
    raw: str
    labels: dict[str, str]
    fields: dict[str, str]
    prev_raw: str | None
    prev_labels: dict[str, str] | None
    prev_fields: dict[str, str] | None


class ResourceStore:
    """The objects of one resource (pods or events), their change history, and the
    watchers to push new changes to."""

    def __init__(
        self,
        name: str,
        kind: str,
        supported_fields: frozenset[str],
        fields_of: Callable[[JSON], dict[str, str]],
        history_limit: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.supported_fields = supported_fields
        self.fields_of = fields_of
        self.objects: dict[Key, JSON] = {}
        self.raws: dict[Key, str] = {}
        self.changes: list[Change] = []
        self.min_rv = 0
        """A watch must start at or after this version; older ones are 410 Gone."""
        self.history_limit = history_limit
        self._indexed: dict[IndexKey, set[Watcher]] = {}
        self._unindexed: set[Watcher] = set()
        self._index_of: dict[Watcher, IndexKey | None] = {}

    def changes_after(self, rv: int) -> list[Change]:
        """The changes newer than ``rv``, oldest first."""
        return self.changes[bisect.bisect_right(self.changes, rv, key=lambda c: c.rv) :]

    def _trim(self) -> None:
        if len(self.changes) <= self.history_limit + self.history_limit // 2:
            return
        drop = len(self.changes) - self.history_limit
        self.min_rv = max(self.min_rv, self.changes[drop - 1].rv)
        del self.changes[:drop]

    def append(self, change: Change) -> None:
        self.changes.append(change)
        self._trim()
        self._dispatch(change)

    # ------------------------------------------------------------ watchers
    def register(self, watcher: Watcher) -> None:
        """Push future changes to ``watcher``; it is indexed by one of its equality
        requirements (the least crowded), so a write only reaches the watchers that
        may care about it, as the watch cache's indexers do."""
        candidates = watcher.index_keys()
        if not candidates:
            self._unindexed.add(watcher)
            self._index_of[watcher] = None
            return
        key = min(reversed(candidates), key=lambda k: len(self._indexed.get(k, ())))
        self._indexed.setdefault(key, set()).add(watcher)
        self._index_of[watcher] = key

    def unregister(self, watcher: Watcher) -> None:
        key = self._index_of.pop(watcher, None)
        if key is None:
            self._unindexed.discard(watcher)
            return
        group = self._indexed.get(key)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._indexed[key]

    def watchers(self) -> list[Watcher]:
        return list(self._index_of)

    def _dispatch(self, change: Change) -> None:
        targets = set(self._unindexed)
        if self._indexed:
            for source in (change.labels, change.prev_labels):
                for item in (source or {}).items():
                    targets.update(self._indexed.get(("label", *item), ()))
            for source in (change.fields, change.prev_fields):
                for item in (source or {}).items():
                    targets.update(self._indexed.get(("field", *item), ()))
        for watcher in targets:
            watcher.offer(change)


IndexKey = tuple[str, str, str]


class Watcher(Protocol):
    """What a store pushes changes to."""

    def index_keys(self) -> list[IndexKey]:
        """Equality requirements (``("label"|"field", key, value)``) every matching
        object satisfies; empty when there are none."""
        ...

    def offer(self, change: Change) -> None:
        """A new change (the watcher filters it)."""
        ...


def matches(
    namespace: str,
    labels: Selector,
    fields: Selector,
    ns: str,
    lv: dict[str, str],
    fv: dict[str, str],
) -> bool:
    return (not namespace or namespace == ns) and labels.matches(lv) and fields.matches(fv)


class APIServer:
    """Storage and versioning for pods, events, Secrets and Leases.

    ``observers`` are called synchronously after every write with
    ``(resource, type, object, previous)`` (the stored, private dicts: observers must not
    mutate them); the simulated scheduler and kubelet use this to react at once, the way
    their informers would.
    """

    def __init__(self, *, history_limit: int = 10_000, keep_history: bool = True) -> None:
        self.rv = 100
        self.pods = ResourceStore("pods", "Pod", POD_FIELDS, pod_fields, history_limit)
        self.events = ResourceStore("events", "Event", EVENT_FIELDS, event_fields, history_limit)
        self.secrets = ResourceStore(
            "secrets", "Secret", SECRET_FIELDS, secret_fields, history_limit
        )
        self.leases = ResourceStore("leases", "Lease", LEASE_FIELDS, lease_fields, history_limit)
        self.keep_history = keep_history
        self.pod_history: dict[Key, list[str]] = {}
        self.observers: list[Callable[[str, str, JSON, JSON | None], None]] = []

    def store(self, resource: str) -> ResourceStore:
        if resource == "pods":
            return self.pods
        if resource == "events":
            return self.events
        if resource == "secrets":
            return self.secrets
        if resource == "leases":
            return self.leases
        raise ValueError(f"unknown resource {resource!r}")

    # ------------------------------------------------------------------ reads
    def get(self, resource: str, namespace: str, name: str) -> JSON | None:
        """The stored object itself (private: never hand it out, never mutate it)."""
        return self.store(resource).objects.get((namespace, name))

    def copy(self, resource: str, namespace: str, name: str) -> JSON | None:
        raw = self.store(resource).raws.get((namespace, name))
        return None if raw is None else objects.load(raw)

    def list_objects(
        self, resource: str, namespace: str, labels: Selector, fields: Selector
    ) -> JSON:
        """A ``PodList``/``EventList`` at the current resourceVersion, ordered by key."""
        store = self.store(resource)
        items = []
        for key in sorted(store.objects):
            obj = store.objects[key]
            if matches(namespace, labels, fields, key[0], labels_of(obj), store.fields_of(obj)):
                items.append(objects.load(store.raws[key]))
        return {
            "kind": f"{store.kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    def history(self, namespace: str, name: str) -> list[JSON]:
        return [objects.load(raw) for raw in self.pod_history.get((namespace, name), [])]

    # ----------------------------------------------------------------- writes
    def write(self, resource: str, obj: JSON) -> str:
        """Store ``obj`` (taken over by the store, never to be modified again) as a new
        version: ADDED when its key is new, MODIFIED otherwise. Returns it as JSON."""
        store = self.store(resource)
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        raw = objects.dump(obj)
        previous = store.objects.get(key)
        prev_raw = store.raws.get(key)
        store.objects[key] = obj
        store.raws[key] = raw
        labels, fields = labels_of(obj), store.fields_of(obj)
        change = Change(
            self.rv,
            ADDED if previous is None else MODIFIED,
            key[0],
            raw,
            labels,
            fields,
            prev_raw,
            None if previous is None else labels_of(previous),
            None if previous is None else store.fields_of(previous),
        )
        self._record(resource, key, change, obj, previous)
        return raw

    def remove(self, resource: str, namespace: str, name: str) -> JSON | None:
        """Delete an object: one DELETED change carrying its last state at a new
        resourceVersion. Returns that last state, or None when absent."""
        store = self.store(resource)
        key = (namespace, name)
        previous = store.objects.pop(key, None)
        prev_raw = store.raws.pop(key, None)
        if previous is None or prev_raw is None:
            return None
        self.rv += 1
        final = objects.load(prev_raw)
        final["metadata"]["resourceVersion"] = str(self.rv)
        raw = objects.dump(final)
        labels, fields = labels_of(previous), store.fields_of(previous)
        change = Change(self.rv, DELETED, namespace, raw, labels, fields, prev_raw, labels, fields)
        self._record(resource, key, change, final, previous)
        return objects.load(raw)

    def _record(
        self, resource: str, key: Key, change: Change, obj: JSON, previous: JSON | None
    ) -> None:
        store = self.store(resource)
        if resource == "pods" and self.keep_history:
            self.pod_history.setdefault(key, []).append(change.raw)
        store.append(change)
        for observer in list(self.observers):
            observer(resource, change.type, obj, previous)

    def compact(self) -> None:
        """Compaction: advance the resourceVersion and forget every older change, so a
        watch from any version seen so far gets 410 Gone."""
        self.rv += 1
        for store in (self.pods, self.events, self.secrets, self.leases):
            store.min_rv = self.rv
            store.changes.clear()


def watch_event(
    change: Change, namespace: str, labels: Selector, fields: Selector
) -> tuple[str, str] | None:
    """What a watcher with these filters sees of one change (the watch cache's
    ``convertToWatchEvent``), as (type, the object's JSON): an object that starts
    matching is ADDED, one that stops matching is DELETED with its previous content at
    the change's resourceVersion."""
    if namespace and change.namespace != namespace:
        return None
    now = change.type != DELETED and labels.matches(change.labels) and fields.matches(change.fields)
    before = (
        change.prev_raw is not None
        and change.prev_labels is not None
        and change.prev_fields is not None
        and labels.matches(change.prev_labels)
        and fields.matches(change.prev_fields)
    )
    if now and not before:
        return ADDED, change.raw
    if now and before:
        return MODIFIED, change.raw
    if before:
        if change.type == DELETED:
            return DELETED, change.raw
        assert change.prev_raw is not None
        obj: Any = objects.load(change.prev_raw)
        obj["metadata"]["resourceVersion"] = str(change.rv)
        return DELETED, objects.dump(obj)
    return None
