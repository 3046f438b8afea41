"""Timeouts: a step's own, enforced by the runtime whatever the executor waits on, and
the whole build's, enforced by Kubernetes itself (the pod's activeDeadlineSeconds)."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from buildruntime import (
    BuildEvent,
    BuildSpec,
    Failure,
    PodGoneError,
    StepResult,
    StepSpec,
    StepTimeoutError,
)

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio

STOP_BOUND = 25.0
"""A stopped step is seen ended within its timeout plus the pod's 5 s grace period and
the kubelet's reaction to the patch: far less than this, far less than its `sleep`."""


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _step(name: str, *commands: str, **kwargs: object) -> StepSpec:
    return StepSpec(name=name, image=BUSYBOX, commands=list(commands), **kwargs)  # type: ignore[arg-type]


def _hung_build(prefix: str) -> BuildSpec:
    return BuildSpec(
        build_id=_id(prefix),
        steps=[
            _step("hung", "echo before", "sleep 120", "echo never", timeout=2),
            _step("after", "echo after"),
        ],
    )


async def test_tail_then_wait_ends_at_the_timeout(target: Target) -> None:
    """The README's order (run → tail → wait): the tail ends after the last line the
    step printed, wait raises, inspect says terminated by TIMEOUT, the build goes on."""
    spec = _hung_build("tmo-tail")
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        events: list[BuildEvent] = []

        async def collect() -> None:
            async for event in build.events():
                events.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await rt.assemble_build(build)
            try:
                await rt.run_container(build, "hung")
                began = time.monotonic()
                with anyio.fail_after(STOP_BOUND):
                    lines = [line async for line in rt.tail_container(build, "hung")]
                    with pytest.raises(StepTimeoutError) as info:
                        await rt.wait_container(build, "hung")
                assert lines == [b"before"]
                assert time.monotonic() - began >= 2.0
                assert info.value.step == "hung"
                assert "timeout of 2s" in str(info.value)
                stopped = await rt.inspect_container(build, "hung")
                assert stopped.state == "terminated"
                assert stopped.failure is Failure.TIMEOUT
                assert stopped.started_at is not None
                assert stopped.finished_at is not None
                # The pod lives on: the next step runs as usual.
                await rt.run_container(build, "after")
                assert [line async for line in rt.tail_container(build, "after")] == [b"after"]
                result = await rt.wait_container(build, "after")
                assert (result.exit_code, result.failure) == (0, None)
            finally:
                await rt.remove_build(build)
    failed = [e for e in events if e.kind == "failed"]
    assert [(e.step, e.failure) for e in failed] == [("hung", Failure.TIMEOUT)]


async def test_wait_first_then_tail(target: Target) -> None:
    """run → wait → tail: the wait raises once the step is stopped, and the tail still
    gives every line the step printed, then ends."""
    spec = _hung_build("tmo-wait")
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            await rt.run_container(build, "hung")
            with anyio.fail_after(STOP_BOUND):
                with pytest.raises(StepTimeoutError):
                    await rt.wait_container(build, "hung")
                assert [line async for line in rt.tail_container(build, "hung")] == [b"before"]
            assert (await rt.inspect_container(build, "hung")).failure is Failure.TIMEOUT
        finally:
            await rt.remove_build(build)


async def test_nobody_waiting_the_step_is_stopped_all_the_same(target: Target) -> None:
    """An executor that only started the step: at the deadline the runtime stops it."""
    spec = _hung_build("tmo-none")
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            await rt.run_container(build, "hung")
            with anyio.fail_after(STOP_BOUND):
                while (await rt.inspect_container(build, "hung")).state != "terminated":
                    await anyio.sleep(0.2)
            result = await rt.inspect_container(build, "hung")
            assert result.failure is Failure.TIMEOUT
            assert result.reason == "Timeout"
            # On the node, the container runs the placeholder again: the step is gone.
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            images = {c["name"]: c["image"] for c in pod["spec"]["containers"]}
            assert images["hung"] == build.pod_manifest["spec"]["containers"][0]["image"]
        finally:
            await rt.remove_build(build)


async def test_a_step_that_ends_in_time_is_untouched(target: Target) -> None:
    spec = BuildSpec(build_id=_id("tmo-ok"), steps=[_step("quick", "echo quick", timeout=30)])
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        try:
            await rt.run_container(build, "quick")
            assert [line async for line in rt.tail_container(build, "quick")] == [b"quick"]
            result = await rt.wait_container(build, "quick")
            assert (result.exit_code, result.failure) == (0, None)
            patches = [r for r in target.requests if r == ("patch", "pods")]
            assert len(patches) == 1, "a step that ended in time is never stopped"
        finally:
            await rt.remove_build(build)


async def test_build_timeout_is_the_pods_active_deadline(target: Target) -> None:
    """Kubernetes ends the whole build at its deadline, worker or no worker."""
    spec = BuildSpec(build_id=_id("deadline"), steps=[_step("long", "sleep 120")], timeout=3)
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        assert build.pod_manifest["spec"]["activeDeadlineSeconds"] == 3
        await rt.assemble_build(build)
        try:
            await rt.run_container(build, "long")
            with anyio.fail_after(60):
                # The pod's failure may reach the cache before the step's termination
                # does: then the news is the pod's, with the kubelet's reason.
                outcome: object
                try:
                    outcome = await rt.wait_container(build, "long")
                except PodGoneError as error:
                    outcome = error
            if isinstance(outcome, PodGoneError):
                assert outcome.reason == "DeadlineExceeded"
            else:
                assert isinstance(outcome, StepResult)
                assert outcome.failure is Failure.DEADLINE_EXCEEDED
            assert (await rt.inspect_container(build, "long")).failure is Failure.DEADLINE_EXCEEDED
            pod = await target.read_pod(build.pod_name)
            assert pod is not None
            assert pod["status"]["phase"] == "Failed"
            assert pod["status"]["reason"] == "DeadlineExceeded"
        finally:
            await rt.remove_build(build)
