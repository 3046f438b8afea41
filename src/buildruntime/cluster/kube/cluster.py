"""KubeCluster: the port's calls (list, create, patch, delete, watch, log streams) on a
real API server, with the request accounting both cluster implementations keep.

Each call names its HTTP request here (verb, path, query, media types); loading the
client's configuration is in :mod:`.config`, sending a request in :mod:`.request`, the
error mapping in :mod:`.errors`, and every blocking call runs in a thread of
:mod:`.threads`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import Any

import kubernetes.client

from ..kube_stream import LineSplitter, StreamConnection
from ..port import (
    JSON,
    RESOURCES_WITHOUT_BOOKMARKS,
    ApiError,
    Request,
    Resource,
)
from ..watch_events import (
    WatchDecoder,
    decode_event,
    decode_typed_event,
    watch_error,
)
from .config import disable_urllib3_retries, load_in_cluster, load_kubeconfig, server_url
from .errors import TRANSPORT_ERRORS, broken_stream_error
from .request import JSON_MEDIA_TYPE, Query, query_params, request_json, send
from .threads import ThreadLimiter

__all__ = ["KubeCluster"]

_RESOURCES: frozenset[str] = frozenset({"pods", "events"})

_STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeCluster:
    """The cluster port on a real API server, through the official client's ApiClient.

    Build one with :meth:`from_kubeconfig`, :meth:`in_cluster`, or from an
    ``ApiClient`` you configured. The cluster owns its ApiClient: it turns the
    client's urllib3 retries off and closes its connection pool in :meth:`aclose`
    (also ``async with KubeCluster(...) as cluster``).

    Settings:

    - ``stream_threads`` (512): tokens of this cluster's own thread limiter; every
      blocking call and every waiting stream read takes one. A build holds three
      while a step runs (two watches and a log stream), so the default serves about
      150 concurrent builds; idle threads cost only their stack reservation.
    - ``request_timeout`` (30 s): total time for a unary call (list, create, patch,
      delete), and the connect timeout of streams.
    - ``watch_read_timeout`` (70 s): a watch that delivers no byte for this long is
      treated as broken and raises :class:`~buildruntime.cluster.port.UnavailableError`.
      The API server sends a bookmark about every minute on a pods watch with
      ``allowWatchBookmarks``, so 70 s of silence means a dead connection (kopf uses the
      same figure). Events get no bookmarks: their watches wait out ``timeoutSeconds``.
    - ``log_read_timeout`` (300 s): the same for a follow log stream. A quiet container
      is silent for as long as it likes, so here silence means "reopen with
      ``sinceTime``" (which also catches streams that stall silently, kubernetes
      #59477, #28369): one extra request per five quiet minutes.

    Accounting, as on the fake cluster: ``requests`` gets one
    :class:`~buildruntime.cluster.port.Request` per HTTP request issued (failed ones
    included); ``open_watches`` and ``open_log_streams`` count streams open now.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> None:
        if stream_threads < 1:
            raise ValueError("stream_threads must be at least 1")
        if min(request_timeout, watch_read_timeout, log_read_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        self._api_client: Any = api_client
        disable_urllib3_retries(api_client)
        self._threads = ThreadLimiter(stream_threads)
        self._closed = False
        self.stream_threads = stream_threads
        self.request_timeout = float(request_timeout)
        self.watch_read_timeout = float(watch_read_timeout)
        self.log_read_timeout = float(log_read_timeout)
        self.requests: builtins.list[Request] = []
        self.open_watches = 0
        self.open_log_streams = 0

    @property
    def server(self) -> str:
        """The URL of the API server this cluster talks to, as its configuration
        says (``https://host:port``)."""
        return server_url(self._api_client)

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        context: str | None = None,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> KubeCluster:
        """Load a kubeconfig into a private ``Configuration`` (never the client's
        process-wide default). ``path=None`` means ``$KUBECONFIG`` (read now, and
        possibly a list of files) or ``~/.kube/config``; ``context=None`` its current
        context. Refreshed credentials are not written back to the file."""
        return cls(
            load_kubeconfig(path, context),
            stream_threads=stream_threads,
            request_timeout=request_timeout,
            watch_read_timeout=watch_read_timeout,
            log_read_timeout=log_read_timeout,
        )

    @classmethod
    def in_cluster(
        cls,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> KubeCluster:
        """Use the pod's service account (token, CA and ``KUBERNETES_SERVICE_HOST``),
        into a private ``Configuration``; the token file is re-read as it rotates."""
        return cls(
            load_in_cluster(),
            stream_threads=stream_threads,
            request_timeout=request_timeout,
            watch_read_timeout=watch_read_timeout,
            log_read_timeout=log_read_timeout,
        )

    async def aclose(self) -> None:
        """Close the ApiClient's connection pool. Streams still open keep their own
        connection until their ``async with`` ends."""
        if self._closed:
            return
        self._closed = True
        self._api_client.close()

    async def __aenter__(self) -> KubeCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- unary calls -------------------------------------------------------------

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        """``GET /api/v1/namespaces/{ns}/{pods|events}``. ``resource_version="0"``
        lets the API server answer from its watch cache; ``None`` sends no
        resourceVersion, which is a consistent (quorum) read from etcd."""
        _check_resource(resource)
        query = query_params(
            labelSelector=label_selector,
            fieldSelector=field_selector,
            resourceVersion=resource_version,
        )
        self.requests.append(Request("list", resource))
        return await self._request_json(
            f"list {resource} in {namespace}",
            "GET",
            f"/api/v1/namespaces/{{namespace}}/{resource}",
            {"namespace": namespace},
            query=query,
        )

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        """``POST`` the manifest as JSON. An admission webhook's denial comes back as
        400/403/422 with the webhook's text in the Status message, which
        :class:`ApiError` carries verbatim."""
        self.requests.append(Request("create", "pods"))
        return await self._request_json(
            f"create pod in {namespace}",
            "POST",
            "/api/v1/namespaces/{namespace}/pods",
            {"namespace": namespace},
            body=manifest,
            content_type=JSON_MEDIA_TYPE,
        )

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        """``PATCH`` with ``application/strategic-merge-patch+json``: for pods, lists
        such as ``spec.containers`` merge by their ``name`` key, so a patch naming one
        container changes only that container (a JSON merge patch would replace the
        whole list)."""
        self.requests.append(Request("patch", "pods"))
        return await self._request_json(
            f"patch pod {namespace}/{name}",
            "PATCH",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            {"namespace": namespace, "name": name},
            body=patch,
            content_type=_STRATEGIC_MERGE_PATCH,
        )

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        """``DELETE`` the pod (404 raises :class:`NotFoundError`)."""
        self.requests.append(Request("delete", "pods"))
        await self._request_json(
            f"delete pod {namespace}/{name}",
            "DELETE",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            {"namespace": namespace, "name": name},
            query=query_params(gracePeriodSeconds=grace_period_seconds),
            decode=False,
        )

    # -- streams -----------------------------------------------------------------

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
        decoder: WatchDecoder[Any] | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """``GET ...?watch=true``: see :class:`_Watch` for what the iterator does."""
        _check_resource(resource)
        query = query_params(
            watch="true",
            allowWatchBookmarks="true" if allow_bookmarks else None,
            resourceVersion=resource_version,
            labelSelector=label_selector,
            fieldSelector=field_selector,
            timeoutSeconds=timeout_seconds,
        )
        return _Watch(self, resource, namespace, query, decoder)

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
        """``GET .../pods/{pod}/log``: see :class:`_LogStream`."""
        query = query_params(
            container=container,
            follow="true" if follow else None,
            timestamps="true" if timestamps else None,
            sinceTime=since_time,
        )
        return _LogStream(self, namespace, pod, query)

    # -- plumbing ----------------------------------------------------------------

    async def _request_json(
        self,
        what: str,
        method: str,
        path: str,
        path_params: dict[str, str],
        *,
        query: Query | None = None,
        body: JSON | None = None,
        content_type: str | None = None,
        decode: bool = True,
    ) -> JSON:
        """A unary call (:func:`~.request.request_json`) in a worker thread, bounded
        by ``request_timeout``."""
        return await self._threads.run(
            partial(
                request_json,
                self._api_client,
                what,
                method,
                path,
                path_params,
                timeout=self.request_timeout,
                query=query,
                body=body,
                content_type=content_type,
                decode=decode,
            )
        )

    def _open_stream(
        self,
        connection: StreamConnection,
        what: str,
        path: str,
        path_params: dict[str, str],
        query: Query,
        accept: str,
        read_timeout: float,
    ) -> None:
        """Blocking: open a streamed GET and hand its response to ``connection``.

        ``_request_timeout=(connect, read)``: the read timeout applies to the response
        headers and then to every read of the body, so a silent connection raises
        instead of hanging (the Python client's watch hang, #1148/#1402).
        """
        response = send(
            self._api_client,
            what,
            "GET",
            path,
            path_params,
            query=query,
            body=None,
            content_type=None,
            timeout=(self.request_timeout, read_timeout),
            accept=accept,
        )
        connection.attach(response)


class _Stream:
    """Shared life cycle of a watch and a log stream.

    ``__aenter__`` opens the request in a worker thread and raises the port's error
    for an error status; ``__aexit__`` closes the connection whatever ended the block
    (normal end, exception, cancellation) so that no worker thread stays blocked on
    it: see :class:`~buildruntime.cluster.kube_stream.StreamConnection`.
    """

    _verb = ""
    _resource = ""
    _counter = ""
    _accept = JSON_MEDIA_TYPE

    def __init__(
        self,
        cluster: KubeCluster,
        path: str,
        path_params: dict[str, str],
        query: Query,
        what: str,
    ) -> None:
        self._cluster = cluster
        self._path = path
        self._path_params = path_params
        self._query = query
        self._what = what
        self._connection = StreamConnection()
        self._read_timeout = cluster.watch_read_timeout
        self._counted = False
        self._entered = False
        self._ended = False

    async def _open(self) -> None:
        if self._entered:
            raise RuntimeError(f"{self._what}: a stream can be entered only once")
        self._entered = True
        cluster = self._cluster
        cluster.requests.append(Request(self._verb, self._resource))
        connection = self._connection
        try:
            await cluster._threads.run(
                partial(
                    cluster._open_stream,
                    connection,
                    self._what,
                    self._path,
                    self._path_params,
                    self._query,
                    self._accept,
                    self._read_timeout,
                )
            )
        except BaseException:
            await connection.aclose()
            raise
        setattr(cluster, self._counter, getattr(cluster, self._counter) + 1)
        self._counted = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = True
        await self._connection.aclose()
        if self._counted:
            self._counted = False
            cluster = self._cluster
            setattr(cluster, self._counter, getattr(cluster, self._counter) - 1)

    def _read_block(self) -> bytes:
        """Blocking: the next block of the body (``b""`` at its end), transport
        failures turned into :class:`UnavailableError`."""
        try:
            return self._connection.read()
        except TRANSPORT_ERRORS as exc:
            raise broken_stream_error(self._what, exc, self._read_timeout) from exc


class _Watch(_Stream):
    """A watch: an async iterator of ``{"type": ..., "object": {...}}`` dicts, or of
    what its decoder makes of each line (:mod:`~buildruntime.cluster.watch_events`).

    - Each worker-thread hop reads every byte that has arrived (up to 256 KiB) and
      splits it on ``b"\\n"``; a line split across reads waits for its newline. Each
      ``__anext__`` then decodes one line, on the event loop. One at a time rather
      than a whole read's worth at once: decoded pods kept alive in a batch make every
      young-generation collection of the cyclic GC walk them, which costs more than
      the decoding itself (measured: 17 dict pods of 15 KiB alive at a time decode
      about 30 % slower than one at a time). A malformed line is logged and skipped.
      Beyond the decoding, an event costs a list index and one comparison.
    - A normal end of the body (the server's ``timeoutSeconds``, or the API server
      closing watches on shutdown) ends the iteration; the reflector re-watches from
      the last resourceVersion.
    - ``ERROR`` events carry a ``Status``: code 410 (the resourceVersion was
      compacted, "too old resource version") raises :class:`ExpiredError`, any other
      code :class:`ApiError`. An HTTP 410 on the request raises ExpiredError too.
    - A cut connection, or ``watch_read_timeout`` seconds without a byte, raises
      :class:`UnavailableError`.
    """

    _verb = "watch"
    _counter = "open_watches"

    def __init__(
        self,
        cluster: KubeCluster,
        resource: str,
        namespace: str,
        query: Query,
        decoder: WatchDecoder[Any] | None,
    ) -> None:
        super().__init__(
            cluster,
            f"/api/v1/namespaces/{{namespace}}/{resource}",
            {"namespace": namespace},
            query,
            f"watch {resource} in {namespace}",
        )
        self._resource = resource
        if resource in RESOURCES_WITHOUT_BOOKMARKS:
            # Silence proves nothing on such a watch: wait out the server's own end.
            timeout = dict(query).get("timeoutSeconds")
            server_end = float(timeout) if timeout else 1800.0
            self._read_timeout = server_end + cluster.watch_read_timeout
        self._decoder = decoder
        self._batch: builtins.list[bytes] = []
        self._next = 0
        self._splitter = LineSplitter()

    async def __aenter__(self) -> _Watch:
        await self._open()
        return self

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> Any:
        decoder = self._decoder
        while True:
            batch = self._batch
            index = self._next
            if index < len(batch):
                self._next = index + 1
                try:
                    if decoder is not None:
                        event: Any = decode_typed_event(batch[index], decoder)
                    else:
                        event = decode_event(batch[index])
                        if event is not None and event["type"] == "ERROR":
                            raise watch_error(event.get("object"))
                except ApiError:
                    self._ended = True
                    self._batch = []
                    raise
                if event is None:
                    continue
                return event
            if self._ended:
                raise StopAsyncIteration
            self._batch, self._ended = await self._cluster._threads.run(self._read_lines)
            self._next = 0

    def _read_lines(self) -> tuple[builtins.list[bytes], bool]:
        block = self._read_block()
        if block:
            return self._splitter.feed(block), False
        return self._splitter.finish(), True


class _LogStream(_Stream):
    """A container's log: an async iterator of raw byte chunks, as they arrive.

    No decoding and no line splitting (the kubelet may split long lines, and the last
    line may have no newline: the logs layer deals with lines). The body ends when the
    container terminates (with ``follow``) or after the current log (without).
    Errors: 400 while the container is still waiting to start ("container ... is
    waiting to start", retryable) is an :class:`ApiError` with status 400; 404 once
    the pod is gone; a cut or silent connection is :class:`UnavailableError`.
    """

    _verb = "log"
    _resource = "pods"
    _counter = "open_log_streams"
    # The log endpoint answers text, but negotiates only json/yaml/protobuf by name:
    # "text/plain" gets a 406 from current API servers, so accept anything.
    _accept = "*/*"

    def __init__(
        self,
        cluster: KubeCluster,
        namespace: str,
        pod: str,
        query: Query,
    ) -> None:
        super().__init__(
            cluster,
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            {"namespace": namespace, "name": pod},
            query,
            f"log of {namespace}/{pod}",
        )
        self._read_timeout = cluster.log_read_timeout

    async def __aenter__(self) -> _LogStream:
        await self._open()
        return self

    def __aiter__(self) -> _LogStream:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        block = await self._cluster._threads.run(self._read_block)
        if not block:
            self._ended = True
            raise StopAsyncIteration
        return block


# -- helpers -----------------------------------------------------------------------


def _check_resource(resource: str) -> None:
    if resource not in _RESOURCES:
        raise ValueError(f"unsupported resource {resource!r}: expected pods or events")
