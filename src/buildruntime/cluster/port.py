"""The port to the Kubernetes API server: the few calls the informer and the runtime need.

Everything crosses this boundary as plain dicts, in the JSON shape the API server speaks,
except watch events for the informer, which a decoder turns straight into its typed
snapshots, so the hot path (watch events into the cache) never builds heavy objects. Two
implementations exist: :mod:`buildruntime.cluster.kube` (the official client against a
real API server) and :class:`buildruntime.testing.FakeCluster` (in memory).

Streams (watches and log streams) are async context managers: leaving the ``async with``
block closes the underlying connection at once, whether the block ended normally, by an
exception or by cancellation, so a cancelled build leaves nothing open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from .watch_events import TypedWatchEvent, WatchDecoder

JSON = dict[str, Any]
"""A Kubernetes object or list as decoded JSON."""

Resource = Literal["pods", "events"]

E = TypeVar("E", bound="TypedWatchEvent")

RESOURCES_WITHOUT_BOOKMARKS = frozenset({"events"})
"""The API server serves events straight from etcd, not from its watch cache
(DefaultWatchCacheSizes gives them 0), so an events watch gets no bookmarks: a quiet
one is silent until the server ends it after ``timeoutSeconds``."""


class Request(NamedTuple):
    """One request sent to the API server, for accounting: ``verb`` is one of list,
    watch, get, create, patch, delete, log; ``resource`` is pods, events, secrets or
    leases (log is on pods); Lease requests are the worker's, not any build's. Both
    cluster implementations keep a list of these in ``.requests``."""

    verb: str
    resource: str


class ApiError(Exception):
    """The API server answered with an error status.

    ``status`` is the HTTP code, ``reason`` the Status object's reason (``NotFound``,
    ``Forbidden``, ``Invalid``...) and ``message`` its human message, verbatim.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """404: the object does not exist (or no longer does)."""

    def __init__(self, message: str, reason: str = "NotFound") -> None:
        super().__init__(404, reason, message)


class ConflictError(ApiError):
    """409: the object already exists, or a precondition did not hold."""

    def __init__(self, message: str, reason: str = "AlreadyExists") -> None:
        super().__init__(409, reason, message)


class ExpiredError(ApiError):
    """410 Gone: the resourceVersion asked for has been compacted away.

    A watch gets this either as an HTTP 410 or as an ERROR event carrying a Status with
    code 410; both implementations raise this one exception for both, so the reflector
    has a single signal meaning "relist".
    """

    def __init__(self, message: str = "too old resource version") -> None:
        super().__init__(410, "Expired", message)


def error_for_status(status: int, reason: str, message: str) -> ApiError:
    """The :class:`ApiError` (or subclass) for an error status from the API server."""
    if status == 404:
        return NotFoundError(message, reason or "NotFound")
    if status == 409:
        return ConflictError(message, reason or "AlreadyExists")
    if status == 410:
        return ExpiredError(message) if message else ExpiredError()
    return ApiError(status, reason, message)


class UnavailableError(Exception):
    """The API server could not be reached or the connection broke (refused, reset,
    timed out, 5xx, 429). Transient: callers retry with backoff."""


class Cluster(Protocol):
    """What buildruntime needs from an API server: namespaced pods and events, the
    builds' Secrets, and the workers' Leases."""

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        """A ``PodList``/``EventList``: ``{"metadata": {"resourceVersion": ...}, "items": [...]}``.

        ``resource_version="0"`` may be served from the API server's watch cache;
        ``None`` asks for a consistent (quorum) read.
        """
        ...

    @overload
    def watch(
        self,
        resource: Resource,
        namespace: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
        decoder: None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[JSON]]: ...

    @overload
    def watch(
        self,
        resource: Resource,
        namespace: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
        decoder: WatchDecoder[E],
    ) -> AbstractAsyncContextManager[AsyncIterator[E]]: ...

    def watch(
        self,
        resource: Resource,
        namespace: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
        decoder: WatchDecoder[E] | None = None,
    ) -> (
        AbstractAsyncContextManager[AsyncIterator[JSON]]
        | AbstractAsyncContextManager[AsyncIterator[E]]
    ):
        """A watch from ``resource_version``.

        Without a ``decoder`` it yields each event as the API server sent it, decoded
        as a dict: ``{"type": ..., "object": {...}}``. With one, each line goes through
        the decoder (see :mod:`buildruntime.cluster.watch_events`) and the iterator
        yields what it returns: the informer's typed snapshots, never a full dict.

        Types are ADDED, MODIFIED, DELETED and BOOKMARK. The iterator ends when the
        server ends the watch normally; it raises :class:`ExpiredError` for a 410 (HTTP
        or ERROR event), :class:`UnavailableError` when the connection breaks, and
        :class:`ApiError` for any other error status.
        """
        ...

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        """Create a pod; returns the created object. Raises :class:`ApiError` (an
        admission webhook's denial arrives as 400/403/422 with its message)."""
        ...

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        """Apply a strategic merge patch to a pod; returns the patched object."""
        ...

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        """Delete a pod. Raises :class:`NotFoundError` when it does not exist."""
        ...

    async def create_secret(self, namespace: str, manifest: JSON) -> JSON:
        """Create a Secret; returns the created object (its values included: callers
        keep it to themselves). Raises :class:`ConflictError` when the name is taken."""
        ...

    async def patch_secret(self, namespace: str, name: str, patch: JSON) -> JSON:
        """Apply a strategic merge patch to a Secret (the runtime sets its owner)."""
        ...

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret. Raises :class:`NotFoundError` when it does not exist."""
        ...

    async def get_secret(self, namespace: str, name: str) -> JSON:
        """Read a Secret (a worker adopting a build reads back the values it masks).
        Raises :class:`NotFoundError` when it does not exist."""
        ...

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        """Create a ``coordination.k8s.io/v1`` Lease; returns the created object (with
        its uid and resourceVersion). Raises :class:`ConflictError` when the name is
        taken."""
        ...

    async def get_lease(self, namespace: str, name: str) -> JSON:
        """Read a Lease. Raises :class:`NotFoundError` when it does not exist."""
        ...

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        """Apply a JSON merge patch to a Lease (a renewal); returns the patched object.
        A ``metadata.resourceVersion`` in the patch is a precondition
        (:class:`ConflictError` when it no longer holds); :class:`NotFoundError` when
        the Lease is gone."""
        ...

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        """Delete a Lease; its dependents (pods owning nothing else) are then deleted by
        the garbage collector in the background. With ``resource_version`` the delete
        is conditional: :class:`ConflictError` when the Lease changed since that
        version. :class:`NotFoundError` when it does not exist."""
        ...

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        """A ``LeaseList`` (a consistent read): ``{"metadata": {...}, "items": [...]}``."""
        ...

    def stream_logs(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool = True,
        timestamps: bool = True,
        since_time: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """A container's log as raw byte chunks (not split into lines).

        With ``timestamps`` each line starts with an RFC 3339 timestamp and a space.
        With ``follow`` the stream stays open while the container runs and ends when it
        terminates. ``since_time`` (RFC 3339) has one-second granularity on a real API
        server. Raises :class:`ApiError` with status 400 while the container is still
        waiting to start (retryable), :class:`NotFoundError` once the pod is gone, and
        :class:`UnavailableError` when the connection breaks.
        """
        ...
