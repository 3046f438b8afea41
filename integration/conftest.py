"""The integration suite's target: a real cluster (KUBECONFIG) or FakeCluster's simulation.

``BUILDRUNTIME_TARGET=cluster`` (the default when KUBECONFIG is set) runs every test
against the cluster KUBECONFIG names, through a TCP proxy the tests control;
``BUILDRUNTIME_TARGET=fake`` runs the very same tests on FakeCluster, so the two cannot
drift apart unnoticed. Tests talk to a :class:`Target`, which does the outside actions
(cutting connections, deleting a pod as someone else would) in the way each target can.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from buildruntime import Runtime
from buildruntime.cluster.port import Request
from buildruntime.informer.reflector import ReflectorSettings

from .tcp_proxy import TcpProxy

BUSYBOX = "busybox"
LOCAL_PAUSE_IMAGE = os.environ.get("BUILDRUNTIME_PAUSE_IMAGE", "localhost/pause:3.10")
RECOVERY = ReflectorSettings(backoff_initial=0.1, backoff_max=1.0)


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


class FakeTarget(Target):
    kind = "fake"

    def __init__(self) -> None:
        from buildruntime.testing import FakeCluster

        self.cluster = FakeCluster(images={BUSYBOX})
        self.namespace = "integration"
        self.pause_image = None

    async def delete_pod_from_outside(self, name: str) -> None:
        await self.cluster.delete_pod(self.namespace, name)

    def cut_connections(self) -> None:
        self.cluster.faults.cut_logs()
        self.cluster.faults.drop_watches()

    def refuse_connections(self, seconds: float) -> None:
        self.cluster.faults.outage(seconds)


class ClusterTarget(Target):
    kind = "cluster"

    def __init__(self, kubeconfig: str, namespace: str, proxy: TcpProxy) -> None:
        from kubernetes import client, config

        from buildruntime.cluster.kube import KubeCluster

        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.host = proxy.url
        self.proxy = proxy
        self.cluster = KubeCluster(client.ApiClient(configuration))
        self.namespace = namespace
        self.pause_image = LOCAL_PAUSE_IMAGE
        self._outside = KubeCluster.from_kubeconfig(kubeconfig)

    async def delete_pod_from_outside(self, name: str) -> None:
        await self._outside.delete_pod(self.namespace, name)

    def cut_connections(self) -> None:
        self.proxy.cut()

    def refuse_connections(self, seconds: float) -> None:
        self.proxy.refuse(seconds)

    async def aclose(self) -> None:
        await self.cluster.aclose()
        await self._outside.aclose()


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
    return any(
        wanted_resource in rule["resources"] and wanted_verb in rule["verbs"]
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
        utils.create_from_dict(admin, doc, namespace=namespace)
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
