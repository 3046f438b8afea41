"""A broadcast stream: one writer appends, any number of readers follow at their own pace.

Readers never block the writer and never miss a wake-up: each item has an absolute
sequence number, a reader remembers the next number it wants, and the writer wakes every
waiting reader by setting one shared event. Retention is bounded: a reader that falls
more than ``retain`` items behind skips ahead (and can tell from ``skipped``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Topic(Generic[T]):
    """An append-only, closable sequence of items with async followers."""

    def __init__(self, retain: int = 10_000) -> None:
        self._items: deque[T] = deque(maxlen=retain)
        self._first = 0  # sequence number of self._items[0]
        # Created only when a reader waits: most items are published with nobody
        # waiting, and an event per publish would cost more than the append.
        self._changed: anyio.Event | None = None
        self._closed = False
        self.skipped = 0

    @property
    def next_seq(self) -> int:
        """The sequence number the next published item will get."""
        return self._first + len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def latest(self) -> T | None:
        """The newest item, or None before the first."""
        return self._items[-1] if self._items else None

    def publish(self, item: T) -> None:
        """Append ``item`` and wake every follower. Ignored once closed."""
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self._first += 1
        self._items.append(item)
        self._wake()

    def close(self) -> None:
        """End the topic: followers finish after the items already published."""
        if not self._closed:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def items_from(self, seq: int) -> tuple[list[T], int]:
        """The retained items from ``seq`` on, and the sequence number after them."""
        if seq < self._first:
            self.skipped += self._first - seq
            seq = self._first
        start = seq - self._first
        items = [self._items[i] for i in range(start, len(self._items))]
        return items, seq + len(items)

    async def wait_beyond(self, seq: int) -> None:
        """Return once an item with number >= ``seq`` exists or the topic is closed."""
        while seq >= self.next_seq and not self._closed:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    async def follow(
        self, *, from_latest: bool = False, start: int | None = None
    ) -> AsyncIterator[T]:
        """Every item from the first retained one (or the latest, or ``start``) until close."""
        if start is not None:
            seq = start
        elif from_latest:
            seq = max(self.next_seq - 1, self._first)
        else:
            seq = self._first
        while True:
            items, seq = self.items_from(seq)
            for item in items:
                yield item
            if self._closed and seq >= self.next_seq:
                return
            await self.wait_beyond(seq)
