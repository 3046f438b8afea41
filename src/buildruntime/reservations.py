"""A build pod requests its peak, not its sum.

Every step is a container of the pod from the start, and the scheduler reserves the sum
of all containers' requests; but a build's steps run one at a time, so ten steps asking
for 1 CPU each would make a pod that needs 10 CPUs and never schedules on a 4-CPU node.
So the steps share one reservation: for each resource, the step that asks for the most
keeps its request and every other step asks for an explicit zero (an explicit zero, not
nothing: a container with a limit and no request is given a request equal to its limit).
Limits are untouched: each step still runs under its own. Services (detached steps) run
beside the steps, so theirs add up.

What it means for the pod: its requests are the build's busiest moment; its QoS class is
Burstable (requests below limits), so under node memory pressure a step that uses more
memory than the pod's requests is among the first evicted, as any Burstable pod is.
Steps an executor runs at the same time through the API share the reservation too: give
such builds enough headroom in the largest step's requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from buildruntime.quantities import parse_quantity

Resources = Mapping[str, Mapping[str, str]]


def _effective_requests(resources: Resources | None) -> dict[str, str]:
    """What the API server will request for a container: its requests, and its limits
    where it gives no request (Kubernetes' defaulting)."""
    if not resources:
        return {}
    return {**(resources.get("limits") or {}), **(resources.get("requests") or {})}


def shared_requests(
    steps: Sequence[tuple[str, Resources | None, bool]],
) -> dict[str, dict[str, dict[str, str]]]:
    """Each step's resources as rendered, from ``(name, resources, detached)`` in order:
    the sequential steps' requests shared (see the module docstring)."""
    sequential = [(name, _effective_requests(res)) for name, res, detached in steps if not detached]
    holders: dict[str, str] = {}
    largest: dict[str, Decimal] = {}
    for name, requests in sequential:
        for resource, amount in requests.items():
            value = parse_quantity(amount)
            if resource not in largest or value > largest[resource]:
                largest[resource] = value
                holders[resource] = name
    rendered: dict[str, dict[str, dict[str, str]]] = {}
    for name, resources, detached in steps:
        out = {key: dict(value) for key, value in (resources or {}).items()}
        if not detached and resources:
            # Only a step that declares resources is rewritten: one that declares none
            # requests nothing already (and stays subject to the namespace's defaults).
            requests = dict(resources.get("requests") or {})
            for resource in _effective_requests(resources):
                if holders.get(resource) != name:
                    requests[resource] = "0"
            if requests:
                out["requests"] = requests
        if out:
            rendered[name] = out
    return rendered
