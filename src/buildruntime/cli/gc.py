"""``buildruntime gc``: reap dead workers' Leases once and say what went with them.

A Lease unrenewed for longer than its duration plus ``--grace`` is deleted (with its
resourceVersion as a precondition, so a worker renewing at that moment keeps it); the
garbage collector then deletes the pods it owned and their Secrets. A single run has
seen each Lease only once, so it judges by the Lease's ``renewTime`` against this
machine's clock: ``--grace`` is also the margin for clock skew (see
:mod:`buildruntime.reaper`).
"""

from __future__ import annotations

import argparse

import anyio

from buildruntime.cli.console import Console
from buildruntime.cli.exits import EXIT_OK
from buildruntime.cli.target import Target, configured_cluster, open_cluster
from buildruntime.cluster.port import ApiError, Cluster, UnavailableError
from buildruntime.errors import ClusterUnavailableError, LeaseError
from buildruntime.labels import WORKER, managed_selector
from buildruntime.reaper import Reaper


async def reap_and_report(cluster: Cluster, namespace: str, grace: float, console: Console) -> int:
    """Reap once in ``namespace`` and print each Lease removed (with the pods that go
    with it) and a count; returns the number removed."""
    reaper = Reaper(cluster, namespace, grace=grace)
    try:
        reaped = await reaper.reap_once()
    except UnavailableError as error:
        raise ClusterUnavailableError(
            "cannot list the workers' Leases: the API server is unreachable",
            reason="Unavailable",
            message=str(error),
        ) from error
    except ApiError as error:
        raise LeaseError(
            f"the API server refused to list or delete the Leases in {namespace}",
            reason=error.reason,
            message=error.message,
        ) from error
    for lease in reaped:
        pods = await cluster.list(
            "pods",
            namespace,
            label_selector=f"{managed_selector()},{WORKER}={lease.worker_id}",
        )
        names = [pod["metadata"]["name"] for pod in pods.get("items") or []]
        console.line(
            f"removed Lease {lease.name} of worker {lease.worker_id} "
            f"(unrenewed for {lease.unrenewed_for:.0f} s)"
            + (f"; its pods go with it: {', '.join(names)}" if names else "")
        )
    console.line(
        f"{len(reaped)} dead worker{'' if len(reaped) == 1 else 's'} reaped in {namespace}"
    )
    return len(reaped)


async def _gc(target: Target, namespace: str, grace: float, console: Console) -> int:
    async with open_cluster(target) as cluster:
        await reap_and_report(cluster, namespace, grace, console)
    return EXIT_OK


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    target = configured_cluster(args.kubeconfig, args.context)
    return anyio.run(_gc, target, args.namespace, args.grace, console)
