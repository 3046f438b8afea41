"""Where a command runs: the simulation, a kubeconfig's cluster, or the one we run in."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from buildruntime.cli.exits import BadInput, one_line
from buildruntime.cluster.port import Cluster
from buildruntime.errors import BuildRuntimeError

__all__ = ["SIMULATED_IMAGES", "Target", "choose_target", "open_cluster"]

SIMULATED_IMAGES = frozenset(
    {
        "busybox",
        "alpine",
        "alpine:3.20",
        "golang:1.23",
        "python:3.12",
        "ubuntu:24.04",
        "debian:12",
        "node:22",
    }
)
"""The images ``--simulate`` can "pull"; any other fails to pull, as on a real node."""

_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class Target:
    """Which cluster to use: the simulation, a kubeconfig, or the one we run in."""

    kind: Literal["simulate", "kubeconfig", "in-cluster"]
    path: str | None = None
    context: str | None = None
    note: str | None = None
    """Said on stderr before running (the fallback to the simulation)."""


def choose_target(
    *,
    simulate: bool,
    kubeconfig: str | None,
    context: str | None,
    environ: Mapping[str, str] | None = None,
    fallback: bool = True,
) -> Target | None:
    """The cluster to use, by the rules in the module docstring. None when no cluster
    is configured and ``fallback`` is off."""
    env = os.environ if environ is None else environ
    if simulate:
        return Target("simulate")
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise BadInput(f"--kubeconfig {kubeconfig}: no such file")
        return Target("kubeconfig", str(path), context)
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        if any(Path(p).expanduser().is_file() for p in listed):
            return Target("kubeconfig", None, context)
        raise BadInput(f"KUBECONFIG={env['KUBECONFIG']}: no such file")
    home = env.get("HOME")
    default = Path(home) / ".kube" / "config" if home else Path.home() / ".kube" / "config"
    if default.is_file():
        return Target("kubeconfig", str(default), context)
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(_SERVICE_ACCOUNT_TOKEN):
        if context:
            raise BadInput(f"--context {context}: no kubeconfig to take it from")
        return Target("in-cluster")
    if context:
        raise BadInput(f"--context {context}: no kubeconfig found (--kubeconfig, KUBECONFIG)")
    if not fallback:
        return None
    return Target(
        "simulate",
        note=(
            "no Kubernetes cluster configured (no --kubeconfig, KUBECONFIG, ~/.kube/config "
            "or service account): simulating, steps run with the local /bin/sh"
        ),
    )


def _fake_cluster() -> Any:
    from buildruntime.testing import FakeCluster

    return FakeCluster(images=set(SIMULATED_IMAGES))


def _kube_cluster(target: Target) -> Any:
    from buildruntime.cluster.kube import KubeCluster

    try:
        if target.kind == "in-cluster":
            return KubeCluster.in_cluster()
        return KubeCluster.from_kubeconfig(target.path, target.context)
    except BuildRuntimeError:
        raise
    except Exception as error:
        where = "in-cluster configuration" if target.kind == "in-cluster" else "kubeconfig"
        if target.path:
            where += f" {target.path}"
        if target.context:
            where += f" (context {target.context})"
        raise BadInput(f"cannot load {where}: {one_line(error)}") from None


@asynccontextmanager
async def open_cluster(target: Target) -> AsyncIterator[Cluster]:
    """The cluster of ``target``, closed on exit."""
    cluster = _fake_cluster() if target.kind == "simulate" else _kube_cluster(target)
    async with cluster:
        yield cluster
