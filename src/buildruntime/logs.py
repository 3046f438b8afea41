"""Log capture: every line of a step, once, in order, however late it is read.

A step's capture starts in the background as soon as its step-image container is
running or terminated, whether or not anyone tails it, so a container that lived for
no time at all still has its output read before the pod goes away. Lines go into a
:class:`LogBuffer` (in memory up to a limit, then spilled to a temporary file) from
which any number of tails read from line 1.

The stream is asked for with ``follow`` and ``timestamps``. When it is cut while the
container still runs, the capture reopens it with ``sinceTime`` (which has one-second
granularity on a real API server), drops the lines it already delivered by comparing
timestamps (and counting lines that share the last delivered timestamp), and goes on.
A final line without a newline is delivered once the container is known to have ended.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import IO

import anyio

from buildruntime.cluster.port import ApiError, Cluster, NotFoundError, UnavailableError

log = logging.getLogger("buildruntime.logs")

KUBELET_FRAGMENT = 16 * 1024
"""The container runtime splits longer lines into fragments of this size (containerd's
max_container_log_line_size); the kubelet then stamps each fragment, so with timestamps
on, a long line reads ``<ts> <16 KiB><ts> <rest>``."""
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z ")

DEFAULT_MEMORY_LIMIT = 8 * 1024 * 1024
"""Bytes of log lines a step keeps in memory before spilling the rest to a file."""


class LogBuffer:
    """All lines of one step: appended by the capture, read by any number of tails."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self._memory_limit = memory_limit
        self._head: list[bytes] = []
        self._head_bytes = 0
        self._spill: IO[bytes] | None = None
        self._offsets = array("Q")  # start offset of each spilled line, plus the end
        self._changed: anyio.Event | None = None  # made when a reader waits
        self.complete = False
        """No line will be added any more: the container ended and its log was read."""
        self.lost_reason: str | None = None
        """Why the log could not be read to its end (the pod vanished), if it could not."""

    def __len__(self) -> int:
        return len(self._head) + max(len(self._offsets) - 1, 0)

    def append(self, lines: list[bytes]) -> None:
        """Add lines (without their newline) and wake the tails."""
        if not lines:
            return
        for line in lines:
            if self._spill is None and self._head_bytes + len(line) <= self._memory_limit:
                self._head.append(line)
                self._head_bytes += len(line)
                continue
            if self._spill is None:
                # Lives as long as the buffer; closed by close() or when collected.
                self._spill = tempfile.TemporaryFile(prefix="buildruntime-log-")  # noqa: SIM115
                self._offsets.append(0)
            self._spill.seek(0, os.SEEK_END)
            self._spill.write(line)
            self._offsets.append(self._offsets[-1] + len(line))
        self._wake()

    def finish(self, lost_reason: str | None = None) -> None:
        """Mark the log complete; tails end after the last line."""
        if not self.complete:
            self.complete = True
            self.lost_reason = lost_reason
            self._wake()

    async def wait_complete(self) -> None:
        """Return once the log has been read to its end."""
        while not self.complete:
            await self._wait_change()

    def close(self) -> None:
        """Release the spill file (after every tail is done)."""
        self.finish()
        if self._spill is not None:
            self._spill.close()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def lines(self, start: int, stop: int) -> list[bytes]:
        """Lines ``start`` up to (not including) ``stop``."""
        head = len(self._head)
        out = self._head[start : min(stop, head)]
        if stop > head and self._spill is not None:
            first, last = max(start, head) - head, stop - head
            self._spill.seek(self._offsets[first])
            blob = self._spill.read(self._offsets[last] - self._offsets[first])
            base = self._offsets[first]
            for i in range(first, last):
                out.append(blob[self._offsets[i] - base : self._offsets[i + 1] - base])
        return out

    async def follow(self) -> AsyncIterator[bytes]:
        """Every line from the first, then new ones as they come, until complete."""
        position = 0
        while True:
            end = len(self)
            if position < end:
                for line in self.lines(position, min(end, position + 4096)):
                    position += 1
                    yield line
                continue
            if self.complete:
                return
            await self._wait_change()


@functools.lru_cache(maxsize=4096)
def _epoch_second(whole_second: bytes) -> int:
    return int(datetime.fromisoformat(whole_second.decode()).replace(tzinfo=UTC).timestamp())


def timestamp_second(stamp: bytes) -> int:
    """The whole second, since the epoch, of a kubelet log timestamp (RFC 3339, UTC, up
    to ns): all that ``sinceTime`` can express. The second repeats from line to line,
    so its parse is cached. Raises ValueError for anything that is not a timestamp."""
    fraction = stamp[20:].rstrip(b"Z") if stamp[19:20] == b"." else b""
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a timestamp: {stamp[:40]!r}")
    return _epoch_second(stamp[:19])


def since_time_of(second: int) -> str:
    """``sinceTime`` for a resume from the whole second the last delivered line fell in."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LogCapture:
    """Reads one step's log into its buffer, resuming after cuts, until the step ends.

    ``step_ended()`` waits until the cache shows the step's container terminated or the
    pod gone, returning False if that does not happen within the time given.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        pod: str,
        container: str,
        buffer: LogBuffer,
        *,
        step_ended: Callable[[float], Awaitable[bool]],
        pod_gone: Callable[[], bool],
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        end_grace: float = 5.0,
    ) -> None:
        self._cluster = cluster
        self._namespace = namespace
        self._pod = pod
        self._container = container
        self.buffer = buffer
        self._step_ended = step_ended
        self._pod_gone = pod_gone
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._end_grace = end_grace
        self._second = -1  # the latest whole second any delivered line was stamped in
        self._delivered_in_second = 0  # lines delivered stamped in that second

    async def run(self) -> None:
        """Capture until the container's log is read to its end (or the pod vanished)."""
        delay = self._retry_delay
        try:
            while True:
                try:
                    if await self._read_once():
                        self.buffer.finish()
                        return
                    delay = self._retry_delay
                except NotFoundError:
                    self.buffer.finish(lost_reason="the pod was deleted")
                    return
                except UnavailableError as error:
                    log.info("log stream of %s/%s cut: %s", self._pod, self._container, error)
                except ApiError as error:
                    if error.status != 400:
                        log.warning(
                            "log stream of %s/%s failed: %s", self._pod, self._container, error
                        )
                if self._pod_gone() and await self._step_ended(0):
                    # Nothing left to read from: the pod is gone and with it the log.
                    self.buffer.finish(lost_reason="the pod was deleted")
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
        finally:
            self.buffer.finish()

    async def _read_once(self) -> bool:
        """One log request; True when the log has been read to its end."""
        resuming = self._second >= 0
        since = since_time_of(self._second) if resuming else None
        # The server returns every line stamped in or after that second, in file order;
        # the first ones are those delivered before the cut.
        skip = self._delivered_in_second if resuming else 0
        pending = b""
        async with self._cluster.stream_logs(
            self._namespace,
            self._pod,
            self._container,
            follow=True,
            timestamps=True,
            since_time=since,
        ) as chunks:
            async for chunk in chunks:
                data = pending + chunk if pending else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    pending = data
                    continue
                pending = data[cut + 1 :]
                skip = self._take(data[:cut].split(b"\n"), skip)
        # The server ended the stream: the container has ended, or the stream stalled
        # (log rotation, a proxy). Only the cache can tell which.
        if not await self._step_ended(self._end_grace):
            return False
        if pending:
            # A final line without a newline: complete now that the container ended.
            self._take([pending], skip)
        return True

    def _take(self, raw_lines: list[bytes], skip: int) -> int:
        """Deliver the lines not delivered before a cut; returns how many are still to skip.

        Timestamps are not strictly ordered (stdout and stderr are stamped separately),
        so lines are matched by position within the resumed second, not by timestamp.
        """
        fresh: list[bytes] = []
        second, in_second = self._second, self._delivered_in_second
        for raw in raw_lines:
            space = raw.find(b" ")
            stamp, content = (raw, b"") if space < 0 else (raw[:space], raw[space + 1 :])
            try:
                line_second = timestamp_second(stamp)
            except ValueError:
                log.warning("log line of %s/%s without a timestamp", self._pod, self._container)
                fresh.append(raw)
                continue
            if skip > 0 and line_second >= self._second:
                skip -= 1
                continue
            if line_second > second:
                second, in_second = line_second, 1
            elif line_second == second:
                in_second += 1
            if len(content) > KUBELET_FRAGMENT:
                content = _join_fragments(content)
            fresh.append(content)
        self._second, self._delivered_in_second = second, in_second
        self.buffer.append(fresh)
        return skip


def _join_fragments(content: bytes) -> bytes:
    """Remove the timestamps the kubelet put before each 16 KiB fragment of a long line."""
    position = KUBELET_FRAGMENT
    while len(content) > position:
        stamp = _STAMP.match(content, position)
        if stamp is None:
            break
        content = content[:position] + content[stamp.end() :]
        position += KUBELET_FRAGMENT
    return content
