"""Sending one write (create, patch, delete) to the API server: retried while the
server is unreachable, for as long as the runtime's ``api_timeout``, then given up with
:class:`ClusterUnavailableError`. Other answers (a refusal, a conflict, a 404) are the
caller's to interpret, at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from buildruntime.cluster.port import UnavailableError
from buildruntime.errors import ClusterUnavailableError

T = TypeVar("T")


async def send(
    call: Callable[[], Awaitable[T]],
    *,
    api_timeout: float,
    build_id: str | None,
    step: str | None,
    what: str,
) -> T:
    """``call()``, retried with jittered exponential backoff while it raises
    :class:`UnavailableError`; ``what`` names the action in the error ("create the pod")."""
    retrying = AsyncRetrying(
        sleep=anyio.sleep,
        wait=wait_random_exponential(multiplier=0.5, max=5.0),
        stop=stop_after_delay(api_timeout),
        retry=retry_if_exception_type(UnavailableError),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await call()
    except UnavailableError as error:
        raise ClusterUnavailableError(
            f"cannot {what}: the API server is unreachable",
            build_id=build_id,
            step=step,
            reason="Unavailable",
            message=str(error),
        ) from error
    raise AssertionError("unreachable")
