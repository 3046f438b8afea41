"""Watches: replay from a resourceVersion, then live changes, with bookmarks.

Mimics the kube-apiserver's watch cache: a watch from version N delivers every change
newer than N in order, then live changes as they are written (a write wakes its
watchers at once); version "0" or "" starts with synthetic ADDED events for the current
objects; a version older than the compaction point gets 410 Gone, which the port raises
as :class:`ExpiredError`; BOOKMARK events carry the newest version when allowed;
``timeout_seconds`` ends the watch normally.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio

from buildruntime.cluster.port import ApiError, ExpiredError
from buildruntime.cluster.watch_events import WatchDecoder, decode_typed_event
from buildruntime.testing import objects
from buildruntime.testing.apiserver import (
    ADDED,
    APIServer,
    Change,
    IndexKey,
    ResourceStore,
    matches,
    watch_event,
)
from buildruntime.testing.faults import Faults
from buildruntime.testing.objects import JSON
from buildruntime.testing.selectors import (
    Selector,
    labels_of,
    parse_field_selector,
    parse_label_selector,
)
from buildruntime.testing.tasks import Notifier

MAX_BACKLOG = 100_000
"""Undelivered events a watcher may hold before the server drops it (too slow)."""


class WatchStream:
    """One open watch; iterate it for ``{"type": ..., "object": ...}`` events, or, with
    a decoder, for what the decoder makes of each event's JSON line (as a real API
    server's watch body carries it).

    New changes are pushed to it by the store at write time (filtered, then queued) and
    wake only this watch; the objects are copied (or decoded) when they are delivered.
    """

    def __init__(
        self,
        server: APIServer,
        store: ResourceStore,
        faults: Faults,
        namespace: str,
        resource_version: str,
        labels: Selector,
        fields: Selector,
        timeout_seconds: int | None,
        allow_bookmarks: bool,
        bookmark_interval: float,
        decoder: WatchDecoder[Any] | None = None,
    ) -> None:
        self._server = server
        self._store = store
        self._decoder = decoder
        self._faults = faults
        self._namespace = namespace
        self._labels = labels
        self._fields = fields
        self._allow_bookmarks = allow_bookmarks
        self._bookmark_interval = bookmark_interval
        self._initial: deque[tuple[str, str]] = deque()
        self._queue: deque[Change] = deque()
        self._notifier = Notifier()
        self._expired: ExpiredError | None = None
        self._error: Exception | None = None
        self._ended = False
        now = anyio.current_time()
        # As on the real server, no timeout (or 0) means the server's own, long one.
        self._deadline = math.inf if not timeout_seconds else now + timeout_seconds
        self._next_bookmark = now + bookmark_interval
        if resource_version in ("", "0"):
            for key in sorted(store.objects):
                obj = store.objects[key]
                if matches(namespace, labels, fields, key[0], labels_of(obj), store.fields_of(obj)):
                    self._initial.append((ADDED, store.raws[key]))
            return
        try:
            rv = int(resource_version)
        except ValueError:
            raise ApiError(
                400, "BadRequest", f'invalid resource version "{resource_version}"'
            ) from None
        if rv < store.min_rv:
            self._expired = ExpiredError(f"too old resource version: {rv} ({store.min_rv})")
            return
        for change in store.changes_after(rv):
            self.offer(change)

    # ------------------------------------------------- pushed by the store
    def index_keys(self) -> list[IndexKey]:
        keys: list[IndexKey] = []
        for kind, selector in (("label", self._labels), ("field", self._fields)):
            for requirement in selector.requirements:
                if requirement.op == "=" and len(requirement.values) == 1:
                    keys.append((kind, requirement.key, next(iter(requirement.values))))
        return keys

    def _passes(
        self, namespace: str, labels: dict[str, str] | None, fields: dict[str, str] | None
    ) -> bool:
        return (
            labels is not None
            and fields is not None
            and (not self._namespace or self._namespace == namespace)
            and self._labels.matches(labels)
            and self._fields.matches(fields)
        )

    def offer(self, change: Change) -> None:
        if self._ended or self._error is not None:
            return
        if not (
            self._passes(change.namespace, change.labels, change.fields)
            or self._passes(change.namespace, change.prev_labels, change.prev_fields)
        ):
            return
        if len(self._queue) >= MAX_BACKLOG:
            self._ended = True  # too slow: the server closes the watch
        else:
            self._queue.append(change)
        self._notifier.notify()

    def cut(self, error: Exception | None) -> None:
        """Break the watch with ``error``, or end it normally when None."""
        if error is None:
            self._ended = True
        elif self._error is None:
            self._error = error
        self._notifier.notify()

    # ----------------------------------------------------------- iteration
    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            kind, raw = await self._next_event()
            if self._decoder is None:
                return {"type": kind, "object": objects.load(raw)}
            line = f'{{"type":"{kind}","object":{raw}}}'.encode()
            event = decode_typed_event(line, self._decoder)
            if event is not None:
                return event

    async def _next_event(self) -> tuple[str, str]:
        """The next event's type and object JSON."""
        while True:
            if self._error is not None:
                error, self._ended = self._error, True
                raise error
            if self._ended:
                raise StopAsyncIteration
            self._faults.check_available()
            if self._expired is not None:
                self._ended = True
                raise self._expired
            if self._initial:
                return self._initial.popleft()
            while self._queue:
                change = self._queue.popleft()
                event = watch_event(change, self._namespace, self._labels, self._fields)
                if event is not None:
                    return event
            now = anyio.current_time()
            if now >= self._deadline:
                self._ended = True
                raise StopAsyncIteration
            if self._allow_bookmarks and now >= self._next_bookmark:
                self._next_bookmark = now + self._bookmark_interval
                return "BOOKMARK", objects.dump(_bookmark(self._store.kind, self._server.rv))
            wake = self._deadline
            if self._allow_bookmarks:
                wake = min(wake, self._next_bookmark)
            await self._notifier.wait(wake - now)


def _bookmark(kind: str, resource_version: int) -> JSON:
    """A BOOKMARK's object as the API server writes it: the kind's zero value (Go
    marshals its nil slices and zero times as null) with only the resourceVersion set."""
    meta = {"resourceVersion": str(resource_version), "creationTimestamp": None}
    head = {"kind": kind, "apiVersion": "v1", "metadata": meta}
    if kind == "Pod":
        return {**head, "spec": {"containers": None}, "status": {}}
    return {
        **head,
        "involvedObject": {},
        "reason": "",
        "message": "",
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
        "eventTime": None,
        "reportingComponent": "",
        "reportingInstance": "",
    }


class WatchContext:
    """The async context manager :meth:`FakeCluster.watch` returns: entering sends the
    request; leaving closes the watch, however the block ends."""

    def __init__(
        self,
        begin: Callable[[], Awaitable[None]],
        server: APIServer,
        faults: Faults,
        registry: set[WatchStream],
        resource: str,
        namespace: str,
        resource_version: str,
        label_selector: str | None,
        field_selector: str | None,
        timeout_seconds: int | None,
        allow_bookmarks: bool,
        bookmark_interval: float,
        decoder: WatchDecoder[Any] | None = None,
    ) -> None:
        self._begin = begin
        self._decoder = decoder
        self._server = server
        self._faults = faults
        self._registry = registry
        self._resource = resource
        self._namespace = namespace
        self._resource_version = resource_version
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._timeout_seconds = timeout_seconds
        self._allow_bookmarks = allow_bookmarks
        self._bookmark_interval = bookmark_interval
        self._stream: WatchStream | None = None

    async def __aenter__(self) -> AsyncIterator[Any]:
        await self._begin()
        store = self._server.store(self._resource)
        stream = WatchStream(
            self._server,
            store,
            self._faults,
            self._namespace,
            self._resource_version,
            parse_label_selector(self._label_selector),
            parse_field_selector(self._field_selector, store.supported_fields),
            self._timeout_seconds,
            self._allow_bookmarks,
            self._bookmark_interval,
            self._decoder,
        )
        self._stream = stream
        self._registry.add(stream)
        store.register(stream)
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            self._registry.discard(self._stream)
            self._server.store(self._resource).unregister(self._stream)
            self._stream = None
