"""Counting every request a build sends, by verb and resource, at the port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from opentelemetry import metrics

from buildruntime.cluster.port import JSON, Cluster, Resource
from buildruntime.telemetry import names

T = TypeVar("T")


class MeteredCluster:
    """A :class:`Cluster` that adds one to the requests counter per call, then hands the
    call to ``cluster``. A watch or a log stream counts once, when it is entered (as both
    clusters' own ``requests`` do): nothing is recorded per event or per chunk."""

    def __init__(self, cluster: Cluster, requests: metrics.Counter) -> None:
        self.cluster = cluster
        self._requests = requests

    def _count(self, verb: str, resource: str) -> None:
        self._requests.add(1, {names.VERB: verb, names.RESOURCE: resource})

    @asynccontextmanager
    async def _counted(
        self, verb: str, resource: str, stream: AbstractAsyncContextManager[T]
    ) -> AsyncIterator[T]:
        self._count(verb, resource)
        async with stream as items:
            yield items

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        self._count("list", resource)
        return await self.cluster.list(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
        )

    def watch(
        self,
        resource: Resource,
        namespace: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
        decoder: Any = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        stream = self.cluster.watch(
            resource,
            namespace,
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            allow_bookmarks=allow_bookmarks,
            decoder=decoder,
        )
        return self._counted("watch", resource, stream)

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        self._count("create", "pods")
        return await self.cluster.create_pod(namespace, manifest)

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        self._count("patch", "pods")
        return await self.cluster.patch_pod(namespace, name, patch)

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        self._count("delete", "pods")
        await self.cluster.delete_pod(namespace, name, grace_period_seconds=grace_period_seconds)

    async def create_secret(self, namespace: str, manifest: JSON) -> JSON:
        self._count("create", "secrets")
        return await self.cluster.create_secret(namespace, manifest)

    async def patch_secret(self, namespace: str, name: str, patch: JSON) -> JSON:
        self._count("patch", "secrets")
        return await self.cluster.patch_secret(namespace, name, patch)

    async def delete_secret(self, namespace: str, name: str) -> None:
        self._count("delete", "secrets")
        await self.cluster.delete_secret(namespace, name)

    async def get_secret(self, namespace: str, name: str) -> JSON:
        self._count("get", "secrets")
        return await self.cluster.get_secret(namespace, name)

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        self._count("create", "leases")
        return await self.cluster.create_lease(namespace, manifest)

    async def get_lease(self, namespace: str, name: str) -> JSON:
        self._count("get", "leases")
        return await self.cluster.get_lease(namespace, name)

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        self._count("patch", "leases")
        return await self.cluster.patch_lease(namespace, name, patch)

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        self._count("delete", "leases")
        await self.cluster.delete_lease(namespace, name, resource_version=resource_version)

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        self._count("list", "leases")
        return await self.cluster.list_leases(namespace, label_selector=label_selector)

    def stream_logs(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        follow: bool = True,
        timestamps: bool = True,
        since_time: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._counted(
            "log",
            "pods",
            self.cluster.stream_logs(
                namespace,
                pod,
                container,
                follow=follow,
                timestamps=timestamps,
                since_time=since_time,
            ),
        )
