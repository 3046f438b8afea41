"""A real CI build in one pod: a shared workspace, a claim that outlives the build,
services reached by name and on localhost, a service that dies before it is ready."""

from __future__ import annotations

import random
import uuid

import anyio
import pytest

from buildruntime import BuildSpec, ServiceError, StepResult, StepSpec, Workspace

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _step(name: str, *commands: str, **kwargs: object) -> StepSpec:
    return StepSpec(name=name, image=BUSYBOX, commands=list(commands), **kwargs)  # type: ignore[arg-type]


async def _run_in_order(
    target: Target, spec: BuildSpec, *, detached: tuple[str, ...] = ()
) -> dict[str, tuple[list[bytes], StepResult]]:
    """Start the detached steps, then run the others in order, as an executor does."""
    out: dict[str, tuple[list[bytes], StepResult]] = {}
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(120):
                for name in detached:
                    await rt.run_container(build, name)
                for step in spec.steps:
                    if step.name in detached:
                        continue
                    await rt.run_container(build, step.name)
                    lines = [line async for line in rt.tail_container(build, step.name)]
                    out[step.name] = (lines, await rt.wait_container(build, step.name))
        finally:
            await rt.remove_build(build)
    return out


async def test_steps_share_the_workspace(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("ws"),
        steps=[
            _step("checkout", "mkdir -p src", "echo 'package main' > src/main.go", "pwd"),
            _step("build", "cat src/main.go", 'cat "$CI_WORKSPACE/src/main.go"', "ls"),
            _step("elsewhere", "cd /", 'cat "$CI_WORKSPACE/src/main.go"', working_dir="/tmp"),
        ],
    )
    out = await _run_in_order(target, spec)
    checkout_lines, checkout = out["checkout"]
    assert checkout.exit_code == 0
    assert checkout_lines[0].endswith(b"/workspace")  # the simulation roots it elsewhere
    assert out["build"] == (
        [b"package main", b"package main", b"src"],
        out["build"][1],
    )
    assert out["build"][1].exit_code == 0
    assert out["elsewhere"][0] == [b"package main"]


async def test_a_workspace_on_a_claim_outlives_the_build(target: Target) -> None:
    claim = _id("cache")
    await target.create_claim(claim)
    first = BuildSpec(
        build_id=_id("claim-a"),
        steps=[_step("write", "echo kept > artifact.txt")],
        workspace=Workspace(claim=claim),
    )
    second = BuildSpec(
        build_id=_id("claim-b"),
        steps=[_step("read", "cat artifact.txt")],
        workspace=Workspace(claim=claim),
    )
    assert (await _run_in_order(target, first))["write"][1].exit_code == 0
    lines, result = (await _run_in_order(target, second))["read"]
    assert (lines, result.exit_code) == ([b"kept"], 0)


async def test_a_service_is_reached_by_name_and_on_localhost(target: Target) -> None:
    port = random.randrange(20_000, 40_000)
    spec = BuildSpec(
        build_id=_id("svc"),
        steps=[
            _step(
                "web",
                "mkdir -p www",
                "echo served > www/index.html",
                "echo listening",
                f"exec busybox httpd -f -p {port} -h www",
                detach=True,
                ports=[port],
            ),
            _step("local", f"busybox wget -q -O - http://127.0.0.1:{port}/"),
            _step("named", f"busybox wget -q -O - http://web:{port}/"),
        ],
    )
    if target.kind == "fake":
        # The simulation's steps share the host's resolver: no per-pod host names.
        spec = BuildSpec(build_id=spec.build_id, steps=spec.steps[:2])
    out = await _run_in_order(target, spec, detached=("web",))
    assert out["local"][0] == [b"served"]
    assert out["local"][1].exit_code == 0
    if "named" in out:
        assert out["named"][0] == [b"served"]


async def test_a_service_that_dies_before_it_is_ready_says_why(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("svc-dies"),
        steps=[
            _step(
                "db",
                "echo starting",
                "echo 'cannot open data directory' >&2",
                "exit 3",
                detach=True,
                ports=[5432],
            )
        ],
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(60), pytest.raises(ServiceError) as info:
                await rt.run_container(build, "db")
        finally:
            await rt.remove_build(build)
    error = info.value
    assert error.step == "db"
    assert "exited with code 3 before port 5432 accepted connections" in str(error)
    assert error.message is not None
    assert "starting" in error.message
    assert "cannot open data directory" in error.message
