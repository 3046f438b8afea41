"""The life cycle a watch and a log stream share: open, count, read blocks, close.

Kubernetes and client behaviour handled here:

- Both are a long ``GET`` whose body the API server keeps writing; the request goes
  through :func:`~.request.send` with ``_request_timeout=(connect, read)``, where the
  read timeout applies to the response headers and then to every read of the body, so a
  silent connection raises instead of hanging (the Python client's watch hang,
  kubernetes-client/python #1148/#1402).
- An error status on the request (404, 410, a 400 for a container still waiting to
  start...) raises the port's error from ``__aenter__``, before any iteration.
- Leaving the ``async with`` block, however it ends (normal end, exception,
  cancellation), closes the connection so that no worker thread stays blocked on it
  (:class:`~.connection.StreamConnection`).

The layers, from the socket up (as kopf's ``watching.py`` stacks its generators):
:mod:`.chunked` reads the body in large blocks, :mod:`.connection` owns the response,
this module turns transport failures into the port's errors, and :mod:`.watch` /
:mod:`.log_stream` make the blocks into what their consumers iterate over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ..port import Request
from .connection import StreamConnection
from .errors import TRANSPORT_ERRORS, broken_stream_error
from .request import JSON_MEDIA_TYPE, Query, send

if TYPE_CHECKING:
    from .cluster import KubeCluster


class Stream:
    """Shared life cycle of a watch and a log stream.

    ``__aenter__`` opens the request in a worker thread and raises the port's error
    for an error status; ``__aexit__`` closes the connection whatever ended the block
    (normal end, exception, cancellation) so that no worker thread stays blocked on
    it: see :class:`~.connection.StreamConnection`.
    """

    _verb = ""
    _resource = ""
    # The name of the cluster's attribute that counts the streams of this kind open now.
    _open_counter = ""
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
        self._threads = cluster._threads
        self._path = path
        self._path_params = path_params
        self._query = query
        self._what = what
        self._connection = StreamConnection()
        self._read_timeout = cluster.watch_read_timeout
        self._counted = False
        self._entered = False
        self._ended = False

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"{self._what}: a stream can be entered only once")
        self._entered = True
        cluster = self._cluster
        cluster.requests.append(Request(self._verb, self._resource))
        connection = self._connection
        try:
            await self._threads.run(self._connect)
        except BaseException:
            await connection.aclose()
            raise
        setattr(cluster, self._open_counter, getattr(cluster, self._open_counter) + 1)
        self._counted = True
        return self

    def __aiter__(self) -> Self:
        return self

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
            setattr(cluster, self._open_counter, getattr(cluster, self._open_counter) - 1)

    def _connect(self) -> None:
        """Blocking: send the request and hand its response to the connection."""
        cluster = self._cluster
        response = send(
            cluster._api_client,
            self._what,
            "GET",
            self._path,
            self._path_params,
            query=self._query,
            body=None,
            content_type=None,
            timeout=(cluster.request_timeout, self._read_timeout),
            accept=self._accept,
        )
        self._connection.attach(response)

    def _read_block(self) -> bytes:
        """Blocking: the next block of the body (``b""`` at its end)."""
        with self._transport_errors():
            return self._connection.read()

    def _read_pieces(self) -> list[bytes]:
        """Blocking: the next block of the body as the pieces it arrived in (``[]`` at
        its end)."""
        with self._transport_errors():
            return self._connection.read_pieces()

    def _read_arrived(self) -> list[bytes] | None:
        """Non-blocking, on the event loop: the pieces of the body that have already
        arrived, None if none have."""
        with self._transport_errors():
            return self._connection.read_arrived()

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """Transport failures of a read, as :class:`UnavailableError`."""
        try:
            yield
        except TRANSPORT_ERRORS as exc:
            raise broken_stream_error(self._what, exc, self._read_timeout) from exc
