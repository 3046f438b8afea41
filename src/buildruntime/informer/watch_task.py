"""Where a watch shared by a runtime's builds runs: one task in the runtime's task group,
started when a build first needs it and told to stop when the last one leaves."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup

Runner = Callable[[], Coroutine[Any, Any, object]]
"""What runs in the task: the watch, until it is cancelled."""


class WatchTask:
    """One task at a time in the task group given to :meth:`open`, until :meth:`close`.

    A task is told to stop, not cancelled from here: :meth:`stop` runs as a build's tasks
    are being cancelled, and a cancellation raised then would carry that build's (and
    its frames') along in its context until the task next ran.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._task_group: TaskGroup | None = None
        self._stopping: anyio.Event | None = None
        """Set to stop the running task."""

    def open(self, task_group: TaskGroup) -> None:
        """Where the task will run once it is started."""
        self._task_group = task_group

    def close(self) -> None:
        """Stop the task and forget the task group: a later :meth:`open` starts afresh."""
        self.stop()
        self._task_group = None

    def start(self, run: Runner) -> None:
        """Run ``run`` until :meth:`stop`; the task started before is told to stop now."""
        assert self._task_group is not None, f"the {self._what} is not open"
        self.stop()
        # Made here, on the event loop, not in the task: a stop before the task has
        # started must still stop it.
        self._stopping = anyio.Event()
        self._task_group.start_soon(_run_until, run, self._stopping)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        self._stopping = None


async def _run_until(run: Runner, stopping: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await stopping.wait()
        tg.cancel_scope.cancel()
