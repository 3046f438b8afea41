"""The reflector: keeps a Store in step with the API server by list, then watch.

Modelled on client-go's ``Reflector.ListAndWatch``, in three layers, each handling one
piece of Kubernetes behaviour:

- :meth:`Reflector.run` (forever): a list, then watches until a relist is due, until
  the build is removed (the task is cancelled). Every transient failure of a list or a
  watch is retried with exponential backoff and full jitter (tenacity), starting again
  from a fresh backoff after a long healthy stretch.
- :meth:`Reflector._watch_until_relist` (one cycle): watches from the list's
  resourceVersion, re-watching from the newest version seen whenever a watch ends,
  normally (servers end watches on purpose after ``timeoutSeconds``) or by a broken
  connection. It returns to relist on a 410 Gone and when ``resync_period`` has passed.
- :meth:`Reflector._watch_once` (one request): follows one watch, applying each event
  and remembering the resourceVersion of every event, bookmarks included.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol

import anyio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_random_exponential,
)

from buildruntime.cluster.port import (
    RESOURCES_WITHOUT_BOOKMARKS,
    ApiError,
    Cluster,
    ExpiredError,
    Resource,
    UnavailableError,
)
from buildruntime.informer.decoders import S, SnapshotDecoder

log = logging.getLogger("buildruntime.informer")

# Failures worth retrying. ApiError covers 403s that an RBAC fix resolves and 5xx
# answers the port did not already classify; a 410 is handled before it gets here.
_TRANSIENT = (UnavailableError, ApiError)


@dataclass(frozen=True)
class ReflectorSettings:
    """Timing of list and watch. Defaults follow client-go."""

    resync_period: float = 300.0
    """Relist this often even when the watch is healthy, to catch anything missed."""
    watch_timeout: tuple[int, int] = (300, 600)
    """The server ends each watch after a random number of seconds in this range."""
    backoff_initial: float = 0.8
    backoff_max: float = 30.0
    backoff_reset: float = 120.0
    """A failure after this long without one starts the backoff from the beginning."""
    min_watch_duration: float = 1.0
    """A watch that ends normally this soon with no events counts as a failure."""
    watch_idle_timeout: float = 70.0
    """A watch that delivers nothing, not even a bookmark, for this long is broken."""


RelistCause = Literal["initial", "resync", "expired"]
RestartCause = Literal["closed", "error", "stalled"]


class WatchObserver(Protocol):
    """Told of every list and every re-watch (never of single events), for metrics."""

    def relisted(self, resource: Resource, cause: RelistCause) -> None: ...

    def rewatched(self, resource: Resource, cause: RestartCause) -> None: ...


class _Unobserved:
    def relisted(self, resource: Resource, cause: RelistCause) -> None:
        pass

    def rewatched(self, resource: Resource, cause: RestartCause) -> None:
        pass


UNOBSERVED: WatchObserver = _Unobserved()


class Reflector(Generic[S]):
    """List and watch one resource for one selector, feeding ``apply``/``replace``.

    ``replace(items)`` receives a full list; ``apply(type, snapshot)`` one watch event.
    Both are synchronous, so an event is in the cache before the next one is read.
    ``decoder`` turns watch lines and list items into the resource's snapshots.
    """

    def __init__(
        self,
        cluster: Cluster,
        resource: Resource,
        namespace: str,
        *,
        decoder: SnapshotDecoder[S],
        replace: Callable[[list[S]], None],
        apply: Callable[[str, S], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        settings: ReflectorSettings | None = None,
        empty_at: str | None = None,
        observer: WatchObserver = UNOBSERVED,
    ) -> None:
        self._cluster = cluster
        self._observer = observer
        self._resource: Resource = resource
        self._namespace = namespace
        self._decoder = decoder
        self._replace = replace
        self._apply = apply
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._settings = settings or ReflectorSettings()
        self._resource_version: str | None = None
        self._relist_from: str | None = "0"  # "0": the first list may come from the watch cache
        self._empty_at = empty_at
        self._relist_cause: RelistCause = "initial"
        self.synced = anyio.Event()
        self.last_error: BaseException | None = None
        self._last_heard = 0.0
        self._stalled = False
        self.relists = 0
        self.rewatches = 0

    @property
    def resource_version(self) -> str | None:
        """The newest resourceVersion seen (bookmarks included)."""
        return self._resource_version

    async def run(self) -> None:
        """List and watch until cancelled, backing off on every transient failure.

        With ``empty_at`` (a resourceVersion at which the caller knows that nothing
        matched: a pod's Events at the pod's creation, since they name its uid) the first
        list is skipped and the first watch starts there. Events are not in the API
        server's watch cache, so that list would be an etcd range read of every Event in
        the namespace, filtered by the field selector: a cost that grows with the builds
        sharing the namespace, to learn nothing. The watch from ``empty_at`` replays
        whatever came after it; a 410 (compacted) relists as always.
        """
        if self._empty_at is not None:
            self._replace([])
            self._resource_version = self._relist_from = self._empty_at
            self._relist_cause = "resync"  # its first list will be a relist
            self.synced.set()
            await self._watch_until_relist()
        while True:
            await self._retrying(self._list_and_replace)
            await self._watch_until_relist()

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        """Call until it succeeds, backing off exponentially with full jitter between
        transient failures. A call that fails only after a healthy stretch returns at
        once instead, so the next failure starts the backoff anew (client-go's reset)."""
        s = self._settings
        retrying = AsyncRetrying(
            sleep=anyio.sleep,
            wait=wait_random_exponential(multiplier=s.backoff_initial, max=s.backoff_max),
            retry=retry_if_exception_type(_TRANSIENT) & retry_if_not_exception_type(ExpiredError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                started = anyio.current_time()
                try:
                    await call()
                except _TRANSIENT as error:
                    healthy = anyio.current_time() - started >= s.backoff_reset
                    if healthy and not isinstance(error, ExpiredError):
                        log.info(
                            "%s watch failed after a healthy stretch: %s", self._resource, error
                        )
                        return
                    raise

    def _log_retry(self, state: Any) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        self.last_error = error
        log.warning(
            "%s watch in %s failed (%s); retrying in %.1fs",
            self._resource,
            self._namespace,
            error,
            state.upcoming_sleep,
        )

    async def _list_and_replace(self) -> None:
        """One list: replace the cache with it and remember its resourceVersion."""
        try:
            listing = await self._list()
        except ExpiredError:
            # The version asked for is compacted already: a consistent read never is.
            self._relist_from = None
            self._relist_cause = "expired"
            listing = await self._list()
        self._replace([self._decoder.from_item(item) for item in listing.get("items") or ()])
        self._resource_version = (listing.get("metadata") or {}).get("resourceVersion") or "0"
        # Later relists ask for at least what was seen, like client-go's relistResourceVersion.
        self._relist_from = self._resource_version
        self.relists += 1
        self._observer.relisted(self._resource, self._relist_cause)
        self._relist_cause = "resync"
        self.last_error = None
        self.synced.set()

    async def _watch_until_relist(self) -> None:
        """Watch from the newest resourceVersion seen, again and again, until a 410 or
        the resync period calls for a relist. A watch cut by the network resumes from
        where it was (no relist needed: the server replays what was missed)."""
        resync_at = anyio.current_time() + self._settings.resync_period
        while True:
            remaining = resync_at - anyio.current_time()
            if remaining <= 0:
                return
            try:
                with anyio.move_on_after(remaining):
                    await self._retrying(self._watch_once)
            except ExpiredError:
                # 410 Gone: the version we hold was compacted; only a fresh
                # (consistent) list can tell what changed since.
                log.info("%s watch expired in %s; relisting", self._resource, self._namespace)
                self._relist_from = None
                self._relist_cause = "expired"
                return
            self.rewatches += 1

    async def _list(self) -> dict[str, Any]:
        return await self._cluster.list(
            self._resource,
            self._namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            resource_version=self._relist_from,
        )

    async def _watch_once(self) -> None:
        """Follow one watch request from the newest resourceVersion seen."""
        opened = self._last_heard = anyio.current_time()
        failure: Exception | None = None
        seen_any = False
        low, high = self._settings.watch_timeout
        timeout_seconds = random.randint(low, high)
        async with anyio.create_task_group() as guard:
            guard.start_soon(self._watchdog, guard.cancel_scope, timeout_seconds)
            try:
                seen_any = await self._follow_watch(timeout_seconds)
            except Exception as error:  # raised outside, not as a task group's group
                failure = error
            guard.cancel_scope.cancel()
        if failure is not None:
            if not isinstance(failure, ExpiredError):  # a relist follows, not a re-watch
                self._observer.rewatched(self._resource, "error")
            raise failure
        if self._stalled:
            self._observer.rewatched(self._resource, "stalled")
            raise UnavailableError(
                f"{self._resource} watch silent for {self._settings.watch_idle_timeout:g}s"
            )
        if not seen_any and anyio.current_time() - opened < self._settings.min_watch_duration:
            # An immediately closed, empty watch is a failure in disguise (a proxy
            # resetting us, an overloaded server): back off rather than spin.
            self._observer.rewatched(self._resource, "error")
            raise UnavailableError(f"{self._resource} watch closed at once with no events")
        self._observer.rewatched(self._resource, "closed")

    async def _follow_watch(self, timeout_seconds: int) -> bool:
        """Apply every event of one watch; True if it delivered any."""
        assert self._resource_version is not None
        seen_any = False
        async with self._cluster.watch(
            self._resource,
            self._namespace,
            resource_version=self._resource_version,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            timeout_seconds=timeout_seconds,
            allow_bookmarks=True,
            decoder=self._decoder,
        ) as events:
            async for event in events:
                seen_any = True
                self._last_heard = anyio.current_time()
                kind = event.type
                obj = event.object
                version = obj.resource_version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
                elif kind != "BOOKMARK":
                    log.warning("ignoring %s watch event of type %r", self._resource, kind)
                    continue
                if version:
                    self._resource_version = version
        return seen_any

    async def _watchdog(self, watch_scope: anyio.CancelScope, timeout_seconds: int) -> None:
        """End a watch that has gone silent: bookmarks arrive about once a minute on a
        healthy watch, so nothing at all for ``watch_idle_timeout`` means a connection
        that stalled without breaking (a known hang of long-lived HTTP streams). Events
        get no bookmarks; their watch is given until the server's own end."""
        self._stalled = False
        idle = self._settings.watch_idle_timeout
        if self._resource in RESOURCES_WITHOUT_BOOKMARKS:
            idle += timeout_seconds
        while True:
            await anyio.sleep(max(self._last_heard + idle - anyio.current_time(), 0.01))
            if anyio.current_time() - self._last_heard >= idle:
                self._stalled = True
                watch_scope.cancel()
                return
