"""Background work without a caller's task group, and immediate wake-ups.

A :class:`FakeCluster` needs work that outlives any single call (the scheduler, the
kubelet's pod workers, the processes of running steps), so it spawns *system tasks* on
the event loop of its first use: ``loop.create_task`` under asyncio,
``trio.lowlevel.spawn_system_task`` under trio. Each runs inside its own cancel scope so
:meth:`SystemTasks.aclose` can end them all. All state lives on that one loop: there are
no threads and no locks, so a check followed by a wait with no ``await`` in between can
never miss a wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio

log = logging.getLogger("buildruntime.testing")


class Notifier:
    """Wakes every waiter at once when something changed.

    Waiters first check their condition, then ``await wait()`` with no ``await`` in
    between; :meth:`notify` sets the current event and forgets it, so the next waiter
    gets a fresh one. Wake-up takes one pass of the event loop.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self, limit: float = math.inf) -> None:
        """Wait for the next :meth:`notify`, or at most ``limit`` seconds."""
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        if limit == math.inf:
            await event.wait()
            return
        with anyio.move_on_after(max(limit, 0.0)):
            await event.wait()


class SystemTasks:
    """The background tasks of one fake cluster, bound to the event loop of first use."""

    def __init__(self) -> None:
        self._library: str | None = None
        self._loop: object | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._asyncio_tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        self._idle = Notifier()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def check_loop(self) -> None:
        """Bind to the current event loop on first use; refuse any other loop later."""
        library = sniffio.current_async_library()
        if library == "trio":
            import trio

            loop: object = trio.lowlevel.current_root_task()
        else:
            loop = asyncio.get_running_loop()
        if self._loop is None:
            self._library, self._loop = library, loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this FakeCluster is bound to the event loop of its first use; "
                "create one FakeCluster per event loop"
            )

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Start ``fn(*args)`` in the background; exceptions are logged, never raised."""
        if self._closed:
            return
        self.check_loop()
        self._running += 1
        if self._library == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._run, fn, args, name=name)
        else:
            task = asyncio.get_running_loop().create_task(self._run(fn, args), name=name)
            self._asyncio_tasks.add(task)
            task.add_done_callback(self._asyncio_tasks.discard)

    async def _run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                if self._closed:
                    scope.cancel()
                await fn(*args)
        except Exception:
            log.exception("fake cluster background task failed")
        finally:
            self._scopes.discard(scope)
            self._running -= 1
            self._idle.notify()

    async def aclose(self, limit: float = 10.0) -> None:
        """Cancel every task and wait (bounded) until all have finished their cleanup."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        with anyio.move_on_after(limit):
            while self._running > 0:
                await self._idle.wait(0.05)
