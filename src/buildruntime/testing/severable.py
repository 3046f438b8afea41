"""A worker's connections to the cluster, severable at once: the stand-in for a worker
process killed with SIGKILL where the cluster lives in the same process (FakeCluster).

:class:`SeverableCluster` passes every call through until :meth:`~SeverableCluster.sever`;
from then on every call fails as a request to a dead process's closed sockets would
(:class:`UnavailableError`), so whatever the worker's runtime still tries on its way out
(removing its builds) never reaches the cluster. Cancel the worker's task right after.
"""

from __future__ import annotations

from typing import Any

from buildruntime.cluster.port import UnavailableError


class SeverableCluster:
    """Passes every call through to ``inner`` until :meth:`sever`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.severed = False

    def sever(self) -> None:
        self.severed = True

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.severed:
                raise UnavailableError("the worker was killed")
            return attribute(*args, **kwargs)

        return call
