"""KubeCluster: the port's calls (list, create, patch, delete, watch, log streams) on a
real API server, with the request accounting both cluster implementations keep.

Each call names its HTTP request here (verb, path, query, media types); loading the
client's configuration is in :mod:`.config`, sending a request in :mod:`.request`, the
error mapping in :mod:`.errors`, the streams in :mod:`.watch` and :mod:`.log_stream`,
and every blocking call runs in a thread of :mod:`.threads`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import Any

import kubernetes.client

from ..port import JSON, Request, Resource
from ..watch_events import WatchDecoder
from .config import disable_urllib3_retries, load_in_cluster, load_kubeconfig, server_url
from .log_stream import LogStream
from .request import JSON_MEDIA_TYPE, Query, query_params, request_json
from .threads import ThreadLimiter
from .watch import Watch

__all__ = ["KubeCluster"]

_RESOURCES: frozenset[str] = frozenset({"pods", "events"})

_STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_MERGE_PATCH = "application/merge-patch+json"
_LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class KubeCluster:
    """The cluster port on a real API server, through the official client's ApiClient.

    Build one with :meth:`from_kubeconfig`, :meth:`in_cluster`, or from an
    ``ApiClient`` you configured. The cluster owns its ApiClient: it turns the
    client's urllib3 retries off and closes its connection pool in :meth:`aclose`
    (also ``async with KubeCluster(...) as cluster``).

    Settings:

    - ``stream_threads`` (512): tokens of this cluster's own thread limiter; every
      blocking call and every waiting stream read takes one. A build holds one or
      three while a step runs (its log stream, and its two watches unless it shares
      the runtime's), so the default serves at least 150 concurrent builds; idle
      threads cost only their stack reservation.
    - ``request_timeout`` (30 s): total time for a unary call (list, create, patch,
      delete), and the connect timeout of streams.
    - ``watch_read_timeout`` (70 s): a watch that delivers no byte for this long is
      treated as broken and raises :class:`~buildruntime.cluster.port.UnavailableError`.
      The API server sends a bookmark about every minute on a pods watch with
      ``allowWatchBookmarks``, so 70 s of silence means a dead connection (kopf uses the
      same figure). Events get no bookmarks: their watches wait out ``timeoutSeconds``.
    - ``log_read_timeout`` (300 s): the same for a follow log stream. A quiet container
      is silent for as long as it likes, so here silence means "reopen with
      ``sinceTime``" (which also catches streams that stall silently, kubernetes
      #59477, #28369): one extra request per five quiet minutes.

    Accounting, as on the fake cluster: ``requests`` gets one
    :class:`~buildruntime.cluster.port.Request` per HTTP request issued (failed ones
    included); ``open_watches`` and ``open_log_streams`` count streams open now.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> None:
        if stream_threads < 1:
            raise ValueError("stream_threads must be at least 1")
        if min(request_timeout, watch_read_timeout, log_read_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        self._api_client: Any = api_client
        disable_urllib3_retries(api_client)
        self._threads = ThreadLimiter(stream_threads)
        self._closed = False
        self.stream_threads = stream_threads
        self.request_timeout = float(request_timeout)
        self.watch_read_timeout = float(watch_read_timeout)
        self.log_read_timeout = float(log_read_timeout)
        self.requests: builtins.list[Request] = []
        self.open_watches = 0
        self.open_log_streams = 0

    @property
    def server(self) -> str:
        """The URL of the API server this cluster talks to, as its configuration
        says (``https://host:port``)."""
        return server_url(self._api_client)

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        context: str | None = None,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> KubeCluster:
        """Load a kubeconfig into a private ``Configuration`` (never the client's
        process-wide default). ``path=None`` means ``$KUBECONFIG`` (read now, and
        possibly a list of files) or ``~/.kube/config``; ``context=None`` its current
        context. Refreshed credentials are not written back to the file."""
        return cls(
            load_kubeconfig(path, context),
            stream_threads=stream_threads,
            request_timeout=request_timeout,
            watch_read_timeout=watch_read_timeout,
            log_read_timeout=log_read_timeout,
        )

    @classmethod
    def in_cluster(
        cls,
        *,
        stream_threads: int = 512,
        request_timeout: float = 30.0,
        watch_read_timeout: float = 70.0,
        log_read_timeout: float = 300.0,
    ) -> KubeCluster:
        """Use the pod's service account (token, CA and ``KUBERNETES_SERVICE_HOST``),
        into a private ``Configuration``; the token file is re-read as it rotates."""
        return cls(
            load_in_cluster(),
            stream_threads=stream_threads,
            request_timeout=request_timeout,
            watch_read_timeout=watch_read_timeout,
            log_read_timeout=log_read_timeout,
        )

    async def aclose(self) -> None:
        """Close the ApiClient's connection pool. Streams still open keep their own
        connection until their ``async with`` ends."""
        if self._closed:
            return
        self._closed = True
        self._api_client.close()

    async def __aenter__(self) -> KubeCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- unary calls -------------------------------------------------------------

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        """``GET /api/v1/namespaces/{ns}/{pods|events}``. ``resource_version="0"``
        lets the API server answer from its watch cache; ``None`` sends no
        resourceVersion, which is a consistent (quorum) read from etcd."""
        _check_resource(resource)
        query = query_params(
            labelSelector=label_selector,
            fieldSelector=field_selector,
            resourceVersion=resource_version,
        )
        self.requests.append(Request("list", resource))
        return await self._request_json(
            f"list {resource} in {namespace}",
            "GET",
            f"/api/v1/namespaces/{{namespace}}/{resource}",
            {"namespace": namespace},
            query=query,
        )

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        """``POST`` the manifest as JSON. An admission webhook's denial comes back as
        400/403/422 with the webhook's text in the Status message, which
        :class:`ApiError` carries verbatim."""
        self.requests.append(Request("create", "pods"))
        return await self._request_json(
            f"create pod in {namespace}",
            "POST",
            "/api/v1/namespaces/{namespace}/pods",
            {"namespace": namespace},
            body=manifest,
            content_type=JSON_MEDIA_TYPE,
        )

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        """``PATCH`` with ``application/strategic-merge-patch+json``: for pods, lists
        such as ``spec.containers`` merge by their ``name`` key, so a patch naming one
        container changes only that container (a JSON merge patch would replace the
        whole list)."""
        self.requests.append(Request("patch", "pods"))
        return await self._request_json(
            f"patch pod {namespace}/{name}",
            "PATCH",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            {"namespace": namespace, "name": name},
            body=patch,
            content_type=_STRATEGIC_MERGE_PATCH,
        )

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        """``DELETE`` the pod (404 raises :class:`NotFoundError`)."""
        self.requests.append(Request("delete", "pods"))
        await self._request_json(
            f"delete pod {namespace}/{name}",
            "DELETE",
            "/api/v1/namespaces/{namespace}/pods/{name}",
            {"namespace": namespace, "name": name},
            query=query_params(gracePeriodSeconds=grace_period_seconds),
            decode=False,
        )

    async def create_secret(self, namespace: str, manifest: JSON) -> JSON:
        """``POST`` a Secret (its values travel only in this request's body)."""
        self.requests.append(Request("create", "secrets"))
        return await self._request_json(
            f"create secret in {namespace}",
            "POST",
            "/api/v1/namespaces/{namespace}/secrets",
            {"namespace": namespace},
            body=manifest,
            content_type=JSON_MEDIA_TYPE,
        )

    async def patch_secret(self, namespace: str, name: str, patch: JSON) -> JSON:
        """``PATCH`` a Secret with a strategic merge patch (its ownerReferences)."""
        self.requests.append(Request("patch", "secrets"))
        return await self._request_json(
            f"patch secret {namespace}/{name}",
            "PATCH",
            "/api/v1/namespaces/{namespace}/secrets/{name}",
            {"namespace": namespace, "name": name},
            body=patch,
            content_type=_STRATEGIC_MERGE_PATCH,
        )

    async def delete_secret(self, namespace: str, name: str) -> None:
        """``DELETE`` a Secret (404 raises :class:`NotFoundError`)."""
        self.requests.append(Request("delete", "secrets"))
        await self._request_json(
            f"delete secret {namespace}/{name}",
            "DELETE",
            "/api/v1/namespaces/{namespace}/secrets/{name}",
            {"namespace": namespace, "name": name},
            decode=False,
        )

    async def get_secret(self, namespace: str, name: str) -> JSON:
        """``GET`` a Secret (404 raises :class:`NotFoundError`)."""
        self.requests.append(Request("get", "secrets"))
        return await self._request_json(
            f"read secret {namespace}/{name}",
            "GET",
            "/api/v1/namespaces/{namespace}/secrets/{name}",
            {"namespace": namespace, "name": name},
        )

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        """``POST`` a coordination.k8s.io/v1 Lease."""
        self.requests.append(Request("create", "leases"))
        return await self._request_json(
            f"create lease in {namespace}",
            "POST",
            _LEASES,
            {"namespace": namespace},
            body=manifest,
            content_type=JSON_MEDIA_TYPE,
        )

    async def get_lease(self, namespace: str, name: str) -> JSON:
        """``GET`` a Lease (404 raises :class:`NotFoundError`)."""
        self.requests.append(Request("get", "leases"))
        return await self._request_json(
            f"get lease {namespace}/{name}",
            "GET",
            _LEASES + "/{name}",
            {"namespace": namespace, "name": name},
        )

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        """``PATCH`` a Lease with a JSON merge patch (a Lease has no strategic merge
        keys worth having; a ``metadata.resourceVersion`` in it is a precondition)."""
        self.requests.append(Request("patch", "leases"))
        return await self._request_json(
            f"patch lease {namespace}/{name}",
            "PATCH",
            _LEASES + "/{name}",
            {"namespace": namespace, "name": name},
            body=patch,
            content_type=_MERGE_PATCH,
        )

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        """``DELETE`` a Lease, in the background propagation (the garbage collector
        deletes its dependents afterwards), conditional on ``resource_version``."""
        self.requests.append(Request("delete", "leases"))
        options: JSON = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if resource_version is not None:
            options["preconditions"] = {"resourceVersion": resource_version}
        await self._request_json(
            f"delete lease {namespace}/{name}",
            "DELETE",
            _LEASES + "/{name}",
            {"namespace": namespace, "name": name},
            body=options,
            content_type=JSON_MEDIA_TYPE,
            decode=False,
        )

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        """``GET`` the namespace's Leases (a consistent read)."""
        self.requests.append(Request("list", "leases"))
        return await self._request_json(
            f"list leases in {namespace}",
            "GET",
            _LEASES,
            {"namespace": namespace},
            query=query_params(labelSelector=label_selector),
        )

    # -- streams -----------------------------------------------------------------

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
        decoder: WatchDecoder[Any] | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """``GET ...?watch=true``: see :class:`~.watch.Watch` for what the iterator does."""
        _check_resource(resource)
        query = query_params(
            watch="true",
            allowWatchBookmarks="true" if allow_bookmarks else None,
            resourceVersion=resource_version,
            labelSelector=label_selector,
            fieldSelector=field_selector,
            timeoutSeconds=timeout_seconds,
        )
        return Watch(self, resource, namespace, query, decoder)

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
        """``GET .../pods/{pod}/log``: see :class:`~.log_stream.LogStream`."""
        query = query_params(
            container=container,
            follow="true" if follow else None,
            timestamps="true" if timestamps else None,
            sinceTime=since_time,
        )
        return LogStream(self, namespace, pod, query)

    # -- plumbing ----------------------------------------------------------------

    async def _request_json(
        self,
        what: str,
        method: str,
        path: str,
        path_params: dict[str, str],
        *,
        query: Query | None = None,
        body: JSON | None = None,
        content_type: str | None = None,
        decode: bool = True,
    ) -> JSON:
        """A unary call (:func:`~.request.request_json`) in a worker thread, bounded
        by ``request_timeout``."""
        return await self._threads.run(
            partial(
                request_json,
                self._api_client,
                what,
                method,
                path,
                path_params,
                timeout=self.request_timeout,
                query=query,
                body=body,
                content_type=content_type,
                decode=decode,
            )
        )


# -- helpers -----------------------------------------------------------------------


def _check_resource(resource: str) -> None:
    if resource not in _RESOURCES:
        raise ValueError(f"unsupported resource {resource!r}: expected pods or events")
