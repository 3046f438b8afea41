"""A container's log (``GET .../pods/{pod}/log``) as an async iterator of raw chunks.

Kubernetes behaviour handled here:

- The log endpoint answers text, but negotiates only json/yaml/protobuf by name: an
  ``Accept: text/plain`` gets a 406 from current API servers, so we accept anything.
- With ``follow`` the body stays open while the container runs and ends when it
  terminates; without, it is the log so far (often with a ``Content-Length``).
- The kubelet may split long lines, and the last line may have no newline: chunks are
  passed on as they arrive, and the logs layer deals with lines.
- A quiet container is silent for as long as it likes, so a follow stream's read timeout
  (``log_read_timeout``, 300 s) is its own, much longer than a watch's: silence there
  means "reopen with ``sinceTime``", which also catches streams that stall silently
  (kubernetes #59477, #28369).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .request import Query
from .stream import Stream

if TYPE_CHECKING:
    from .cluster import KubeCluster


class LogStream(Stream):
    """A container's log: an async iterator of raw byte chunks, as they arrive.

    No decoding and no line splitting (the kubelet may split long lines, and the last
    line may have no newline: the logs layer deals with lines). The body ends when the
    container terminates (with ``follow``) or after the current log (without).
    Errors: 400 while the container is still waiting to start ("container ... is
    waiting to start", retryable) is an :class:`ApiError` with status 400; 404 once
    the pod is gone; a cut or silent connection is :class:`UnavailableError`.
    """

    _verb = "log"
    _resource = "pods"
    _open_counter = "open_log_streams"
    # "text/plain" gets a 406 from current API servers (see the module docstring).
    _accept = "*/*"

    def __init__(
        self,
        cluster: KubeCluster,
        namespace: str,
        pod: str,
        query: Query,
    ) -> None:
        super().__init__(
            cluster,
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            {"namespace": namespace, "name": pod},
            query,
            f"log of {namespace}/{pod}",
        )
        self._read_timeout = cluster.log_read_timeout

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        block = await self._threads.run(self._read_block)
        if not block:
            self._ended = True
            raise StopAsyncIteration
        return block
