"""A FakeCluster reachable from another process, over a Unix socket: worker processes
that tests and benchmarks kill with SIGKILL on purpose use it as they would use a real
API server.

:class:`FakeClusterServer` serves the port's calls of a FakeCluster in the test's
process, one connection per call (a watch or a log stream keeps its connection for as
long as it is open, like an HTTP stream); :class:`RemoteCluster`, in the worker process,
is the :class:`~buildruntime.cluster.port.Cluster` port on top of it. A connection that
closes (the worker exits or is killed) ends its stream on the fake. ``refuse(seconds)``
cuts this server's connections and refuses new ones for a while: an outage of that one
worker, while the fake cluster and its other clients go on (the TCP proxy's ``refuse``
on the real cluster).

Framing: the request is one JSON line ``{"call": ..., "args": [...], "kwargs": {...}}``;
each answer line starts with a letter: ``R`` a result (JSON), ``O`` a stream opened,
``E`` a watch event as the API server's JSON line, ``D`` a log chunk (base64), ``Z``
the stream's normal end, ``X`` an error (JSON: status, reason, message; status 0 is
"unavailable").
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from buildruntime.cluster.port import (
    JSON,
    ApiError,
    Request,
    UnavailableError,
    error_for_status,
)
from buildruntime.cluster.watch_events import WatchDecoder, decode_event, decode_typed_event
from buildruntime.testing.cluster import FakeCluster

_UNARY = frozenset(
    {
        "list",
        "create_pod",
        "patch_pod",
        "delete_pod",
        "create_secret",
        "patch_secret",
        "delete_secret",
        "get_secret",
        "create_lease",
        "get_lease",
        "patch_lease",
        "delete_lease",
        "list_leases",
    }
)
_MAX_LINE = 64 * 1024 * 1024


def _error_line(error: BaseException) -> bytes:
    if isinstance(error, ApiError):
        body = {"status": error.status, "reason": error.reason, "message": error.message}
    else:
        body = {"status": 0, "reason": "Unavailable", "message": str(error)}
    return b"X" + json.dumps(body).encode() + b"\n"


def _raise(body: JSON) -> None:
    if body["status"] == 0:
        raise UnavailableError(body["message"])
    raise error_for_status(body["status"], body["reason"], body["message"])


@contextlib.contextmanager
def _tolerating_socket_wakeup_race() -> Iterator[None]:
    """On asyncio, anyio's UNIX sockets wait for readiness with ``loop.add_reader(sock,
    future.set_result, None)``; a wait that ends otherwise (cancelled, or the socket
    closed) in the loop iteration whose readiness callback is already queued makes that
    callback fail with ``InvalidStateError``, which the loop reports to its exception
    handler (and the anyio test runner raises). Nothing is lost: the wait it belonged to
    is over. Only that report is dropped, while the server runs."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        yield
        return
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.InvalidStateError) and (
            "Future.set_result" in repr(context.get("handle"))
        ):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


class FakeClusterServer:
    """Serves ``cluster``'s port on the Unix socket ``path`` while ``async with``."""

    def __init__(self, cluster: FakeCluster, path: Path) -> None:
        self.cluster = cluster
        self.path = path
        self._refuse_until = 0.0
        self._connections: set[anyio.CancelScope] = set()
        self.refused = 0
        """Connections refused so far (outages)."""

    def refuse(self, seconds: float) -> None:
        """Cut every open connection now and refuse new ones for ``seconds``."""
        self._refuse_until = time.monotonic() + seconds
        for scope in list(self._connections):
            scope.cancel()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeClusterServer]:
        listener = await anyio.create_unix_listener(self.path)
        with _tolerating_socket_wakeup_race():
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._handle)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                return
            scope = anyio.CancelScope()
            self._connections.add(scope)
            try:
                with scope:
                    await self._serve(stream)
            except* (
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                anyio.EndOfStream,
                anyio.IncompleteRead,
                OSError,
            ):
                pass  # the client went away (it closed its stream, or it was killed)
            finally:
                self._connections.discard(scope)

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        request = json.loads(await reader.receive_until(b"\n", _MAX_LINE))
        call, args, kwargs = request["call"], request["args"], request["kwargs"]
        if call in _UNARY:
            try:
                result = await getattr(self.cluster, call)(*args, **kwargs)
            except (ApiError, UnavailableError) as error:
                await stream.send(_error_line(error))
                return
            await stream.send(b"R" + json.dumps(result).encode() + b"\n")
            return
        opener: Callable[..., AbstractAsyncContextManager[AsyncIterator[Any]]] = getattr(
            self.cluster, call
        )
        async with anyio.create_task_group() as tg:
            # The client hanging up (its stream closed, or its process killed) ends the
            # stream here at once, not at the next thing there is to send.
            async def until_hangup() -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    await reader.receive()
                tg.cancel_scope.cancel()

            tg.start_soon(until_hangup)
            try:
                async with opener(*args, **kwargs) as items:
                    await stream.send(b"O\n")
                    async for item in items:
                        if call == "watch":
                            await stream.send(b"E" + json.dumps(item).encode() + b"\n")
                        else:
                            await stream.send(b"D" + base64.b64encode(item) + b"\n")
                await stream.send(b"Z\n")
            except (ApiError, UnavailableError) as error:
                await stream.send(_error_line(error))
            tg.cancel_scope.cancel()


class RemoteCluster:
    """The cluster port on a :class:`FakeClusterServer` of another process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.requests: builtins.list[Request] = []

    async def aclose(self) -> None:
        return None

    async def _connect(
        self, call: str, args: builtins.list[Any], kwargs: JSON
    ) -> anyio.abc.SocketStream:
        try:
            stream = await anyio.connect_unix(self.path)
        except OSError as error:
            raise UnavailableError(f"connection refused: {error}") from error
        request = {"call": call, "args": args, "kwargs": kwargs}
        try:
            await stream.send(json.dumps(request).encode() + b"\n")
        except (anyio.BrokenResourceError, OSError) as error:
            await stream.aclose()
            raise UnavailableError(f"connection reset: {error!r}") from error
        return stream

    async def _unary(self, call: str, *args: Any, **kwargs: Any) -> Any:
        stream = await self._connect(call, list(args), kwargs)
        async with stream:
            line = await _line(BufferedByteReceiveStream(stream))
        if line[:1] == b"X":
            _raise(json.loads(line[1:]))
        return json.loads(line[1:])

    async def list(self, resource: str, namespace: str, **kwargs: Any) -> JSON:
        self.requests.append(Request("list", resource))
        result: JSON = await self._unary("list", resource, namespace, **kwargs)
        return result

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        self.requests.append(Request("create", "pods"))
        result: JSON = await self._unary("create_pod", namespace, manifest)
        return result

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.requests.append(Request("patch", "pods"))
        result: JSON = await self._unary("patch_pod", namespace, name, patch)
        return result

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        self.requests.append(Request("delete", "pods"))
        await self._unary("delete_pod", namespace, name, grace_period_seconds=grace_period_seconds)

    async def create_secret(self, namespace: str, manifest: JSON) -> JSON:
        self.requests.append(Request("create", "secrets"))
        result: JSON = await self._unary("create_secret", namespace, manifest)
        return result

    async def patch_secret(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.requests.append(Request("patch", "secrets"))
        result: JSON = await self._unary("patch_secret", namespace, name, patch)
        return result

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.requests.append(Request("delete", "secrets"))
        await self._unary("delete_secret", namespace, name)

    async def get_secret(self, namespace: str, name: str) -> JSON:
        self.requests.append(Request("get", "secrets"))
        result: JSON = await self._unary("get_secret", namespace, name)
        return result

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        self.requests.append(Request("create", "leases"))
        result: JSON = await self._unary("create_lease", namespace, manifest)
        return result

    async def get_lease(self, namespace: str, name: str) -> JSON:
        self.requests.append(Request("get", "leases"))
        result: JSON = await self._unary("get_lease", namespace, name)
        return result

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.requests.append(Request("patch", "leases"))
        result: JSON = await self._unary("patch_lease", namespace, name, patch)
        return result

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        self.requests.append(Request("delete", "leases"))
        await self._unary("delete_lease", namespace, name, resource_version=resource_version)

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        self.requests.append(Request("list", "leases"))
        result: JSON = await self._unary("list_leases", namespace, label_selector=label_selector)
        return result

    def watch(
        self,
        resource: str,
        namespace: str,
        *,
        decoder: WatchDecoder[Any] | None = None,
        **kwargs: Any,
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        self.requests.append(Request("watch", resource))

        def item(line: bytes) -> Any:
            return decode_event(line) if decoder is None else decode_typed_event(line, decoder)

        return self._stream("watch", [resource, namespace], kwargs, b"E", item)

    def stream_logs(
        self, namespace: str, pod: str, container: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        self.requests.append(Request("log", "pods"))
        return self._stream(
            "stream_logs", [namespace, pod, container], kwargs, b"D", base64.b64decode
        )

    @asynccontextmanager
    async def _stream(
        self,
        call: str,
        args: builtins.list[Any],
        kwargs: JSON,
        tag: bytes,
        item: Callable[[bytes], Any],
    ) -> AsyncIterator[AsyncIterator[Any]]:
        stream = await self._connect(call, args, kwargs)
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            first = await _line(reader)
            if first[:1] == b"X":
                _raise(json.loads(first[1:]))

            async def items() -> AsyncIterator[Any]:
                while True:
                    line = await _line(reader)
                    kind, body = line[:1], line[1:]
                    if kind == tag:
                        value = item(body)
                        if value is not None:
                            yield value
                    elif kind == b"X":
                        _raise(json.loads(body))
                    else:
                        return

            yield items()


async def _line(reader: BufferedByteReceiveStream) -> bytes:
    """One answer line; a connection that ends first is an outage."""
    try:
        return await reader.receive_until(b"\n", _MAX_LINE)
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError) as error:
        raise UnavailableError(f"connection reset: {error!r}") from error
