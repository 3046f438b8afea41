"""A transparent cluster port wrapper that records every 410 Gone the runtime receives.

The proof a fault test needs that the API server really answered 410 (rather than the
watch merely reconnecting): it sits between the runtime and the port, passes everything
through unchanged, and notes each :class:`ExpiredError` a watch or a list raised, HTTP
410 or an ERROR event in the stream alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from buildruntime.cluster.port import JSON, Cluster, ExpiredError, Resource
from buildruntime.testing.wrapper import ClusterWrapper


class ExpiryRecorder(ClusterWrapper):
    """Delegates to ``inner``; ``expired`` lists (verb, resource, message) of each 410."""

    def __init__(self, inner: Cluster) -> None:
        super().__init__(inner)
        self.expired: list[tuple[str, str, str]] = []

    def expired_on(self, resource: str) -> list[str]:
        """The messages of the 410s on watches and lists of ``resource``."""
        return [message for _, r, message in self.expired if r == resource]

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSON:
        try:
            return await self.inner.list(resource, namespace, **kwargs)
        except ExpiredError as error:
            self.expired.append(("list", resource, error.message))
            raise

    def watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[JSON]]:
        return self._watch(resource, namespace, **kwargs)

    @asynccontextmanager
    async def _watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[JSON]]:
        try:
            async with self.inner.watch(resource, namespace, **kwargs) as events:
                # Iterated in the caller's block: an ERROR event's 410 surfaces here too.
                yield events
        except ExpiredError as error:
            self.expired.append(("watch", resource, error.message))
            raise
