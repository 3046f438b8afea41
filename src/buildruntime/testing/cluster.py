"""``FakeCluster``: an in-memory API server plus one node's scheduler and kubelet, behind
the :class:`~buildruntime.cluster.port.Cluster` port.

Event loop model: every state change happens on the event loop of the caller, with no
threads and no locks. The scheduler, the kubelet's pod workers and the processes of
running steps are background "system tasks" spawned on the event loop of the cluster's
first use (asyncio or trio, through anyio), so **a FakeCluster binds to the event loop of
its first use** and refuses to be used from another. Close it with :meth:`aclose` (or
``async with FakeCluster(...) as cluster:``), which kills every process it started and
ends every open stream.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from buildruntime.cluster.port import (
    JSON,
    RESOURCES_WITHOUT_BOOKMARKS,
    ApiError,
    ConflictError,
    NotFoundError,
    Request,
    Resource,
    UnavailableError,
)
from buildruntime.cluster.watch_events import WatchDecoder
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.testing import objects
from buildruntime.testing.apiserver import APIServer
from buildruntime.testing.events import EventRecorder
from buildruntime.testing.faults import Faults
from buildruntime.testing.imagestore import ImageConfig, ImageStore
from buildruntime.testing.kubelet import Kubelet
from buildruntime.testing.leases import LeasesApi, is_orphaned, orphaned_pods
from buildruntime.testing.logs import LogContext, LogStream
from buildruntime.testing.patch import apply_patch
from buildruntime.testing.podspec import create_pod_object, validate_update
from buildruntime.testing.scheduler import Scheduler
from buildruntime.testing.secrets import SecretsApi
from buildruntime.testing.selectors import parse_field_selector, parse_label_selector
from buildruntime.testing.tasks import SystemTasks
from buildruntime.testing.watch import WatchContext, WatchStream

_RESOURCES = ("pods", "events")


class FakeCluster:
    """A fake single-node Kubernetes cluster that really runs the steps.

    ``images`` are the images the node can run (compared after normalisation, so
    ``busybox`` is ``docker.io/library/busybox:latest``); any other image fails to pull.
    ``images=None`` makes every valid image reference present (an image is only a name
    here), as ``--simulate`` wants; a reference that does not parse still gets
    ``InvalidImageName``. The ``pause_image`` is always present and runs nothing; a
    container on it with a ``command`` fails to start (``StartError``), as runc's exec of
    a path the image lacks does. ``placeholder_image`` names buildruntime's own
    placeholder image (deploy/placeholder), present and running nothing too, which
    starts as any of :data:`~buildruntime.launch.PLACEHOLDER_PATHS`.

    ``image_configs`` gives images an :class:`ImageConfig` (``ENTRYPOINT`` and ``CMD``),
    used as a container runtime uses them: ``command`` set runs ``command + args``; only
    ``args`` runs ``ENTRYPOINT + args``; neither runs ``ENTRYPOINT + CMD``. An image with
    no config has both empty (so a container with neither runs nothing and exits 0). An
    image named here is present.

    ``image_aliases`` maps an image to a second tag of the same image on the node
    (``{"localhost/pause:3.10": "docker.io/kubernetes/pause:latest"}``): both names are
    present and are the same image (same ``imageID``, the pause image's alias is the
    placeholder too), and container statuses report the alias as ``image`` for a
    container of either name, as containerd does. ``pull_delay`` is how long a
    pull takes; ``bookmark_interval`` how often watches get a BOOKMARK.
    ``private_registries`` maps a registry host to the (user, password) it wants: its
    images are pulled only for pods whose ``imagePullSecrets`` hold them, and are
    refused otherwise ("pull access denied ... no basic auth credentials" without
    credentials for the host, ``401 Unauthorized`` with wrong ones, in containerd 2's
    words) (an image already on the node is not pulled
    under IfNotPresent, credentials or not, as on a real node).
    ``node_allocatable`` is what the node offers pods (default ``{"cpu": "4", "memory":
    "16Gi"}``): a pod whose requests do not fit what is left is Unschedulable
    (``Insufficient cpu``), as kube-scheduler says.

    Beyond the port: ``faults`` (see :class:`~buildruntime.testing.faults.Faults`),
    :meth:`kill_container`, :meth:`rotate_log`, ``requests`` (one :class:`Request` per
    call, appended before anything else happens), ``open_watches``/``open_log_streams``
    (open right now), :meth:`history` (every version of a pod as written: the ground
    truth) and :meth:`pod_root`.

    A step runs with a container's minimal environment (PATH, HOSTNAME, HOME and its
    ``env``; see :mod:`~buildruntime.testing.environment`) in its pod's own temporary
    root directory (a ``workingDir`` ``/x/y`` is ``<pod root>/x/y``, HOME is
    ``<pod root>/root``; see :mod:`~buildruntime.testing.rootfs`).

    It binds to the event loop of its first use (asyncio or trio) and must be closed
    with :meth:`aclose` (or used as ``async with``), which kills what it started.

    ``log_chunk_bytes`` bounds the size of a log chunk; ``watch_cache_size`` the changes
    kept per resource for watches to resume from (older ones answer 410 Gone);
    ``keep_history=False`` stops recording :meth:`history` (for long benchmarks).
    """

    def __init__(
        self,
        images: Iterable[str] | None = ("busybox",),
        *,
        image_configs: Mapping[str, ImageConfig] | None = None,
        image_aliases: Mapping[str, str] | None = None,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        placeholder_image: str | None = None,
        node_name: str = "fake-node",
        pull_delay: float = 0.02,
        bookmark_interval: float = 1.0,
        log_chunk_bytes: int = 65536,
        watch_cache_size: int = 10_000,
        keep_history: bool = True,
        node_allocatable: Mapping[str, str] | None = None,
        private_registries: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        store = ImageStore(
            images,
            pause_image=pause_image,
            placeholder_image=placeholder_image,
            configs=image_configs,
            aliases=image_aliases,
        )
        self.requests: list[Request] = []
        self.node_name = node_name
        self.pause_image = pause_image
        self._bookmark_interval = bookmark_interval
        self._log_chunk_bytes = log_chunk_bytes
        self._watches: set[WatchStream] = set()
        self._log_streams: set[LogStream] = set()
        self._tasks = SystemTasks()
        self._server = APIServer(history_limit=watch_cache_size, keep_history=keep_history)
        self._recorder = EventRecorder(self._server, node_name)
        self.faults = Faults(
            cut_watches=self._cut_watches,
            cut_logs=self._cut_logs,
            compact=self._server.compact,
            changed=self._faults_changed,
        )
        self._scheduler = Scheduler(
            self._server,
            self._recorder,
            self.faults,
            self._tasks,
            node_name,
            allocatable=dict(node_allocatable) if node_allocatable is not None else None,
        )
        self._kubelet = Kubelet(
            self._server,
            self._recorder,
            self._tasks,
            node_name=node_name,
            images=store,
            pull_delay=pull_delay,
        )
        self._secrets = SecretsApi(self._server)
        self._kubelet.secret_data = self._secrets.data
        self._kubelet.private_registries = dict(private_registries or {})
        self._leases = LeasesApi(self._server)
        self._server.observers.extend(
            [
                self._scheduler.observe,
                self._kubelet.observe,
                self._secrets.collect_garbage,
                self._collect_orphaned_pods,
            ]
        )
        self._closed = False

    # ------------------------------------------------------------ plumbing
    def _cut_watches(self, error: Exception | None) -> None:
        for stream in list(self._watches):
            stream.cut(error)

    def _cut_logs(self, error: Exception) -> None:
        for stream in list(self._log_streams):
            stream.cut(error)

    def _faults_changed(self) -> None:
        self._scheduler.changed.notify()

    async def _request(self, verb: str, resource: str) -> None:
        """Every API call starts here: accounting first, then the faults in force."""
        self.requests.append(Request(verb, resource))
        self._tasks.check_loop()
        if self.faults.latency_seconds > 0:
            await anyio.sleep(self.faults.latency_seconds)
        self.faults.check_available()
        if self._closed:
            raise UnavailableError("connection refused (the fake cluster is closed)")

    @staticmethod
    def _check_resource(resource: str) -> None:
        if resource not in _RESOURCES:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({resource})"
            )

    @property
    def open_watches(self) -> int:
        """Watches open right now."""
        return len(self._watches)

    @property
    def open_log_streams(self) -> int:
        """Log streams open right now."""
        return len(self._log_streams)

    # ------------------------------------------------------------ the port
    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        await self._request("list", resource)
        self._check_resource(resource)
        store = self._server.store(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, store.supported_fields)
        return self._server.list_objects(resource, namespace, labels, fields)

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
        async def begin() -> None:
            await self._request("watch", resource)
            self._check_resource(resource)

        return WatchContext(
            begin,
            self._server,
            self.faults,
            self._watches,
            resource,
            namespace,
            resource_version or "",
            label_selector,
            field_selector,
            timeout_seconds,
            # Like the API server: events are not in its watch cache, so their watches
            # get no bookmarks whatever the request asks.
            allow_bookmarks and resource not in RESOURCES_WITHOUT_BOOKMARKS,
            self._bookmark_interval,
            decoder,
        )

    async def get_pod(self, namespace: str, name: str) -> JSON:
        """GET one pod (not part of the port; counted as a ``get``)."""
        await self._request("get", "pods")
        pod = self._server.copy("pods", namespace, name)
        if pod is None:
            raise NotFoundError(f'pods "{name}" not found')
        return pod

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        await self._request("create", "pods")
        pod = create_pod_object(manifest, namespace)
        denial = self.faults.create_denial
        if denial is not None:
            raise ApiError(
                400,
                "BadRequest",
                f'admission webhook "deny.buildruntime.test" denied the request: {denial}',
            )
        name = pod["metadata"]["name"]
        if self._server.get("pods", namespace, name) is not None:
            raise ConflictError(f'pods "{name}" already exists')
        return objects.load(self._server.write("pods", pod))

    async def create_secret(self, namespace: str, manifest: JSON) -> JSON:
        await self._request("create", "secrets")
        return self._secrets.create(namespace, manifest)

    async def patch_secret(self, namespace: str, name: str, patch: JSON) -> JSON:
        await self._request("patch", "secrets")
        return self._secrets.patch(namespace, name, patch)

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._request("delete", "secrets")
        self._secrets.delete(namespace, name)

    async def get_secret(self, namespace: str, name: str) -> JSON:
        await self._request("get", "secrets")
        secret = self._server.copy("secrets", namespace, name)
        if secret is None:
            raise NotFoundError(f'secrets "{name}" not found')
        return secret

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        await self._request("create", "leases")
        return self._leases.create(namespace, manifest)

    async def get_lease(self, namespace: str, name: str) -> JSON:
        await self._request("get", "leases")
        return self._leases.get(namespace, name)

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        await self._request("patch", "leases")
        return self._leases.patch(namespace, name, patch)

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        await self._request("delete", "leases")
        self._leases.delete(namespace, name, resource_version)

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        await self._request("list", "leases")
        return self._leases.list(namespace, label_selector)

    def lease(self, namespace: str, name: str) -> JSON | None:
        """A stored Lease as the API server holds it (not a request of the port)."""
        return self._server.copy("leases", namespace, name)

    def _collect_orphaned_pods(
        self, resource: str, type: str, obj: JSON, previous: JSON | None
    ) -> None:
        """An observer of the API server, the garbage collector's part for pods: once a
        Lease is deleted (or a pod is created owned by one that does not exist), the
        pods left without any owner are deleted in the background, gracefully, as
        kube-controller-manager deletes them."""
        namespace = obj["metadata"].get("namespace", "")
        if resource == "leases" and type == "DELETED":
            names = list(orphaned_pods(self._server, namespace))
        elif resource == "pods" and type == "ADDED" and is_orphaned(self._server, obj):
            names = [obj["metadata"]["name"]]
        else:
            return
        for name in names:
            self._tasks.spawn(self._delete_orphan, namespace, name, name=f"gc {name}")

    async def _delete_orphan(self, namespace: str, name: str) -> None:
        pod = self._server.get("pods", namespace, name)
        if pod is not None and is_orphaned(self._server, pod):
            self._delete_pod(namespace, name, None)

    def secret(self, namespace: str, name: str) -> JSON | None:
        """A stored Secret as the API server holds it (not a request of the port)."""
        return self._server.copy("secrets", namespace, name)

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        await self._request("patch", "pods")
        current = self._server.get("pods", namespace, name)
        if current is None:
            raise NotFoundError(f'pods "{name}" not found')
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise ConflictError(
                f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                reason="Conflict",
            )
        body = {k: v for k, v in patch.items() if k not in ("status", "kind", "apiVersion")}
        updated = apply_patch({k: v for k, v in current.items() if k != "status"}, body)
        updated["metadata"] = dict(updated["metadata"])
        # Identity and server-owned metadata cannot be patched.
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ):
            if key in current["metadata"]:
                updated["metadata"][key] = current["metadata"][key]
            else:
                updated["metadata"].pop(key, None)
        updated["status"] = current["status"]
        validate_update(current, updated)
        if updated == current:
            copy = self._server.copy("pods", namespace, name)
            assert copy is not None
            return copy
        if updated["spec"] != current["spec"]:
            updated["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        objects.record_manager(updated, "OpenAPI-Generator", body)
        return objects.load(self._server.write("pods", updated))

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        """Delete a pod, as the runtime or as anyone else would: it is marked (MODIFIED,
        ``deletionTimestamp``), the kubelet stops its containers and reports a final
        status (MODIFIED), then it is gone (DELETED). A pod not yet bound to the node, a
        finished pod, or a grace period of 0 is removed at once. Its events are kept."""
        await self._request("delete", "pods")
        if not self._delete_pod(namespace, name, grace_period_seconds):
            raise NotFoundError(f'pods "{name}" not found')

    def _delete_pod(self, namespace: str, name: str, grace_period_seconds: int | None) -> bool:
        """The deletion itself (see :meth:`delete_pod`); False when there is no such pod."""
        current = self._server.get("pods", namespace, name)
        if current is None:
            return False
        grace = grace_period_seconds
        if grace is None:
            grace = int(current["spec"].get("terminationGracePeriodSeconds", 30))
        if (
            grace <= 0
            or not current["spec"].get("nodeName")
            or current["status"].get("phase") in ("Succeeded", "Failed")
        ):
            self._server.remove("pods", namespace, name)
            return True
        existing = current["metadata"].get("deletionGracePeriodSeconds")
        if existing is not None and existing <= grace:
            return True
        updated = objects.evolve(current)
        updated["metadata"]["deletionTimestamp"] = objects.api_time(time.time() + grace)
        updated["metadata"]["deletionGracePeriodSeconds"] = grace
        self._server.write("pods", updated)
        return True

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
        def since_ns() -> int | None:
            if since_time is None:
                return None
            try:
                return objects.parse_time_seconds(since_time) * 1_000_000_000
            except ValueError as error:
                raise ApiError(400, "BadRequest", str(error)) from None

        return LogContext(
            partial(self._request, "log", "pods"),
            partial(self._kubelet.log_for, namespace, pod, container),
            self.faults,
            self._log_streams,
            follow=follow,
            timestamps=timestamps,
            since_ns=since_ns,
            chunk_bytes=self._log_chunk_bytes,
        )

    # ------------------------------------------------------ outside actions
    async def kill_container(
        self,
        namespace: str,
        pod: str,
        container: str,
        reason: str = "OOMKilled",
        exit_code: int = 137,
    ) -> None:
        """SIGKILL a running container (a step or a placeholder) and have the node report
        it terminated with ``reason`` and ``exit_code``; returns once it is reported."""
        self._tasks.check_loop()
        await self._kubelet.kill_container(namespace, pod, container, reason, exit_code)

    def rotate_log(self, namespace: str, pod: str, container: str) -> None:
        """Rotate a running container's log now, as the kubelet does once its file passes
        ``containerLogMaxSize``: requests read only the new file from then on (see
        :mod:`buildruntime.testing.logs` for what open follow streams do)."""
        self._tasks.check_loop()
        self._kubelet.log_for(namespace, pod, container).rotate()

    def pod_root(self, namespace: str, pod: str) -> Path | None:
        """The directory standing in for ``/`` in the containers of ``pod`` (see
        :mod:`buildruntime.testing.rootfs`), or None when the node runs no such pod."""
        worker = self._kubelet.worker_for(namespace, pod)
        return None if worker is None or worker.root is None else worker.root.path

    def history(self, namespace: str, pod: str) -> builtins.list[JSON]:
        """Every version of the pod named ``pod`` ever written (across uids), in
        resourceVersion order, each a fresh copy; for a deleted pod the last entry is its
        state as deleted (the DELETED event's object)."""
        return self._server.history(namespace, pod)

    # -------------------------------------------------------------- closing
    async def aclose(self) -> None:
        """End every open stream and kill every process the cluster started."""
        if self._closed:
            return
        self._closed = True
        self._cut_watches(None)
        for stream in list(self._log_streams):
            stream.close()
        with anyio.CancelScope(shield=True):
            await self._tasks.aclose()
        self._kubelet.volumes.remove()

    async def __aenter__(self) -> FakeCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
