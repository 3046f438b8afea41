"""Container logs as the kubelet serves them.

Each container instance keeps its output lines, each timestamped when it was read
(stdout and stderr interleaved in arrival order, as the CRI log file has them). A log
request serves one instance as a byte stream: ``<RFC 3339 nano> <line>\\n`` with
timestamps, the raw line otherwise; a final line without a newline is sent without one.
Chunks coalesce whatever is available (up to a chunk size), so they do not follow line
boundaries and a consumer must parse the stream. ``sinceTime`` has one-second
granularity. With ``follow`` the stream stays open while the instance runs and ends
after its last line once it has terminated.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from buildruntime.testing.faults import Faults
from buildruntime.testing.objects import log_time
from buildruntime.testing.tasks import Notifier

MAX_LINE_SIZE = 16 * 1024
"""containerd's default max_container_log_line_size."""


@dataclass(slots=True)
class LogLine:
    ns: int
    text: bytes
    complete: bool
    stream: str


class ContainerLog:
    """The output of one container instance."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.finished = False
        self.notifier = Notifier()

    def append(self, ns: int, text: bytes, *, complete: bool, stream: str) -> None:
        # Like containerd's CRI logger: a line longer than max_container_log_line_size
        # (16 KiB) is stored as partial fragments, each of which the kubelet stamps.
        while len(text) > MAX_LINE_SIZE:
            self.lines.append(LogLine(ns, text[:MAX_LINE_SIZE], False, stream))
            text = text[MAX_LINE_SIZE:]
        self.lines.append(LogLine(ns, text, complete, stream))
        self.notifier.notify()

    def finish(self) -> None:
        self.finished = True
        self.notifier.notify()

    def index_since(self, since_ns: int) -> int:
        return bisect.bisect_left(self.lines, since_ns, key=lambda line: line.ns)


class LogStream:
    """One open log request; iterate it for ``bytes`` chunks."""

    def __init__(
        self,
        log: ContainerLog,
        faults: Faults,
        *,
        follow: bool,
        timestamps: bool,
        since_ns: int | None,
        chunk_bytes: int,
    ) -> None:
        self._log = log
        self._faults = faults
        self._follow = follow
        self._timestamps = timestamps
        self._chunk_bytes = max(1, chunk_bytes)
        self._index = 0 if since_ns is None else log.index_since(since_ns)
        self._pending = b""
        self._half: bytes | None = None
        self._error: Exception | None = None
        self._done = False

    def _format(self, line: LogLine) -> bytes:
        end = b"\n" if line.complete else b""
        if self._timestamps:
            return log_time(line.ns).encode() + b" " + line.text + end
        return line.text + end

    def cut(self, error: Exception) -> None:
        """Break the stream; when a line is waiting to be sent, send its first half
        first (a cut in the middle of a line)."""
        if self._error is not None or self._done:
            return
        data = self._pending
        if not data and self._index < len(self._log.lines):
            data = self._format(self._log.lines[self._index])
        if len(data) > 1:
            self._half = data[: len(data) // 2]
        self._error = error
        self._log.notifier.notify()

    def close(self) -> None:
        """End the stream normally (the server went away cleanly)."""
        self._done = True
        self._pending = b""
        self._log.notifier.notify()

    def _collect(self) -> bytes:
        parts = [self._pending] if self._pending else []
        size = len(self._pending)
        self._pending = b""
        lines = self._log.lines
        while size < self._chunk_bytes and self._index < len(lines):
            data = self._format(lines[self._index])
            self._index += 1
            parts.append(data)
            size += len(data)
        chunk = b"".join(parts)
        if len(chunk) > self._chunk_bytes:
            chunk, self._pending = chunk[: self._chunk_bytes], chunk[self._chunk_bytes :]
        return chunk

    def __aiter__(self) -> LogStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._half is not None:
                half, self._half = self._half, None
                return half
            if self._error is not None:
                self._done = True
                raise self._error
            if self._done:
                raise StopAsyncIteration
            self._faults.check_available()
            chunk = self._collect()
            if chunk:
                return chunk
            if not self._follow or self._log.finished:
                self._done = True
                raise StopAsyncIteration
            await self._log.notifier.wait()


class LogContext:
    """The async context manager :meth:`FakeCluster.stream_logs` returns."""

    def __init__(
        self,
        begin: Callable[[], Awaitable[None]],
        resolve: Callable[[], ContainerLog],
        faults: Faults,
        registry: set[LogStream],
        *,
        follow: bool,
        timestamps: bool,
        since_ns: Callable[[], int | None],
        chunk_bytes: int,
    ) -> None:
        self._begin = begin
        self._resolve = resolve
        self._faults = faults
        self._registry = registry
        self._follow = follow
        self._timestamps = timestamps
        self._since_ns = since_ns
        self._chunk_bytes = chunk_bytes
        self._stream: LogStream | None = None

    async def __aenter__(self) -> AsyncIterator[bytes]:
        await self._begin()
        since = self._since_ns()
        stream = LogStream(
            self._resolve(),
            self._faults,
            follow=self._follow,
            timestamps=self._timestamps,
            since_ns=since,
            chunk_bytes=self._chunk_bytes,
        )
        self._stream = stream
        self._registry.add(stream)
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            self._registry.discard(self._stream)
            self._stream = None
