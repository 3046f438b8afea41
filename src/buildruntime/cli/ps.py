"""``buildruntime ps``: the namespace's builds, one line each: id, the worker that holds
it, whether that worker's Lease is alive, its age and each step's state, from one list
of the build pods and one of the workers' Leases."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import anyio

from buildruntime.adoption import holder, released_by
from buildruntime.cli.console import Console
from buildruntime.cli.exits import EXIT_OK
from buildruntime.cli.target import Target, configured_cluster, open_cluster
from buildruntime.cluster.port import JSON
from buildruntime.diagnosis import parse_time
from buildruntime.labels import managed_selector
from buildruntime.spec import PAUSE_ANNOTATION, STEPS_ANNOTATION
from buildruntime.workers import declared_duration, last_renewed, lease_name

COLUMNS = ("BUILD", "WORKER", "LEASE", "AGE", "STEPS")


def step_states(pod: JSON) -> list[tuple[str, str]]:
    """Each step's state as the pod shows it: ``waiting`` (not started: its container
    runs the placeholder), ``starting`` (its image patched in, not running yet),
    ``running``, ``exit N`` (ended), ``stopped`` (stopped at its timeout)."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    placeholder = annotations.get(PAUSE_ANNOTATION)
    names = [n for n in (annotations.get(STEPS_ANNOTATION) or "").split(",") if n]
    images = {c.get("name"): c.get("image") for c in spec.get("containers") or []}
    statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("containerStatuses") or []}
    states = []
    for name in names:
        status = statuses.get(name) or {}
        restarts = int(status.get("restartCount") or 0)
        state = status.get("state") or {}
        if images.get(name) == placeholder:
            # Under restartPolicy Never only the image patches restart a container:
            # there and back again is a step stopped at its timeout.
            states.append((name, "stopped" if restarts >= 2 else "waiting"))
        elif restarts == 0 or "waiting" in state:
            states.append((name, "starting"))
        elif "terminated" in state:
            states.append((name, f"exit {state['terminated'].get('exitCode')}"))
        else:
            states.append((name, "running"))
    return states


def age(pod: JSON, now: datetime) -> str:
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        return "?"
    seconds = int((now - created).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def lease_state(leases: dict[str, JSON], worker: str | None, now: datetime) -> str:
    """``alive`` (renewed within its duration, by its holder's clock), ``lapsed`` (not
    renewed for longer: the worker is gone, the reaper will delete it) or ``gone``."""
    lease = leases.get(lease_name(worker)) if worker else None
    if lease is None:
        return "gone"
    renewed = last_renewed(lease)
    if renewed is None or (now - renewed).total_seconds() > declared_duration(lease):
        return "lapsed"
    return "alive"


def rows(
    pods: list[JSON], now: datetime, leases: dict[str, JSON] | None = None
) -> list[tuple[str, ...]]:
    """One row per pod; ``leases``: the namespace's worker Leases by name."""
    out: list[tuple[str, ...]] = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", "")):
        name = (pod.get("metadata") or {}).get("name", "?")
        lease = lease_state(leases or {}, holder(pod), now)
        worker = holder(pod) or "-"
        left = released_by(pod)
        if left is not None:
            worker = f"{worker} (released)"
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            worker = f"{worker} (deleting)"
        steps = " ".join(f"{step}:{state}" for step, state in step_states(pod))
        out.append((name, worker, lease, age(pod, now), steps))
    return out


def table(lines: list[tuple[str, ...]]) -> list[str]:
    everything = [COLUMNS, *lines]
    widths = [max(len(line[i]) for line in everything) for i in range(len(COLUMNS) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(line, widths, strict=False)), line[-1]]
        )
        for line in everything
    ]


async def _ps_command(target: Target, namespace: str, console: Console) -> int:
    async with open_cluster(target) as cluster:
        listed: dict[str, Any] = await cluster.list(
            "pods", namespace, label_selector=managed_selector(), resource_version=None
        )
        workers = await cluster.list_leases(namespace, label_selector=managed_selector())
    leases = {lease["metadata"]["name"]: lease for lease in workers.get("items") or []}
    for line in table(rows(listed.get("items") or [], datetime.now(UTC), leases)):
        console.line(line.rstrip())
    return EXIT_OK


def cmd_ps(args: argparse.Namespace, console: Console) -> int:
    target = configured_cluster(args.kubeconfig, args.context)
    return anyio.run(_ps_command, target, args.namespace, console)
