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

__all__ = ["Target", "choose_target", "open_cluster", "server_of"]

_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class Target:
    """Which cluster to use: the simulation, a kubeconfig, or the one we run in."""

    kind: Literal["simulate", "kubeconfig", "in-cluster"]
    path: str | None = None
    context: str | None = None
    note: str | None = None
    """Said on stderr before running (the fallback to the simulation)."""


def configured_cluster(
    kubeconfig: str | None, context: str | None, *, otherwise: str = ""
) -> Target:
    """The configured cluster of a command that needs a real one (no simulation to fall
    back to); BadInput naming what was looked for, then ``otherwise``, when there is none."""
    target = choose_target(simulate=False, kubeconfig=kubeconfig, context=context, fallback=False)
    if target is None:
        raise BadInput(
            "no Kubernetes cluster configured (no --kubeconfig, KUBECONFIG, ~/.kube/config "
            f"or service account){otherwise}"
        )
    return target


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


def _fake_cluster(pause_image: str | None, placeholder_image: str | None) -> Any:
    from buildruntime.testing import FakeCluster

    # The simulated node must know the placeholders for what they are: images that run
    # nothing (and, for placeholder_image, start as a step's command).
    settings: dict[str, Any] = {"placeholder_image": placeholder_image}
    if pause_image is not None:
        settings["pause_image"] = pause_image
    # None: every valid image name is present, as a user of --simulate expects
    # (ubuntu:22.04 is not "not found" because nobody listed it).
    return FakeCluster(images=None, **settings)


def _kube_cluster(target: Target, api_timeout: float | None) -> Any:
    from buildruntime.cluster.kube import KubeCluster

    settings: dict[str, Any] = {}
    if api_timeout is not None:
        # One request (or a stream's connect) must not outlast the whole wait for the
        # API server: a host that drops packets would hold a connect for 30 s.
        settings["request_timeout"] = min(30.0, api_timeout)
    try:
        if target.kind == "in-cluster":
            return KubeCluster.in_cluster(**settings)
        return KubeCluster.from_kubeconfig(target.path, target.context, **settings)
    except BuildRuntimeError:
        raise
    except Exception as error:
        where = "in-cluster configuration" if target.kind == "in-cluster" else "kubeconfig"
        if target.path:
            where += f" {target.path}"
        if target.context:
            where += f" (context {target.context})"
        raise BadInput(f"cannot load {where}: {one_line(error)}") from None


def server_of(cluster: object) -> str | None:
    """The API server's address of a KubeCluster (None for the simulation)."""
    server = getattr(cluster, "server", None)
    return server if isinstance(server, str) and server else None


@asynccontextmanager
async def open_cluster(
    target: Target,
    *,
    pause_image: str | None = None,
    placeholder_image: str | None = None,
    api_timeout: float | None = None,
) -> AsyncIterator[Cluster]:
    """The cluster of ``target``, closed on exit. ``pause_image``, ``placeholder_image``:
    the placeholders the simulation knows; ``api_timeout``: the bound of one request to
    a real cluster."""
    cluster = (
        _fake_cluster(pause_image, placeholder_image)
        if target.kind == "simulate"
        else _kube_cluster(target, api_timeout)
    )
    async with cluster:
        yield cluster
