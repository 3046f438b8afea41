"""The thread limiter: the bounded pool of worker threads the blocking client runs on.

The official client is blocking (urllib3 under ``ApiClient.call_api``), so every request
and every read of a streamed body runs in a worker thread. They run under one
``anyio.CapacityLimiter`` per cluster, never anyio's default limiter of 40, which other
code in the process shares: a watch or a follow log stream holds a token for as long as
its read waits for data (a quiet container's log, a watch between bookmarks), so 40
streams would starve every other ``to_thread`` call of the process. The cluster's
``stream_threads`` must therefore exceed the number of streams open at once, plus room
for unary calls; a warning is logged the first time every token is taken.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

# The cluster package's one logger, whichever module logs.
logger = logging.getLogger("buildruntime.cluster")

T = TypeVar("T")


class ThreadLimiter:
    """Runs blocking calls in worker threads, at most ``tokens`` at a time."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._limiter = anyio.CapacityLimiter(tokens)
        self._warned_exhausted = False

    async def run(self, func: Callable[[], T]) -> T:
        """Run a blocking call in a worker thread under this limiter.

        ``abandon_on_cancel``: a cancelled caller returns at once. A stream read left
        behind is woken by the stream's close (socket shutdown); a unary call left
        behind ends within ``request_timeout`` and its result is dropped (a create or
        delete may still take effect on the server, as with any cancelled request).
        """
        limiter = self._limiter
        if not self._warned_exhausted and limiter.available_tokens == 0:
            self._warned_exhausted = True
            logger.warning(
                "all %d stream threads of the cluster are busy: calls wait for a free "
                "one; raise stream_threads above the number of open streams",
                self.tokens,
            )
        return await anyio.to_thread.run_sync(func, limiter=limiter, abandon_on_cancel=True)
