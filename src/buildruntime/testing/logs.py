"""Container logs as the kubelet serves them.

Each container instance keeps its output lines, each timestamped when it was read
(stdout and stderr interleaved in arrival order, as the CRI log file has them). A log
request serves one instance as a byte stream: ``<RFC 3339 nano> <line>\\n`` with
timestamps, the raw line otherwise; a final line without a newline is sent without one.
Chunks coalesce whatever is available (up to a chunk size), so they do not follow line
boundaries and a consumer must parse the stream. ``sinceTime`` has one-second
granularity and filters line by line. With ``follow`` the stream stays open while the
instance runs and ends after its last line once it has terminated.

Rotation (kubelet 1.33 ``ContainerLogManager`` and cri-client ``ReadLogs``): the node
renames a running container's log file and the runtime starts a new one; a request
reads only the file current when it opens. A follow stream creates its file watch the
first time it reaches the end of its file: after that, each rotation makes it reopen
the then-current file from its start once it reaches the end of the one it has. A
stream that was behind since it opened never learns of a rotation: it reads the old
file to its end, then ends if the container is no longer running or waits, sending
nothing, until it stops (or until a later rotation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import anyio

from buildruntime.testing.faults import Faults
from buildruntime.testing.objects import log_time
from buildruntime.testing.tasks import Notifier

MAX_LINE_SIZE = 16 * 1024
"""containerd's default max_container_log_line_size."""

_SLOW_TICK = 0.02  # seconds between chunks of a stream under ``slow_logs``


@dataclass(slots=True)
class LogLine:
    ns: int
    text: bytes
    complete: bool
    stream: str


class ContainerLog:
    """The output of one container instance: every line it wrote, in the node's files."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.file_starts = [0]
        """Index in :attr:`lines` of each file's first line; the last is the current file.
        Rotated files stay on the node, but no request reads them."""
        self.finished = False
        self.notifier = Notifier()

    def append(self, ns: int, text: bytes, *, complete: bool, stream: str) -> None:
        # Like containerd's CRI logger: a line longer than max_container_log_line_size
        # (16 KiB) is stored as partial records (the kubelet joins them when serving).
        while len(text) > MAX_LINE_SIZE:
            self.lines.append(LogLine(ns, text[:MAX_LINE_SIZE], False, stream))
            text = text[MAX_LINE_SIZE:]
        self.lines.append(LogLine(ns, text, complete, stream))
        self.notifier.notify()

    def finish(self) -> None:
        self.finished = True
        self.notifier.notify()

    @property
    def rotations(self) -> int:
        return len(self.file_starts) - 1

    def rotate(self) -> None:
        """Start a new file, as the kubelet does once the current one passes
        ``containerLogMaxSize`` (only for a running container)."""
        if self.finished:
            raise ValueError("the kubelet rotates the logs of running containers only")
        self.file_starts.append(len(self.lines))
        self.notifier.notify()

    def file_end(self, file: int) -> int:
        """Index after the last line of file number ``file`` (so far, for the current)."""
        return self.file_starts[file + 1] if file < self.rotations else len(self.lines)


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
        self._since_ns = since_ns
        self._file = log.rotations  # the file it opened: the current one
        self._index = log.file_starts[self._file]
        self._watched_rotations: int | None = None  # rotations before its watch began
        self._pending = b""
        self._new_line = True  # the record read before ended a line
        self._half: bytes | None = None
        self._error: Exception | None = None
        self._done = False

    def _format(self, line: LogLine) -> bytes:
        """One record as the kubelet writes it out: the timestamp goes only before the
        first record of a line (kubelet's ReadLogs prefixes a record only when the one
        read before it, of either stream, ended with a newline), so a line containerd
        split into partial records reads as one line with one stamp."""
        end = b"\n" if line.complete else b""
        if self._timestamps and self._new_line:
            return log_time(line.ns).encode() + b" " + line.text + end
        return line.text + end

    def cut(self, error: Exception) -> None:
        """Break the stream; when a line is waiting to be sent, send its first half
        first (a cut in the middle of a line)."""
        if self._error is not None or self._done:
            return
        data = self._pending
        if not data and self._index < self._log.file_end(self._file):
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

    def _collect(self, limit: int) -> bytes:
        parts = [self._pending] if self._pending else []
        size = len(self._pending)
        self._pending = b""
        lines = self._log.lines
        end = self._log.file_end(self._file)
        since = self._since_ns
        while size < limit and self._index < end:
            line = lines[self._index]
            self._index += 1
            if since is None or line.ns >= since:
                data = self._format(line)
                parts.append(data)
                size += len(data)
            self._new_line = line.complete
        chunk = b"".join(parts)
        if len(chunk) > limit:
            chunk, self._pending = chunk[:limit], chunk[limit:]
        return chunk

    async def _limit(self) -> int | None:
        """The most bytes the next chunk may carry under ``slow_logs`` (waiting its turn
        first); None while a stalled stream must send nothing."""
        rate = self._faults.log_bytes_per_second
        if rate is None:
            return self._chunk_bytes
        await anyio.sleep(_SLOW_TICK)
        if rate <= 0:
            return None
        return max(1, min(self._chunk_bytes, int(rate * _SLOW_TICK)))

    def _at_file_end(self) -> bool:
        """At the end of its file, following: False when the stream should read on."""
        log = self._log
        if self._watched_rotations is None:
            # ReadLogs starts watching the log directory at its first end of file, then
            # reads again (a write may have come in between).
            self._watched_rotations = log.rotations
            return False
        if log.rotations > self._watched_rotations:
            # A new file was created since the watch began: reopen the log path, which
            # is the current file (already a later one if the stream is far behind).
            self._watched_rotations += 1
            self._file = log.rotations
            self._index = log.file_starts[self._file]
            return False
        return True

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
            limit = await self._limit()
            if limit is None or self._error is not None or self._done:
                continue
            chunk = self._collect(limit)
            if chunk:
                return chunk
            if not self._follow or self._log.finished:
                # Without follow, or once the container stopped: the end of the file the
                # request has open is the end of the stream (rotated or not).
                self._done = True
                raise StopAsyncIteration
            if self._at_file_end():
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
