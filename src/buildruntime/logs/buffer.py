"""A step's log lines: in memory up to a limit, then spilled to a temporary file, read
by any number of tails from line 1."""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import AsyncIterator, Callable
from typing import IO

import anyio

DEFAULT_MEMORY_LIMIT = 8 * 1024 * 1024
"""Bytes of log lines a step keeps in memory before spilling the rest to a file."""


class LogBuffer:
    """All lines of one step: appended by the capture, read by any number of tails."""

    def __init__(
        self,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        *,
        mask: Callable[[list[bytes]], list[bytes]] | None = None,
    ) -> None:
        self._memory_limit = memory_limit
        self._mask = mask
        """Rewrites each batch before it is kept (the build's secrets masked), so no
        secret value is ever in memory here or in the spill file."""
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
        if self._mask is not None:
            lines = self._mask(lines)
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
