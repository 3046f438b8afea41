"""SIGINT and SIGTERM end a command the same orderly way: its work is cancelled, the
build is removed, the summary printed, and the exit status is 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM: what CI runners, ``docker stop`` and Kubernetes send).

The signals are received on the event loop (``anyio.open_signal_receiver``), so the
handler runs between awaits rather than as an exception in the middle of one.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from buildruntime.cli.console import Console

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Interruption:
    """The signal that interrupted the block, if one did."""

    signum: int | None = None

    @property
    def status(self) -> int | None:
        """The exit status that reports it, None when not interrupted."""
        return None if self.signum is None else 128 + self.signum


@asynccontextmanager
async def cancelled_on_signals(console: Console, doing: str) -> AsyncIterator[Interruption]:
    """Cancel the block at the first SIGINT or SIGTERM, saying so on stderr (``doing``:
    what happens next, e.g. "removing the build"). Code in the block cleans up in
    shielded ``finally`` clauses. After the first signal the handlers are the default
    ones again, so a second Ctrl-C or SIGTERM stops a cleanup that takes too long."""
    interruption = Interruption()
    try:
        async with anyio.create_task_group() as tg:

            async def receive(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                with anyio.open_signal_receiver(*SIGNALS) as signals:
                    task_status.started()
                    async for signum in signals:
                        interruption.signum = int(signum)
                        name = signal.Signals(signum).name
                        console.note(f"buildruntime: interrupted by {name}, {doing}")
                        break
                tg.cancel_scope.cancel()

            await tg.start(receive)
            yield interruption
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The block's own error, not a group of one: the command says what went wrong
        # (a bad kubeconfig, say) in one line, as it does for an error raised outside.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
