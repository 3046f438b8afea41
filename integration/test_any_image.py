"""Any image: a step's commands run whatever its image's ENTRYPOINT once the runtime starts
steps on buildruntime's own placeholder (``placeholder_image``); a step without commands
runs the image's ENTRYPOINT and CMD; a step with an entrypoint runs exactly that. On the
pause placeholder (the default) commands reach the image as args, as documented.

ENTRYPOINT_IMAGE is busybox with ``ENTRYPOINT ["/bin/echo", "entrypoint-ran"]`` and
``CMD ["with-default-cmd"]``, built by integration/cluster/images/build (and configured
the same on FakeCluster's node): whatever reaches its ENTRYPOINT is echoed back.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import (
    BuildSpec,
    ContainerCreateError,
    Failure,
    StepResult,
    StepSpec,
    StepTimeoutError,
)

from .conftest import BUSYBOX, ENTRYPOINT_IMAGE, PLACEHOLDER_IMAGE, Target

pytestmark = pytest.mark.anyio


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def _run_steps(
    target: Target, steps: list[StepSpec], **settings: object
) -> dict[str, tuple[list[bytes], StepResult]]:
    """Run every step in order; each step's lines and result."""
    spec = BuildSpec(build_id=_id("img"), steps=steps)
    out: dict[str, tuple[list[bytes], StepResult]] = {}
    async with target.runtime(**settings) as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(120):
                for step in steps:
                    await rt.run_container(build, step.name)
                    lines = [line async for line in rt.tail_container(build, step.name)]
                    out[step.name] = (lines, await rt.wait_container(build, step.name))
        finally:
            await rt.remove_build(build)
    return out


async def test_commands_replace_the_image_entrypoint(target: Target) -> None:
    out = await _run_steps(
        target,
        [
            StepSpec(
                name="commands",
                image=ENTRYPOINT_IMAGE,
                commands=[
                    "echo from-commands $((40 + 2))",
                    '[ "$(pwd)" = "$CI_WORKSPACE" ] && echo in the workspace',
                ],
            ),
            # The same build's plugin step still runs the image's ENTRYPOINT and CMD.
            StepSpec(name="plugin", image=ENTRYPOINT_IMAGE),
            # And an image without an ENTRYPOINT runs its commands as before.
            StepSpec(name="plain", image=BUSYBOX, commands=["echo plain", "exit 4"]),
        ],
        placeholder_image=PLACEHOLDER_IMAGE,
    )
    lines, result = out["commands"]
    assert lines == [b"from-commands 42", b"in the workspace"]
    assert result.exit_code == 0
    lines, result = out["plugin"]
    assert lines == [b"entrypoint-ran with-default-cmd"]
    assert result.exit_code == 0
    lines, result = out["plain"]
    assert lines == [b"plain"]
    assert result.exit_code == 4


async def test_a_custom_entrypoint_runs_exactly_that(target: Target) -> None:
    out = await _run_steps(
        target,
        [
            # An entrypoint with commands: the commands are its last argument, as written.
            StepSpec(
                name="with-commands",
                image=ENTRYPOINT_IMAGE,
                entrypoint=["/usr/bin/env", "sh", "-c"],
                commands=["false", "echo no errexit unless asked"],
            ),
            # An entrypoint alone is the whole command line.
            StepSpec(
                name="alone",
                image=ENTRYPOINT_IMAGE,
                entrypoint=["/bin/sh", "-c", "echo exactly $0 $1; exit 3", "this", "line"],
            ),
        ],
        placeholder_image=PLACEHOLDER_IMAGE,
    )
    assert out["with-commands"][0] == [b"no errexit unless asked"]
    assert out["with-commands"][1].exit_code == 0
    assert out["alone"][0] == [b"exactly this line"]
    assert out["alone"][1].exit_code == 3


async def test_on_the_pause_placeholder_commands_reach_the_entrypoint(target: Target) -> None:
    """What the README says a user with only the pause image gets: plugin steps and images
    without an ENTRYPOINT work; an image with one receives the commands as arguments."""
    out = await _run_steps(
        target,
        [
            StepSpec(name="plugin", image=ENTRYPOINT_IMAGE),
            StepSpec(name="commands", image=ENTRYPOINT_IMAGE, commands=["echo hi"]),
            StepSpec(name="plain", image=BUSYBOX, commands=["echo plain"]),
        ],
    )
    assert out["plugin"][0] == [b"entrypoint-ran with-default-cmd"]
    assert out["commands"][0] == [b"entrypoint-ran /bin/sh -c set -e", b"echo hi"]
    assert out["plain"][0] == [b"plain"]


async def test_a_timed_out_step_goes_back_to_the_placeholder(target: Target) -> None:
    """The timeout keeper patches the step's image back to the placeholder, which must
    start as the step's command and sleep; the next step then runs."""
    spec = BuildSpec(
        build_id=_id("img-timeout"),
        steps=[
            StepSpec(
                name="hung", image=ENTRYPOINT_IMAGE, commands=["echo up", "sleep 120"], timeout=2
            ),
            StepSpec(name="after", image=ENTRYPOINT_IMAGE, commands=["echo after"]),
        ],
    )
    async with target.runtime(placeholder_image=PLACEHOLDER_IMAGE) as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(90):
                await rt.run_container(build, "hung")
                hung = [line async for line in rt.tail_container(build, "hung")]
                with pytest.raises(StepTimeoutError):
                    await rt.wait_container(build, "hung")
                assert (await rt.inspect_container(build, "hung")).failure == Failure.TIMEOUT
                await rt.run_container(build, "after")
                after = [line async for line in rt.tail_container(build, "after")]
                assert (await rt.wait_container(build, "after")).exit_code == 0
        finally:
            await rt.remove_build(build)
    assert hung == [b"up"]
    assert after == [b"after"]


async def test_a_placeholder_that_cannot_start_as_a_command_fails_assemble(
    target: Target,
) -> None:
    """The pause image given as placeholder_image: it has no /bin/sh, so every step's
    container fails to start; assemble_build says so, naming the image and the setting,
    in the container runtime's words."""
    pause = target.pause_image or "registry.k8s.io/pause:3.10"
    spec = BuildSpec(
        build_id=_id("img-bad"), steps=[StepSpec(name="s", image=BUSYBOX, commands=["true"])]
    )
    async with target.runtime(placeholder_image=pause) as rt:
        build = await rt.setup_build(spec)
        try:
            with anyio.fail_after(90), pytest.raises(ContainerCreateError) as raised:
                await rt.assemble_build(build)
        finally:
            await rt.remove_build(build)
    message = str(raised.value)
    assert repr(pause) in message
    assert "placeholder_image" in message
    assert raised.value.reason == "StartError"
    assert '"/bin/sh"' in (raised.value.message or "")
