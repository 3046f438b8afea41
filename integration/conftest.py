"""The integration suite's target: a real cluster (KUBECONFIG) or FakeCluster's simulation.

``BUILDRUNTIME_TARGET=cluster`` (the default when KUBECONFIG is set) runs every test
against the cluster KUBECONFIG names, through a TCP proxy the tests control;
``BUILDRUNTIME_TARGET=fake`` runs the very same tests on FakeCluster, so the two cannot
drift apart unnoticed. Tests talk to a :class:`Target`, which does the outside actions
(cutting connections, deleting a pod as someone else would, restarting the API server,
compacting its storage, injecting sidecars at admission) in the way each target can.

On the local cluster of ``integration/cluster/`` every outside action is real (its
scripts restart kube-apiserver and compact etcd). On another cluster (kind, say) the
actions that need control of the control plane skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import pytest

from buildruntime import Runtime
from buildruntime.cluster.port import Request
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.informer.reflector import ReflectorSettings

from .admission import InjectingCluster, SidecarWebhook
from .tcp_proxy import TcpProxy

BUSYBOX = "busybox"
LOCAL_PAUSE_IMAGE = os.environ.get("BUILDRUNTIME_PAUSE_IMAGE", "localhost/pause:3.10")
PAUSE_ALIAS = "docker.io/kubernetes/pause:latest"
"""The second tag integration/cluster/up gives the pause image (FakeTarget's node too)."""
PLACEHOLDER_IMAGE = "localhost/buildruntime-placeholder:1"
"""buildruntime's placeholder (deploy/placeholder) as integration/cluster/up builds it."""
ENTRYPOINT_IMAGE = "localhost/entrypoint-echo:1"
"""busybox with ENTRYPOINT ["/bin/echo", "entrypoint-ran"] and CMD ["with-default-cmd"]."""
ENTRYPOINT_CONFIG = (("/bin/echo", "entrypoint-ran"), ("with-default-cmd",))
RECOVERY = ReflectorSettings(backoff_initial=0.1, backoff_max=1.0)
CLUSTER_SCRIPTS = Path(__file__).parent / "cluster"
APISERVER_START = 2.5
"""Seconds the local kube-apiserver takes from its start to a ready /readyz; FakeCluster
stays unreachable that much longer when "restarted"."""
JSON = dict[str, Any]


@dataclass(frozen=True)
class PrivateRegistry:
    """A registry that serves busybox (as ``<host>/library/busybox:latest``) only to
    pulls carrying this user and password."""

    host: str
    username: str
    password: str


FAKE_PRIVATE_REGISTRY = PrivateRegistry("registry.private.test", "ci", "pull-pass-2026")


def target_kind() -> str:
    kind = os.environ.get("BUILDRUNTIME_TARGET")
    if kind:
        return kind
    return "cluster" if os.environ.get("KUBECONFIG") else "fake"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Target:
    """What a test needs from the place it runs: a cluster port and outside actions."""

    kind: str
    cluster: Any
    namespace: str
    pause_image: str | None
    private_registry: PrivateRegistry | None
    """None where the target has no registry behind authentication."""

    def runtime(self, **settings: Any) -> Runtime:
        if self.pause_image:
            settings.setdefault("pause_image", self.pause_image)
        settings.setdefault("reflector", RECOVERY)
        return Runtime(self.cluster, self.namespace, **settings)

    @property
    def requests(self) -> list[Request]:
        return list(self.cluster.requests)

    async def delete_pod_from_outside(self, name: str) -> None:
        raise NotImplementedError

    def cut_connections(self) -> None:
        """Cut every open watch and log stream, mid-stream."""
        raise NotImplementedError

    def refuse_connections(self, seconds: float) -> None:
        """An API outage: cut everything and refuse new connections for ``seconds``."""
        raise NotImplementedError

    def require_control(self, what: str) -> None:
        """Skip the test when this target cannot do ``what`` to its control plane (a
        cluster other than the local one); call it before the build starts."""

    def hold_connections(self) -> AbstractAsyncContextManager[None]:
        """Hold the runtime off the API server for the block: every open watch and log
        stream is cut and new connections are refused until the block ends, while the
        server, the node and outside actions go on."""
        raise NotImplementedError

    async def compact_and_expire(self) -> None:
        """Compact the API server's storage past every resourceVersion handed out so
        far: a watch resuming from one that the server serves from storage gets 410
        Gone (on the real cluster: events; pods come from the watch cache's history)."""
        raise NotImplementedError

    async def restart_apiserver(self, *, down: float) -> Outage:
        """Stop the API server (a crash), keep it down ``down`` seconds, start it again
        (which takes a few seconds more); returns once it is ready, with the wall-clock
        times of the outage."""
        raise NotImplementedError

    def inject_sidecars(self, containers: list[JSON]) -> AbstractAsyncContextManager[list[str]]:
        """While the block runs, every pod of the runtime created in the namespace gets
        ``containers`` added at admission, as a service mesh injects its proxy. Yields
        the names of the pods mutated so far. Make the runtime inside the block."""
        raise NotImplementedError

    async def create_event(
        self,
        pod: str,
        *,
        type: str,
        reason: str,
        message: str,
        container: str | None = None,
    ) -> None:
        """Post a core/v1 Event about ``pod`` (``container``: its fieldPath is
        ``spec.containers{container}``) from outside the runtime, as some other
        component would."""
        raise NotImplementedError

    async def read_pod(self, name: str) -> JSON | None:
        """The pod as the API server stores it now, read outside the runtime's port
        (the ground truth); None when it does not exist."""
        raise NotImplementedError

    async def create_claim(self, name: str) -> None:
        """A PersistentVolumeClaim ``name`` in the namespace, bound to a volume on the
        node (removed with the target), for a build's workspace."""
        raise NotImplementedError

    async def create_runtime_class(self, name: str, handler: str) -> None:
        """A RuntimeClass (cluster-wide, removed with the target) naming a handler of the
        node's container runtime."""
        raise NotImplementedError

    async def read_secret(self, name: str) -> JSON | None:
        """The Secret as the API server stores it now (the ground truth); None when it
        does not exist."""
        raise NotImplementedError

    async def read_lease(self, name: str) -> JSON | None:
        """The Lease as the API server stores it now (the ground truth); None when it
        does not exist."""
        raise NotImplementedError

    async def create_lease_from_outside(self, manifest: JSON) -> JSON:
        """Create a Lease as another worker (or a dead one) would have; returns it."""
        raise NotImplementedError

    async def node_log(self, pod: str, container: str) -> list[bytes] | None:
        """The lines of the container's latest instance as the node itself stores them
        (the container runtime's log file, before the kubelet or the API server serve
        it), partial records joined; a last record the runtime never finished is the
        last line, as it stands. Read it before the pod is deleted. None where the
        node's files are out of reach (a cluster other than the local one)."""
        raise NotImplementedError

    async def pod_gone(self, name: str) -> None:
        """Poll the ground truth until the pod no longer exists (bound it with
        ``anyio.fail_after``): a deletion takes the pod's grace period."""
        while await self.read_pod(name) is not None:
            await anyio.sleep(0.1)

    async def pod_until(self, name: str, condition: Callable[[JSON], bool]) -> JSON:
        """Poll the ground truth until ``condition(pod)`` holds (bound it with
        ``anyio.fail_after``)."""
        while True:
            pod = await self.read_pod(name)
            if pod is not None and condition(pod):
                return pod
            await anyio.sleep(0.1)


@dataclass(frozen=True)
class Outage:
    """When an API server outage began and ended (wall clock, UTC)."""

    started: datetime
    ended: datetime


def _now() -> datetime:
    return datetime.now(UTC)


class FakeTarget(Target):
    kind = "fake"

    def __init__(self) -> None:
        from buildruntime.testing import FakeCluster, ImageConfig

        # A node whose pause image carries a second tag, as the local cluster's does.
        self.fake = FakeCluster(
            images={BUSYBOX},
            placeholder_image=PLACEHOLDER_IMAGE,
            image_configs={ENTRYPOINT_IMAGE: ImageConfig(*ENTRYPOINT_CONFIG)},
            image_aliases={DEFAULT_PAUSE_IMAGE: PAUSE_ALIAS},
            # What the local cluster's node offers on the 2-core machine.
            node_allocatable={"cpu": "2", "memory": "24Gi"},
            private_registries={
                FAKE_PRIVATE_REGISTRY.host: (
                    FAKE_PRIVATE_REGISTRY.username,
                    FAKE_PRIVATE_REGISTRY.password,
                )
            },
        )
        self.private_registry = FAKE_PRIVATE_REGISTRY
        self.cluster = self.fake
        self.namespace = "integration"
        self.pause_image = None

    async def delete_pod_from_outside(self, name: str) -> None:
        await self.cluster.delete_pod(self.namespace, name)

    def cut_connections(self) -> None:
        self.cluster.faults.cut_logs()
        self.cluster.faults.drop_watches()

    def refuse_connections(self, seconds: float) -> None:
        self.cluster.faults.outage(seconds)

    @asynccontextmanager
    async def hold_connections(self) -> AsyncIterator[None]:
        self.fake.faults.outage(24 * 3600)
        try:
            yield
        finally:
            self.fake.faults.clear()

    async def compact_and_expire(self) -> None:
        # FakeCluster has no watch cache in front of its storage: every watch resuming
        # from an old version gets 410, pods as well as events.
        self.fake.faults.expire()

    async def restart_apiserver(self, *, down: float) -> Outage:
        # What a restart amounts to for a client: connections refused while the server
        # is stopped and while it starts, then a server whose watch history starts
        # afresh (old versions answer 410).
        started = _now()
        self.fake.faults.outage(down + APISERVER_START)
        self.fake.faults.expire()
        await anyio.sleep(down + APISERVER_START)
        return Outage(started, _now())

    @asynccontextmanager
    async def inject_sidecars(self, containers: list[JSON]) -> AsyncIterator[list[str]]:
        original = self.cluster
        injecting = InjectingCluster(original, containers)
        self.cluster = injecting
        try:
            yield injecting.injected
        finally:
            self.cluster = original

    async def create_event(
        self,
        pod: str,
        *,
        type: str,
        reason: str,
        message: str,
        container: str | None = None,
    ) -> None:
        current = await self.read_pod(pod)
        assert current is not None, f"pod {pod} does not exist"
        # FakeCluster has no API to post an Event: its recorder is what its own kubelet
        # and scheduler post through (aggregating repeats as client-go's recorder does).
        self.fake._recorder.record(
            current, reason, message, type=type, component="integration-test", container=container
        )

    async def create_claim(self, name: str) -> None:
        # FakeCluster's kubelet gives every claim name a directory of its own that
        # outlives the pods using it, as a bound volume does.
        return None

    async def read_secret(self, name: str) -> JSON | None:
        return self.fake.secret(self.namespace, name)

    async def read_lease(self, name: str) -> JSON | None:
        return self.fake.lease(self.namespace, name)

    async def create_lease_from_outside(self, manifest: JSON) -> JSON:
        lease: JSON = await self.fake.create_lease(self.namespace, manifest)
        return lease

    async def node_log(self, pod: str, container: str) -> list[bytes] | None:
        # The simulated node's record of the instance (every file, rotated ones too).
        log = self.fake._kubelet.log_for(self.namespace, pod, container)
        lines: list[bytes] = []
        pending = b""
        for record in log.lines:
            pending += record.text
            if record.complete:
                lines.append(pending)
                pending = b""
        return [*lines, pending] if pending else lines

    async def create_runtime_class(self, name: str, handler: str) -> None:
        # The simulated node runs every pod the same way, whatever its class.
        return None

    async def read_pod(self, name: str) -> JSON | None:
        # Straight from the fake's storage: not a request of the port, and None once the
        # pod is deleted (its history keeps the deleted version).
        return self.fake._server.copy("pods", self.namespace, name)


class ClusterTarget(Target):
    kind = "cluster"

    def __init__(self, kubeconfig: str, namespace: str, proxy: TcpProxy) -> None:
        from kubernetes import client, config

        from buildruntime.cluster.kube import KubeCluster

        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        self.local = is_local_cluster(configuration)
        self.kubeconfig = kubeconfig
        self.upstream = str(configuration.host)
        """The API server's own URL (``cluster`` goes through the test's proxy)."""
        configuration.host = proxy.url
        self.proxy = proxy
        self.cluster = KubeCluster(client.ApiClient(configuration))
        self.namespace = namespace
        self.pause_image = LOCAL_PAUSE_IMAGE
        self.private_registry = _local_private_registry() if self.local else None
        self._outside = KubeCluster.from_kubeconfig(kubeconfig)
        self._admin = config.new_client_from_config(config_file=kubeconfig)
        self._volumes: list[str] = []
        self._runtime_classes: list[str] = []

    async def delete_pod_from_outside(self, name: str) -> None:
        await self._outside.delete_pod(self.namespace, name)

    async def create_claim(self, name: str) -> None:
        # A hostPath volume on the one node, pre-bound to the claim (no provisioner
        # here); kube-controller-manager's binder marks both Bound.
        self.require_control("a volume on the node")
        from kubernetes import client

        core = client.CoreV1Api(self._admin)
        volume = f"{self.namespace}-{name}"
        path = f"/var/lib/buildruntime-cluster/volumes/{volume}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": self.namespace, "name": name},
            },
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        await anyio.to_thread.run_sync(lambda: core.create_persistent_volume(pv))
        self._volumes.append(volume)
        await anyio.to_thread.run_sync(
            lambda: core.create_namespaced_persistent_volume_claim(self.namespace, pvc)
        )
        with anyio.fail_after(60):
            while True:
                claim = await anyio.to_thread.run_sync(
                    lambda: core.read_namespaced_persistent_volume_claim(name, self.namespace)
                )
                if claim.status.phase == "Bound":
                    return
                await anyio.sleep(0.2)

    def cut_connections(self) -> None:
        self.proxy.cut()

    def refuse_connections(self, seconds: float) -> None:
        self.proxy.refuse(seconds)

    def require_control(self, what: str) -> None:
        if not self.local:
            pytest.skip(
                f"{what} needs the local cluster of integration/cluster/ (its control "
                "scripts and its API server on this machine); KUBECONFIG names another"
            )

    @asynccontextmanager
    async def hold_connections(self) -> AsyncIterator[None]:
        self.proxy.refuse(24 * 3600)
        try:
            yield
        finally:
            self.proxy.refuse(0)  # lets new connections through again

    async def compact_and_expire(self) -> None:
        self.require_control("compacting etcd")
        await anyio.run_process([str(CLUSTER_SCRIPTS / "compact-etcd")], check=True)

    async def restart_apiserver(self, *, down: float) -> Outage:
        self.require_control("restarting kube-apiserver")
        old_pid = _apiserver_pid()
        # A write after everything the runtime has seen, as a live cluster always has
        # (node leases, other pods): the restarted API server's watch cache starts at
        # the newest revision, so a watch from an older one gets 410.
        await self._write_marker()
        started = _now()
        done = await anyio.run_process(
            [str(CLUSTER_SCRIPTS / "restart-apiserver"), "--down", f"{down:g}"], check=True
        )
        ended = _now()
        new_pid = int(done.stdout.split()[-1])
        assert new_pid != old_pid, f"kube-apiserver still runs as pid {old_pid}"
        assert _apiserver_pid() == new_pid
        return Outage(started, ended)

    async def _write_marker(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self._admin)
        body = {"metadata": {"generateName": "marker-"}, "data": {"at": _now().isoformat()}}
        await anyio.to_thread.run_sync(
            lambda: core.create_namespaced_config_map(self.namespace, body)
        )

    @asynccontextmanager
    async def inject_sidecars(self, containers: list[JSON]) -> AsyncIterator[list[str]]:
        from kubernetes import client

        # The API server calls the webhook on 127.0.0.1: only ours runs on this machine.
        self.require_control("a sidecar-injecting webhook on this machine's loopback")
        admission = client.AdmissionregistrationV1Api(self._admin)
        name = f"buildruntime-it-sidecars-{self.namespace}"
        with SidecarWebhook(containers) as webhook:
            config = webhook.configuration(name, self.namespace)
            await anyio.to_thread.run_sync(
                lambda: admission.create_mutating_webhook_configuration(config)
            )
            try:
                await self._wait_until_injecting([c["name"] for c in containers])
                yield webhook.mutated
            finally:
                await anyio.to_thread.run_sync(
                    lambda: admission.delete_mutating_webhook_configuration(name)
                )

    async def _wait_until_injecting(self, names: list[str]) -> None:
        """The API server picks a new webhook configuration up from its informer a
        moment later: dry-run a pod of the runtime until the sidecars show up in it."""
        from kubernetes import client

        core = client.CoreV1Api(self._admin)
        probe = {
            "metadata": {
                "generateName": "sidecar-probe-",
                "labels": {"app.kubernetes.io/managed-by": "buildruntime"},
            },
            "spec": {"containers": [{"name": "probe", "image": BUSYBOX}]},
        }

        def dry_run() -> list[str]:
            response = core.create_namespaced_pod(
                self.namespace, probe, dry_run="All", _preload_content=False
            )
            return [c["name"] for c in json.loads(response.data)["spec"]["containers"]]

        with anyio.fail_after(30):
            while not set(names) <= set(await anyio.to_thread.run_sync(dry_run)):
                await anyio.sleep(0.2)

    async def create_event(
        self,
        pod: str,
        *,
        type: str,
        reason: str,
        message: str,
        container: str | None = None,
    ) -> None:
        from kubernetes import client

        current = await self.read_pod(pod)
        assert current is not None, f"pod {pod} does not exist"
        involved: JSON = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": self.namespace,
            "name": pod,
            "uid": current["metadata"]["uid"],
        }
        if container is not None:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        now = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{pod}.", "namespace": self.namespace},
            "involvedObject": involved,
            "type": type,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "integration-test"},
        }
        core = client.CoreV1Api(self._admin)
        await anyio.to_thread.run_sync(lambda: core.create_namespaced_event(self.namespace, body))

    async def read_pod(self, name: str) -> JSON | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._admin)

        def read() -> JSON | None:
            try:
                response = core.read_namespaced_pod(name, self.namespace, _preload_content=False)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            pod: JSON = json.loads(response.data)
            return pod

        return await anyio.to_thread.run_sync(read)

    async def create_runtime_class(self, name: str, handler: str) -> None:
        from kubernetes import client

        node = client.NodeV1Api(self._admin)
        body = {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": name},
            "handler": handler,
        }
        await anyio.to_thread.run_sync(lambda: node.create_runtime_class(body))
        self._runtime_classes.append(name)

    async def node_log(self, pod: str, container: str) -> list[bytes] | None:
        if not self.local:
            return None
        current = await self.read_pod(pod)
        assert current is not None, f"pod {pod} does not exist"
        uid = current["metadata"]["uid"]
        directory = _state_root() / "pod-logs" / f"{self.namespace}_{pod}_{uid}" / container
        # <restart count>.log, and <restart count>.log.<time> for the files the kubelet
        # rotated away while the instance ran.
        latest = max(int(f.name.split(".")[0]) for f in directory.glob("*.log"))
        files = [*sorted(directory.glob(f"{latest}.log.*")), directory / f"{latest}.log"]
        data = b"".join([await anyio.Path(f).read_bytes() for f in files])
        return cri_log_lines(data)

    async def read_secret(self, name: str) -> JSON | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._admin)

        def read() -> JSON | None:
            try:
                response = core.read_namespaced_secret(name, self.namespace, _preload_content=False)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            secret: JSON = json.loads(response.data)
            return secret

        return await anyio.to_thread.run_sync(read)

    async def read_lease(self, name: str) -> JSON | None:
        from buildruntime.cluster.port import NotFoundError

        try:
            lease: JSON = await self._outside.get_lease(self.namespace, name)
        except NotFoundError:
            return None
        return lease

    async def create_lease_from_outside(self, manifest: JSON) -> JSON:
        lease: JSON = await self._outside.create_lease(self.namespace, manifest)
        return lease

    async def aclose(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self._admin)
        for volume in self._volumes:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(lambda v=volume: core.delete_persistent_volume(v))
        node = client.NodeV1Api(self._admin)
        for runtime_class in self._runtime_classes:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(lambda r=runtime_class: node.delete_runtime_class(r))
        await self.cluster.aclose()
        await self._outside.aclose()
        self._admin.close()


def cri_log_lines(data: bytes) -> list[bytes]:
    """The lines of a CRI log file: ``<time> <stream> <P|F> <text>`` records, a line
    longer than the runtime's maximum split into P(artial) records ended by an F(ull)
    one. A file cut inside a record keeps what it has of it as its last line."""
    lines: list[bytes] = []
    pending = b""
    records = data.split(b"\n")
    for number, record in enumerate(records):
        if not record and number == len(records) - 1:
            break
        fields = record.split(b" ", 3)
        if len(fields) < 4:  # cut inside the record's header: no text of it stored
            break
        pending += fields[3]
        if fields[2] == b"F":
            lines.append(pending)
            pending = b""
    return [*lines, pending] if pending else lines


def _state_root() -> Path:
    return Path(os.environ.get("BUILDRUNTIME_CLUSTER_STATE", "/var/lib/buildruntime-cluster"))


def _run_root() -> Path:
    return Path(os.environ.get("BUILDRUNTIME_CLUSTER_RUN", "/run/buildruntime-cluster"))


def _local_private_registry() -> PrivateRegistry | None:
    """The local cluster's registry behind basic auth, as integration/cluster/up
    describes it (None on a cluster started before it had one)."""
    try:
        described = json.loads((_state_root() / "private-registry.json").read_text())
    except (OSError, ValueError):
        return None
    return PrivateRegistry(described["host"], described["username"], described["password"])


def _apiserver_pid() -> int | None:
    try:
        return int((_run_root() / "pids" / "kube-apiserver.pid").read_text())
    except (OSError, ValueError):
        return None


def is_local_cluster(configuration: Any) -> bool:
    """Whether a loaded kubeconfig names the cluster integration/cluster/up runs here:
    its API server on 127.0.0.1:6443, trusted through that cluster's own CA, with the
    pid files the control scripts use."""
    if urlparse(str(configuration.host)).netloc != "127.0.0.1:6443":
        return False
    if _apiserver_pid() is None or not configuration.ssl_ca_cert:
        return False
    try:
        ca = (_state_root() / "pki" / "ca.crt").read_bytes()
        return Path(configuration.ssl_ca_cert).read_bytes().strip() == ca.strip()
    except OSError:
        return False


@pytest.fixture(scope="session")
def cluster_namespace() -> Iterator[tuple[str, str] | None]:
    """A fresh namespace on the real cluster for this run, deleted afterwards."""
    if target_kind() != "cluster":
        yield None
        return
    from kubernetes import client, config

    kubeconfig = os.environ["KUBECONFIG"]
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    namespace = f"it-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        _wait_for_default_service_account(core, namespace)
        yield kubeconfig, namespace
    finally:
        core.delete_namespace(namespace)
        api.close()


@pytest.fixture
async def target(cluster_namespace: tuple[str, str] | None) -> AsyncIterator[Target]:
    if cluster_namespace is None:
        fake = FakeTarget()
        async with fake.cluster:
            yield fake
        return
    kubeconfig, namespace = cluster_namespace
    upstream = urlparse(_server_of(kubeconfig))
    with TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 443) as proxy:
        real = ClusterTarget(kubeconfig, namespace, proxy)
        try:
            yield real
        finally:
            await real.aclose()


def _wait_for_default_service_account(core: Any, namespace: str) -> None:
    """Pods cannot be created in a namespace before kube-controller-manager has made
    its ``default`` ServiceAccount. That takes milliseconds, except just after an API
    server restart (another run's fault test): the controller's watches back off for up
    to half a minute before they reconnect."""
    import time

    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + 90
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _server_of(kubeconfig: str) -> str:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return str(configuration.host)


def role_allows(verb: str, resource: str) -> bool:
    """Whether deploy/rbac.yaml's Role allows one request of the runtime's accounting
    (``log`` is a get on pods/log)."""
    import pathlib

    import yaml

    docs = yaml.safe_load_all(
        (pathlib.Path(__file__).parent.parent / "deploy/rbac.yaml").read_text()
    )
    role = next(d for d in docs if d and d.get("kind") == "Role")
    wanted_verb, wanted_resource = ("get", "pods/log") if verb == "log" else (verb, resource)
    group = "coordination.k8s.io" if resource == "leases" else ""
    return any(
        wanted_resource in rule["resources"]
        and wanted_verb in rule["verbs"]
        and group in rule["apiGroups"]
        for rule in role["rules"]
    )


async def service_account_cluster(kubeconfig: str, namespace: str) -> Any:
    """A KubeCluster authenticated as deploy/rbac.yaml's service account, with exactly
    that Role bound, created in ``namespace``."""
    import pathlib

    import yaml
    from kubernetes import client, config, utils

    from buildruntime.cluster.kube import KubeCluster

    admin = config.new_client_from_config(config_file=kubeconfig)
    text = (pathlib.Path(__file__).parent.parent / "deploy/rbac.yaml").read_text()
    for doc in yaml.safe_load_all(text.replace("NAMESPACE", namespace)):
        try:
            utils.create_from_dict(admin, doc, namespace=namespace)
        except utils.FailToCreateError as error:
            # Made already by an earlier test in this session's namespace, from the same
            # file: what exists is what the file says.
            if any(e.status != 409 for e in error.api_exceptions):
                raise
    token = client.CoreV1Api(admin).create_namespaced_service_account_token(
        "buildruntime-worker", namespace, {"spec": {"expirationSeconds": 3600}}
    )
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.api_key = {"authorization": f"Bearer {token.status.token}"}
    admin.close()
    return KubeCluster(client.ApiClient(configuration))
