"""Where and how the build pod runs: scheduling and security fields and pod_overrides
reach the pod as written; an override of what the runtime relies on is refused."""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import BuildSpec, SpecError, StepSpec

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio


async def test_policy_fields_and_overrides_reach_the_pod(target: Target) -> None:
    runtime_class = f"ci-{uuid.uuid4().hex[:6]}"
    await target.create_runtime_class(runtime_class, "runc")
    spec = BuildSpec(
        build_id=f"policy-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(
                name="whoami",
                image=BUSYBOX,
                commands=["id -u"],
                security_context={"runAsUser": 1234},
            )
        ],
        tolerations=[{"key": "ci.example/dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        runtime_class_name=runtime_class,
        pod_overrides={
            "metadata": {"annotations": {"team.example/owner": "infra"}},
            "spec": {"enableServiceLinks": False},
        },
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            assert {
                "key": "ci.example/dedicated",
                "operator": "Exists",
                "effect": "NoSchedule",
            } in pod["spec"]["tolerations"]
            assert pod["spec"]["runtimeClassName"] == runtime_class
            assert pod["spec"]["enableServiceLinks"] is False
            assert pod["metadata"]["annotations"]["team.example/owner"] == "infra"
            with anyio.fail_after(60):
                await rt.run_container(build, "whoami")
                lines = [line async for line in rt.tail_container(build, "whoami")]
                await rt.wait_container(build, "whoami")
        finally:
            await rt.remove_build(build)
    if target.kind == "cluster":
        assert lines == [b"1234"]  # the step's own security context


async def test_an_override_of_the_step_image_is_refused(target: Target) -> None:
    spec = BuildSpec(
        build_id=f"refused-{uuid.uuid4().hex[:6]}",
        steps=[StepSpec(name="s", image=BUSYBOX, commands=["true"])],
        pod_overrides={"spec": {"containers": [{"name": "s", "image": "evil/image:1"}]}},
    )
    async with target.runtime() as rt:
        with pytest.raises(SpecError, match="must not change the image of step s"):
            await rt.setup_build(spec)
    assert not [r for r in target.requests if r.verb == "create" and r.resource != "leases"]
