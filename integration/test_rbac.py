"""Least privilege: a build runs, and its worker holds its Lease and reaps a dead
worker's, with nothing more than deploy/rbac.yaml's Role."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from buildruntime import BuildSpec, Runtime, StepSpec
from buildruntime.workers import lease_name, micro_time, render_lease

from .conftest import BUSYBOX, RECOVERY, Target, role_allows, service_account_cluster

pytestmark = pytest.mark.anyio


async def test_a_build_needs_only_the_shipped_role(
    target: Target, cluster_namespace: tuple[str, str] | None
) -> None:
    spec = BuildSpec(
        build_id=f"rbac-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(name="a", image=BUSYBOX, commands=["echo a"], secrets=["token"]),
            StepSpec(name="b", image=BUSYBOX, commands=["echo b", "exit 1"]),
        ],
        # The build's own Secret: created, handed to the pod and deleted with the Role.
        secrets={"token": "rbac-secret-value"},
    )
    if cluster_namespace is None:
        cluster = target.cluster  # FakeCluster has no RBAC: check the requests instead
    else:
        cluster = await service_account_cluster(*cluster_namespace)
    # A dead worker's Lease, last renewed an hour ago: the runtime reaps it on start.
    dead = render_lease(f"dead-{uuid.uuid4().hex[:6]}", target.namespace, 1)
    dead["spec"]["renewTime"] = micro_time(datetime.now(UTC) - timedelta(hours=1))
    await target.create_lease_from_outside(dead)
    before = len(cluster.requests)
    worker = f"rbac-worker-{uuid.uuid4().hex[:6]}"
    try:
        async with Runtime(
            cluster,
            target.namespace,
            pause_image=target.pause_image or "registry.k8s.io/pause:3.10",
            reflector=RECOVERY,
            worker_id=worker,
            lease_duration=2,
            lease_renew_interval=0.5,
        ) as rt:
            with anyio.fail_after(10):
                while await target.read_lease(dead["metadata"]["name"]) is not None:
                    await anyio.sleep(0.1)
            held = await target.read_lease(lease_name(worker))
            assert held is not None
            assert held["spec"]["holderIdentity"] == worker
            with anyio.fail_after(10):  # renewed
                while (await target.read_lease(lease_name(worker)) or held)["spec"][
                    "renewTime"
                ] == held["spec"]["renewTime"]:
                    await anyio.sleep(0.1)
            build = await rt.setup_build(spec)
            await rt.assemble_build(build)
            codes = []
            for step in spec.steps:
                await rt.run_container(build, step.name)
                assert [line async for line in rt.tail_container(build, step.name)] == [
                    step.name.encode()
                ]
                codes.append((await rt.wait_container(build, step.name)).exit_code)
            await rt.remove_build(build)
    finally:
        if cluster is not target.cluster:
            await cluster.aclose()
    assert codes == [0, 1]
    assert await target.read_lease(lease_name(worker)) is None
    used = {(r.verb, r.resource) for r in cluster.requests[before:]}
    assert {("create", "secrets"), ("patch", "secrets"), ("delete", "secrets")} <= used
    # The Lease created, renewed and deleted; the reaper's list and delete.
    assert {
        ("create", "leases"),
        ("patch", "leases"),
        ("list", "leases"),
        ("delete", "leases"),
    } <= used
    assert all(role_allows(verb, resource) for verb, resource in used), used
