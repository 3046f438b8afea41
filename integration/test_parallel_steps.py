"""Two steps of one build at the same time, through the Runtime API.

A CI executor that runs a DAG (Woodpecker's and Drone's ``depends_on``) calls
``run_container``, ``tail_container`` and ``wait_container`` for independent steps
concurrently. The runtime promises that this works: each step's lines and result are its
own, and the steps really overlap. Containers of one pod share no filesystem here (no
workspace volume yet), so the overlap is proven by timing rather than by a marker file.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import anyio
import pytest

from buildruntime import BuildSpec, Failure, StepResult, StepSpec
from buildruntime.build import Build
from buildruntime.events import BuildEvent
from buildruntime.runtime import Runtime

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio

SLEEP = 4
"""Seconds each step sleeps: run one after the other they would not overlap at all."""
BOUND = 120


@dataclass
class Ran:
    """What the executor saw of one step."""

    lines: list[bytes]
    result: StepResult
    started: float
    """Monotonic clock when ``run_container`` returned (the step image runs)."""
    ended: float
    """Monotonic clock when ``wait_container`` returned."""


async def _run_step(rt: Runtime, build: Build, name: str, into: dict[str, Ran]) -> None:
    await rt.run_container(build, name)
    started = time.monotonic()
    lines = [line async for line in rt.tail_container(build, name)]
    result = await rt.wait_container(build, name)
    into[name] = Ran(lines, result, started, time.monotonic())


async def test_two_steps_of_one_build_run_at_the_same_time(target: Target) -> None:
    spec = BuildSpec(
        build_id=f"par-{uuid.uuid4().hex[:6]}",
        steps=[
            StepSpec(
                name="left",
                image=BUSYBOX,
                commands=["echo left one", f"sleep {SLEEP}", "echo left two"],
            ),
            StepSpec(
                name="right",
                image=BUSYBOX,
                commands=["echo right one", f"sleep {SLEEP}", "echo right two", "exit 4"],
            ),
        ],
    )
    ran: dict[str, Ran] = {}
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        with anyio.fail_after(BOUND):
            await rt.assemble_build(build)
            try:
                async with anyio.create_task_group() as tg:
                    for step in spec.steps:
                        tg.start_soon(_run_step, rt, build, step.name, ran)
            finally:
                await rt.remove_build(build)
        events = [event async for event in build.events()]

    left, right = ran["left"], ran["right"]
    # Each step's own lines, whole and in order, and its own result.
    assert left.lines == [b"left one", b"left two"]
    assert right.lines == [b"right one", b"right two"]
    assert (left.result.step, left.result.exit_code, left.result.failure) == ("left", 0, None)
    assert (right.result.step, right.result.exit_code, right.result.failure) == (
        "right",
        4,
        Failure.APP_ERROR,
    )
    # They overlapped, by this process's clock: each ran from its run_container's return
    # to its wait's, and for at least half their sleep at the same time. (The total
    # says less: on a real node each container start takes a second or two, and the
    # kubelet starts the second one a sync later.)
    overlap = min(left.ended, right.ended) - max(left.started, right.started)
    assert overlap >= SLEEP / 2, (
        f"the steps overlapped {overlap:.1f}s: "
        f"left {left.started:.1f}-{left.ended:.1f}, right {right.started:.1f}-{right.ended:.1f}"
    )
    # And by the kubelet's (whole seconds).
    windows = [(r.result.started_at, r.result.finished_at) for r in (left, right)]
    (left_start, left_end), (right_start, right_end) = windows
    assert left_start is not None
    assert left_end is not None
    assert right_start is not None
    assert right_end is not None
    assert left_start < right_end
    assert right_start < left_end
    # The build's events carry each step's own story.
    assert _step_kinds(events, "left") >= {"started", "completed"}
    assert "failed" not in _step_kinds(events, "left")
    assert _step_kinds(events, "right") >= {"started", "failed"}
    failed = [e for e in events if e.step == "right" and e.kind == "failed"]
    assert [(e.failure, e.exit_code) for e in failed] == [(Failure.APP_ERROR, 4)]
    completed = [e for e in events if e.step == "left" and e.kind == "completed"]
    assert [e.exit_code for e in completed] == [0]
    assert all(e.build_id == spec.build_id for e in events)


def _step_kinds(events: list[BuildEvent], step: str) -> set[str]:
    return {event.kind for event in events if event.step == step}
