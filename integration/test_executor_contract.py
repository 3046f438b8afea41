"""What an executor written from the README relies on: errors that leave the runtime as
themselves, a cancelled build that releases everything, usage mistakes named as such,
plugin steps, and a placeholder that cannot be pulled named as the build's problem."""

from __future__ import annotations

import uuid

import anyio
import pytest

from buildruntime import (
    BuildSpec,
    ImagePullError,
    SpecError,
    StepSpec,
    UsageError,
)

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _step(name: str, *commands: str, **kwargs: object) -> StepSpec:
    return StepSpec(name=name, image=BUSYBOX, commands=list(commands), **kwargs)  # type: ignore[arg-type]


async def test_the_blocks_own_error_leaves_the_runtime_as_itself(target: Target) -> None:
    async def use_the_runtime() -> None:
        async with target.runtime():
            raise ValueError("the executor's own")

    with pytest.raises(ValueError, match="the executor's own") as info:
        await use_the_runtime()
    assert type(info.value) is ValueError


async def test_a_step_error_leaves_the_runtime_as_itself(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("raise"),
        steps=[StepSpec(name="pull", image="localhost/no-such:1", commands=["true"])],
    )

    async def executor() -> None:
        async with target.runtime() as rt:
            build = await rt.setup_build(spec)
            await rt.assemble_build(build)
            try:
                with anyio.fail_after(60):
                    await rt.run_container(build, "pull")
            finally:
                await rt.remove_build(build)

    with pytest.raises(ImagePullError) as info:
        await executor()
    assert type(info.value) is ImagePullError
    assert info.value.step == "pull"
    assert await target.read_pod(spec.pod_name) is None


async def test_a_cancelled_build_releases_everything(target: Target) -> None:
    """The README's pattern under a cancel scope: remove_build in `finally` finishes its
    cleanup although its caller is cancelled, and the build id is free again."""
    spec = BuildSpec(build_id=_id("cancel"), steps=[_step("long", "echo started", "sleep 60")])
    async with target.runtime() as rt:
        with anyio.move_on_after(60) as outer:
            with anyio.CancelScope() as scope:
                build = await rt.setup_build(spec)
                await rt.assemble_build(build)
                try:
                    await rt.run_container(build, "long")
                    async for line in rt.tail_container(build, "long"):
                        assert line == b"started"
                        scope.cancel()  # the executor's job is cancelled mid-step
                finally:
                    await rt.remove_build(build)
            assert scope.cancelled_caught
        assert not outer.cancelled_caught
        assert await target.read_pod(spec.pod_name) is None
        if target.kind == "fake":
            assert target.cluster.open_watches == 0
            assert target.cluster.open_log_streams == 0
        # The id is free: the same build can be set up again at once.
        again = await rt.setup_build(spec)
        await rt.remove_build(again)


async def test_usage_mistakes_raise_usage_errors_at_once(target: Target) -> None:
    spec = BuildSpec(build_id=_id("usage"), steps=[_step("a", "echo a"), _step("b", "echo b")])
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        with pytest.raises(UsageError, match="not assembled yet"):
            await rt.run_container(build, "a")
        with pytest.raises(UsageError, match="already set up"):
            await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            with anyio.fail_after(5):
                with pytest.raises(UsageError, match="call run_container first") as info:
                    rt.tail_container(build, "b")
                assert info.value.step == "b"
                with pytest.raises(UsageError, match="call run_container first"):
                    await rt.wait_container(build, "b")
            with pytest.raises(SpecError, match="no step 'c'"):
                await rt.run_container(build, "c")
            await rt.run_container(build, "a")
            assert [line async for line in rt.tail_container(build, "a")] == [b"a"]
        finally:
            await rt.remove_build(build)
        for call in (rt.run_container, rt.wait_container):
            with pytest.raises(UsageError, match="was removed") as removed:
                await call(build, "a")
            assert not isinstance(removed.value, SpecError)
            assert removed.value.build_id == spec.build_id


async def test_plugin_steps_run_the_images_own_program(target: Target) -> None:
    """No commands: the image's ENTRYPOINT and CMD run (busybox: `sh`, with no input,
    ends at once); an entrypoint and no commands: exactly that entrypoint."""
    spec = BuildSpec(
        build_id=_id("plugin"),
        steps=[
            _step("default"),
            _step("given", entrypoint=["echo", "plugin", "$HOME-not-expanded"]),
        ],
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        containers = build.pod_manifest["spec"]["containers"]
        assert "args" not in containers[0]
        assert "command" not in containers[0]
        await rt.assemble_build(build)
        try:
            for name in ("default", "given"):
                await rt.run_container(build, name)
            with anyio.fail_after(30):
                assert [line async for line in rt.tail_container(build, "default")] == []
                assert [line async for line in rt.tail_container(build, "given")] == [
                    b"plugin $HOME-not-expanded"
                ]
                for name in ("default", "given"):
                    result = await rt.wait_container(build, name)
                    assert (result.exit_code, result.failure) == (0, None)
        finally:
            await rt.remove_build(build)


async def test_a_placeholder_that_cannot_be_pulled_fails_the_assemble(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("nopause"),
        steps=[_step("a", "echo a")],
        pause_image="localhost/no-such-pause:3.10",
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        with anyio.fail_after(90), pytest.raises(ImagePullError) as info:
            await rt.assemble_build(build)
    error = info.value
    assert error.step is None
    assert "placeholder image 'localhost/no-such-pause:3.10'" in str(error)
    assert "pause_image" in str(error)
    assert error.reason in ("ErrImagePull", "ImagePullBackOff")
    with anyio.fail_after(30):
        await target.pod_gone(spec.pod_name)
