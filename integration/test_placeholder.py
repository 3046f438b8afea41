"""A placeholder reported under another tag of its image is still the placeholder: the
node's statuses name it by whichever tag the container runtime resolved."""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec

from .conftest import BUSYBOX, JSON, PAUSE_ALIAS, Target

pytestmark = pytest.mark.anyio


def _statuses(pod: JSON) -> dict[str, JSON]:
    return {s["name"]: s for s in pod.get("status", {}).get("containerStatuses") or []}


async def test_steps_run_on_a_node_that_reports_the_placeholder_by_its_alias(
    target: Target,
) -> None:
    target.require_control("the pause image's second tag")
    spec = BuildSpec(
        build_id=f"alias-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(name="first", image=BUSYBOX, commands=["echo one"]),
            StepSpec(name="second", image=BUSYBOX, commands=["echo two", "exit 4"]),
        ],
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            # The fault is in effect: the status names the placeholder by its alias.
            assert {s["image"] for s in _statuses(pod).values()} == {PAUSE_ALIAS}
            with anyio.fail_after(60):
                await rt.run_container(build, "first")
                assert [line async for line in rt.tail_container(build, "first")] == [b"one"]
                first = await rt.wait_container(build, "first")
                await rt.run_container(build, "second")
                assert [line async for line in rt.tail_container(build, "second")] == [b"two"]
                second = await rt.wait_container(build, "second")
            assert (first.exit_code, first.failure) == (0, None)
            assert second.exit_code == 4
            assert (await rt.inspect_container(build, "second")).exit_code == 4
        finally:
            await rt.remove_build(build)
