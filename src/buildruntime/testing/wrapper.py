"""The base of cluster port wrappers that change one or two calls and pass the rest on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from buildruntime.cluster.port import JSON, Cluster, Resource


class ClusterWrapper:
    """Passes every port call, and every other attribute (a FakeCluster's ``faults``,
    ``requests``, ``open_watches``...), through to ``inner``. Subclasses override the
    calls they change."""

    def __init__(self, inner: Cluster) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSON:
        return await self.inner.list(resource, namespace, **kwargs)

    def watch(
        self, resource: Resource, namespace: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        watch: AbstractAsyncContextManager[AsyncIterator[Any]] = self.inner.watch(
            resource, namespace, **kwargs
        )
        return watch

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        return await self.inner.create_pod(namespace, manifest)

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        return await self.inner.patch_pod(namespace, name, patch)

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        await self.inner.delete_pod(namespace, name, grace_period_seconds=grace_period_seconds)

    async def get_secret(self, namespace: str, name: str) -> JSON:
        return await self.inner.get_secret(namespace, name)

    def stream_logs(
        self, namespace: str, pod: str, container: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.stream_logs(namespace, pod, container, **kwargs)
