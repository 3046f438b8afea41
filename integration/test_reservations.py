"""A build pod requests its peak, not its sum: ten steps of 1 CPU each fit a node with
two, and each step still runs under its own limit."""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio

CPU_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
"""cgroup v1 (this machine's): 100000 per CPU of limit over the 100 ms period."""
CPU_MAX = "/sys/fs/cgroup/cpu.max"
"""cgroup v2 (a kind node on a current Linux): the quota, then the period."""


async def test_ten_one_cpu_steps_schedule_on_a_two_cpu_node(target: Target) -> None:
    spec = BuildSpec(
        build_id=f"peak-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(
                name=f"s{i}",
                image=BUSYBOX,
                commands=[
                    f"cat {CPU_QUOTA} 2>/dev/null || cut -d' ' -f1 {CPU_MAX} 2>/dev/null"
                    " || echo no-cgroup"
                ],
                resources={"requests": {"cpu": "1"}, "limits": {"cpu": "1", "memory": "64Mi"}},
            )
            for i in range(10)
        ],
    )
    async with target.runtime(schedule_timeout=30) as rt:
        build = await rt.setup_build(spec)
        containers = build.pod_manifest["spec"]["containers"]
        cpu = [c["resources"]["requests"]["cpu"] for c in containers]
        assert cpu == ["1"] + ["0"] * 9, "the first of equals holds the reservation"
        assert all(c["resources"]["limits"] == {"cpu": "1", "memory": "64Mi"} for c in containers)
        await rt.assemble_build(build)  # the sum (10 CPUs) would never schedule here
        try:
            quotas = []
            with anyio.fail_after(120):
                for step in spec.steps:
                    await rt.run_container(build, step.name)
                    quotas += [line async for line in rt.tail_container(build, step.name)]
                    assert (await rt.wait_container(build, step.name)).exit_code == 0
        finally:
            await rt.remove_build(build)
    if target.kind == "cluster":
        # Each step's own limit, whatever it requests.
        assert quotas == [b"100000"] * 10


async def test_the_sum_of_the_requests_would_not_schedule(target: Target) -> None:
    """The control: one container asking for more than the node has is Unschedulable."""
    spec = BuildSpec(
        build_id=f"toobig-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(
                name="big",
                image=BUSYBOX,
                commands=["true"],
                resources={"requests": {"cpu": "10"}},
            )
        ],
    )
    from buildruntime import SchedulingError

    async with target.runtime(schedule_timeout=5) as rt:
        build = await rt.setup_build(spec)
        with pytest.raises(SchedulingError, match="Insufficient cpu"):
            await rt.assemble_build(build)
