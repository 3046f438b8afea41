"""SIGINT and SIGTERM end a command the same orderly way: its work is cancelled, the
build is removed, the summary printed, and the exit status is 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM: what CI runners, ``docker stop`` and Kubernetes send).

The signals are received on the event loop (``anyio.open_signal_receiver``), so the
handler runs between awaits rather than as an exception in the middle of one.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
from anyio.abc import TaskStatus

from buildruntime.cli.console import Console

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interruption:
    """The signal that interrupted the command, if one did, and what it cancels."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._outer: anyio.CancelScope | None = None
        self._work: anyio.CancelScope | None = None
        self._work_done = False

    @property
    def status(self) -> int | None:
        """The exit status that reports it, None when not interrupted."""
        return None if self.signum is None else 128 + self.signum

    @contextmanager
    def cancels(self) -> Iterator[None]:
        """The work a signal cancels. Cleanup around it (the runtime's, the cluster's)
        is left to run: a signal before the block cancels the command's setup, one
        after it is only recorded."""
        with anyio.CancelScope() as scope:
            self._work = scope
            if self.signum is not None:
                scope.cancel()
            try:
                yield
            finally:
                self._work = None
                self._work_done = True

    def _interrupt(self, signum: int) -> None:
        self.signum = signum
        if self._work is not None:
            self._work.cancel()
        elif not self._work_done and self._outer is not None:
            self._outer.cancel()


@asynccontextmanager
async def receiving_signals(console: Console, doing: str) -> AsyncIterator[Interruption]:
    """Receive SIGINT and SIGTERM while the block runs: the first cancels what runs in
    :meth:`Interruption.cancels`, saying so on stderr (``doing``: what happens next,
    e.g. "removing the build"). After it the handlers are the default ones again, so a
    second Ctrl-C or SIGTERM stops a cleanup that takes too long."""
    interruption = Interruption()
    try:
        async with anyio.create_task_group() as tg:
            interruption._outer = tg.cancel_scope

            async def receive(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                with anyio.open_signal_receiver(*SIGNALS) as signals:
                    task_status.started()
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        console.note(f"buildruntime: interrupted by {name}, {doing}")
                        interruption._interrupt(int(signum))
                        break

            await tg.start(receive)
            yield interruption
            tg.cancel_scope.cancel()  # the receiver, when no signal came
    except BaseExceptionGroup as group:
        # The block's own error, not a group of one: the command says what went wrong
        # (a bad kubeconfig, say) in one line, as it does for an error raised outside.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
