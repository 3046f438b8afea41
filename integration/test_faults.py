"""The fault matrix against a real API server: connections cut, refused and stalled by a
TCP proxy between the client and the API server (on FakeCluster: its own faults).

Each test compares what the user of the API observed (every log line, every result)
with what the steps printed and how they exited: the same lines, once, in order."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec
from buildruntime.testing.chaos import ChaosCluster

from .conftest import BUSYBOX, RECOVERY, Target

pytestmark = pytest.mark.anyio


def _ticker(name: str, count: int, pause: float) -> StepSpec:
    script = f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo {name}-$i; sleep {pause}; done"
    return StepSpec(name=name, image=BUSYBOX, commands=[script])


async def _build_under(
    target: Target,
    fault: Callable[[], Awaitable[None]],
    *,
    count: int,
    pause: float,
    **settings: object,
) -> None:
    spec = BuildSpec(
        build_id=f"fault-{uuid.uuid4().hex[:6]}",
        steps=[_ticker("a", count, pause), _ticker("b", count, pause)],
    )
    seen: dict[str, tuple[list[bytes], int | None]] = {}
    async with target.runtime(**settings) as rt, anyio.create_task_group() as faults:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        faults.start_soon(fault)
        for step in spec.steps:
            await rt.run_container(build, step.name)
            lines = [line async for line in rt.tail_container(build, step.name)]
            seen[step.name] = (lines, (await rt.wait_container(build, step.name)).exit_code)
        faults.cancel_scope.cancel()
        await rt.remove_build(build)
    assert seen == {
        name: ([f"{name}-{i}".encode() for i in range(1, count + 1)], 0) for name in ("a", "b")
    }


@pytest.mark.slow
async def test_connections_cut_every_two_seconds_through_a_sixty_second_build(
    target: Target,
) -> None:
    cuts = 0

    async def cut_often() -> None:
        nonlocal cuts
        while True:
            await anyio.sleep(2)
            target.cut_connections()
            cuts += 1

    await _build_under(target, cut_often, count=300, pause=0.1)
    assert cuts >= 25


async def test_log_streams_cut_mid_stream_repeatedly(target: Target) -> None:
    async def cut() -> None:
        while True:
            await anyio.sleep(0.7)
            target.cut_connections()

    await _build_under(target, cut, count=80, pause=0.05)


@pytest.mark.slow
async def test_api_unreachable_for_thirty_seconds_while_steps_run_and_finish(
    target: Target,
) -> None:
    async def outage() -> None:
        await anyio.sleep(1)
        target.refuse_connections(30)

    started = anyio.current_time()
    # Each step prints for ~20 s: the first ends during the outage, the second after.
    await _build_under(target, outage, count=100, pause=0.2, api_timeout=90)
    assert anyio.current_time() - started >= 30


async def test_a_stalled_watch_is_detected_by_its_silence(target: Target) -> None:
    chaos = ChaosCluster(target.cluster, stall_pods_watch_after=2)
    original = target.cluster
    target.cluster = chaos
    try:
        await _build_under(
            target,
            anyio.sleep_forever,
            count=20,
            pause=0.05,
            reflector=dataclasses.replace(RECOVERY, watch_idle_timeout=2.0),
        )
    finally:
        target.cluster = original
    assert chaos.stalls == 1


async def test_duplicated_and_reordered_watch_events(target: Target) -> None:
    chaos = ChaosCluster(target.cluster, duplicate=True, reorder=True)
    original = target.cluster
    target.cluster = chaos
    try:
        await _build_under(target, anyio.sleep_forever, count=10, pause=0.01)
    finally:
        target.cluster = original
