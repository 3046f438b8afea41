"""Shared pieces of the benchmarks: request counting, result tables, the local cluster.

Every script in bench/ imports this module as ``_common`` (scripts run as
``.venv/bin/python bench/NAME.py`` from the repository root, so bench/ is on sys.path).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from buildruntime.cluster.port import JSON, Cluster, Request, Resource

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
CACHE_DIR = BENCH_DIR / ".cache"
PROFILES_DIR = BENCH_DIR / "profiles"

LOAD_AT_START = os.getloadavg()
"""The 1, 5 and 15 minute load averages when the benchmark started: the machine is
shared, and other work on it slows every figure down."""

LOCAL_PAUSE_IMAGE = os.environ.get("BUILDRUNTIME_PAUSE_IMAGE", "localhost/pause:3.10")
KUBECTL_DEFAULT = "/var/cache/buildruntime-cluster/k8s-v1.33.13/bin/kubectl"


# -- request accounting -------------------------------------------------------------


class CountingCluster:
    """Any :class:`~buildruntime.cluster.port.Cluster`, with every request counted.

    Both the runtime under test and the per-step baseline talk to the cluster through
    this wrapper, so their counts come from the same place. ``get_pod`` is the one verb
    the port lacks (buildruntime never needs it): it is sent as a list with the field
    selector ``metadata.name=NAME`` and counted as a ``get``.
    """

    def __init__(self, inner: Cluster) -> None:
        self.inner = inner
        self.requests: list[Request] = []

    def counts(self) -> Counter[str]:
        """Requests by ``verb`` and by ``verb resource``: the build's, so the worker's
        Lease requests (its creation, renewals, the reaper's list, its deletion: per
        worker, whatever the number of builds) are left out."""
        counter: Counter[str] = Counter()
        per_build = [r for r in self.requests if r.resource != "leases"]
        for request in per_build:
            counter[request.verb] += 1
            counter[f"{request.verb} {request.resource}"] += 1
        counter["total"] = len(per_build)
        return counter

    def reset(self) -> None:
        self.requests.clear()

    async def list(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
    ) -> JSON:
        self.requests.append(Request("list", resource))
        return await self.inner.list(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
        )

    async def get_pod(self, namespace: str, name: str) -> JSON | None:
        """One GET of a pod (a list narrowed to it by name); None when it is absent."""
        self.requests.append(Request("get", "pods"))
        listing = await self.inner.list("pods", namespace, field_selector=f"metadata.name={name}")
        items = listing.get("items") or []
        return items[0] if items else None

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
        self.requests.append(Request("watch", resource))
        return self.inner.watch(
            resource,
            namespace,
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            allow_bookmarks=allow_bookmarks,
            decoder=decoder,
        )

    async def create_pod(self, namespace: str, manifest: JSON) -> JSON:
        self.requests.append(Request("create", "pods"))
        return await self.inner.create_pod(namespace, manifest)

    async def patch_pod(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.requests.append(Request("patch", "pods"))
        return await self.inner.patch_pod(namespace, name, patch)

    async def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> None:
        self.requests.append(Request("delete", "pods"))
        await self.inner.delete_pod(namespace, name, grace_period_seconds=grace_period_seconds)

    async def create_lease(self, namespace: str, manifest: JSON) -> JSON:
        self.requests.append(Request("create", "leases"))
        return await self.inner.create_lease(namespace, manifest)

    async def get_lease(self, namespace: str, name: str) -> JSON:
        self.requests.append(Request("get", "leases"))
        return await self.inner.get_lease(namespace, name)

    async def patch_lease(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.requests.append(Request("patch", "leases"))
        return await self.inner.patch_lease(namespace, name, patch)

    async def delete_lease(
        self, namespace: str, name: str, *, resource_version: str | None = None
    ) -> None:
        self.requests.append(Request("delete", "leases"))
        await self.inner.delete_lease(namespace, name, resource_version=resource_version)

    async def list_leases(self, namespace: str, *, label_selector: str | None = None) -> JSON:
        self.requests.append(Request("list", "leases"))
        return await self.inner.list_leases(namespace, label_selector=label_selector)

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
        self.requests.append(Request("log", "pods"))
        return self.inner.stream_logs(
            namespace,
            pod,
            container,
            follow=follow,
            timestamps=timestamps,
            since_time=since_time,
        )


# -- tables and RESULTS.md ------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def command_line() -> str:
    """The command that is running, as typed from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_DIR)
    python = (
        os.path.relpath(sys.executable, REPO_DIR) if sys.prefix != sys.base_prefix else ("python")
    )
    if python.startswith(".."):
        python = "python"
    return shlex.join([python, script, *sys.argv[1:]])


def machine() -> str:
    cpus = os.cpu_count() or 0
    start = "/".join(f"{x:.1f}" for x in LOAD_AT_START)
    end = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpus} CPUs, Python {sys.version.split()[0]}, {sys.platform}; "
        f"load average (1/5/15 min) {start} at the start, {end} at the end"
    )


def append_results(title: str, body: str) -> None:
    """Append one run's figures to bench/RESULTS.md, with the command and the date."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    text = (
        f"\n### {title} — {stamp}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine()}\n\n{body.rstrip()}\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nRaw runs are appended below by the scripts.\n")
    with RESULTS.open("a") as out:
        out.write(text)
    print(f"\n(appended to {os.path.relpath(RESULTS, Path.cwd())})")


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# -- the local cluster ----------------------------------------------------------------


def require_kubeconfig(target: str) -> str | None:
    """KUBECONFIG for targets that need the real cluster; exit 2 with a message when it
    is not set. Returns None when only the fake is wanted."""
    if target == "fake":
        return None
    path = os.environ.get("KUBECONFIG")
    if not path:
        _fail(
            f"--target {target} needs a real cluster: set KUBECONFIG (for the local "
            "cluster: KUBECONFIG=/var/lib/buildruntime-cluster/admin.kubeconfig; start it "
            "with integration/cluster/up), or pass --target fake"
        )
    if not Path(path).exists():
        _fail(f"KUBECONFIG={path} does not exist (is the local cluster up?)")
    return path


def _fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(2)


def kubectl_path() -> str:
    return os.environ.get("KUBECTL", KUBECTL_DEFAULT)


@dataclass
class ClusterNamespace:
    """A fresh namespace on the real cluster (created on enter, deleted on exit)."""

    kubeconfig: str
    name: str


@contextmanager
def fresh_namespace(kubeconfig: str, prefix: str) -> Iterator[ClusterNamespace]:
    """Create a namespace for one run with the official client; delete it afterwards
    (without waiting for its pods to go)."""
    from kubernetes import client, config

    new_client: Any = config.new_client_from_config
    api: Any = new_client(config_file=kubeconfig)
    core: Any = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    # The namespace's default ServiceAccount appears a moment later; pods need it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException:
            time.sleep(0.2)
    try:
        yield ClusterNamespace(kubeconfig, name)
    finally:
        try:
            core.delete_namespace(name, grace_period_seconds=0)
        except Exception as error:  # best effort: the cluster may have gone away
            print(f"warning: could not delete namespace {name}: {error}", file=sys.stderr)
        api.close()


def kube_cluster(kubeconfig: str, **settings: Any) -> Any:
    """A :class:`~buildruntime.cluster.kube.KubeCluster` for ``kubeconfig``."""
    from buildruntime.cluster.kube import KubeCluster

    return KubeCluster.from_kubeconfig(kubeconfig, **settings)


@asynccontextmanager
async def fake_cluster(**settings: Any) -> AsyncIterator[Any]:
    """A FakeCluster with busybox (and alpine) as the images it has."""
    from buildruntime.testing import FakeCluster

    async with FakeCluster(images={"busybox", "alpine:3.20"}, **settings) as fake:
        yield fake
