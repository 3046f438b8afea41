"""Least privilege: a build runs with nothing more than deploy/rbac.yaml's Role."""

from __future__ import annotations

import uuid

import pytest

from buildruntime import BuildSpec, Runtime, StepSpec

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
    before = len(cluster.requests)
    try:
        async with Runtime(
            cluster,
            target.namespace,
            pause_image=target.pause_image or "registry.k8s.io/pause:3.10",
            reflector=RECOVERY,
        ) as rt:
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
    used = {(r.verb, r.resource) for r in cluster.requests[before:]}
    assert {("create", "secrets"), ("patch", "secrets"), ("delete", "secrets")} <= used
    assert all(role_allows(verb, resource) for verb, resource in used), used
