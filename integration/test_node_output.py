"""A step that prints a lot and exits at once loses no output, on the node or on its way.

The container runtime copies a container's stdout into the node's log file while the
process runs; a process that writes fast and exits at once leaves the runtime with output
still in the pipe when the exit is seen. Debian's containerd 1.6.20 / runc 1.1.5 cut it
there (a `seq 1 200000` step kept 189,000-194,000 lines, the last cut mid-number); the
local cluster's node runs containerd 2.4 / runc 1.5 (integration/cluster/build-node).
Each step's output is checked twice: in the node's own log file (what the runtime
stored; on the local cluster and FakeCluster, whose files the tests can read) and through
``tail_container`` (what the runtime read back from the API).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec
from buildruntime.build import Build
from buildruntime.runtime import Runtime

from .conftest import BUSYBOX, Target

pytestmark = pytest.mark.anyio

LINES = 200_000
BUILDS = 10
STEPS_PER_BUILD = 10
LINES_PER_CONCURRENT_STEP = 20_000
"""100 steps x 20,000 lines: 2 million lines in all, each step about 110 KB of output, far
more than a pipe holds when its process exits."""


def _numbers(count: int) -> list[bytes]:
    return [str(n).encode() for n in range(1, count + 1)]


def _missing(lines: list[bytes] | None, count: int) -> str:
    """What a wrong log lacks, briefly (a 200,000-line diff helps nobody)."""
    if lines is None:
        return "not readable here"
    last = lines[-1] if lines else None
    return f"{len(lines)} lines of {count}, the last {last!r}"


async def _step_output(
    rt: Runtime,
    target: Target,
    build: Build,
    step: str,
    mark: Callable[[str], None] = lambda call: None,
) -> tuple[list[bytes], list[bytes] | None, int | None]:
    """The step's lines through tail_container and in the node's file, and its exit;
    ``mark`` is told each call before it is made."""
    mark("run_container")
    await rt.run_container(build, step)
    mark("tail_container")
    tailed = [line async for line in rt.tail_container(build, step)]
    mark("wait_container")
    result = await rt.wait_container(build, step)
    mark("reading the node's log file")
    node = await target.node_log(build.pod_name, step)
    return tailed, node, result.exit_code


async def test_a_step_printing_200000_lines_and_exiting_at_once_loses_none(
    target: Target,
) -> None:
    spec = BuildSpec(
        build_id=f"seq-{uuid.uuid4().hex[:6]}",
        steps=[StepSpec(name="seq", image=BUSYBOX, commands=[f"seq 1 {LINES}"])],
    )
    expected = _numbers(LINES)
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        with anyio.fail_after(180):
            await rt.assemble_build(build)
            try:
                tailed, node, exit_code = await _step_output(rt, target, build, "seq")
            finally:
                await rt.remove_build(build)
    assert exit_code == 0
    assert node is None or node == expected, "node's log file: " + _missing(node, LINES)
    assert tailed == expected, "tail_container: " + _missing(tailed, LINES)


async def test_a_hundred_such_steps_at_the_same_time_lose_none(target: Target) -> None:
    """10 builds of 10 steps each, every step started at once and exiting as soon as it
    has printed its numbers."""
    steps = [f"s{n}" for n in range(STEPS_PER_BUILD)]
    specs = [
        BuildSpec(
            build_id=f"seqs-{b}-{uuid.uuid4().hex[:6]}",
            steps=[
                StepSpec(name=step, image=BUSYBOX, commands=[f"seq 1 {LINES_PER_CONCURRENT_STEP}"])
                for step in steps
            ],
        )
        for b in range(BUILDS)
    ]
    outputs: dict[tuple[str, str], tuple[list[bytes], list[bytes] | None, int | None]] = {}
    # Where each build and step is: should the run not finish in time, the failure says
    # which are stuck where, and what the runtime's cache says of their steps.
    progress: dict[str, str] = {}
    builds: dict[str, Build] = {}
    started = time.monotonic()

    async def one_step(rt: Runtime, build: Build, step: str) -> None:
        key = f"{build.build_id}/{step}"
        outputs[build.build_id, step] = await _step_output(
            rt, target, build, step, mark=lambda call: progress.__setitem__(key, call)
        )
        progress[key] = "done"

    async def one_build(rt: Runtime, spec: BuildSpec) -> None:
        progress[spec.build_id] = "setting up"
        build = await rt.setup_build(spec)
        builds[spec.build_id] = build
        progress[spec.build_id] = "assembling"
        await rt.assemble_build(build)
        progress[spec.build_id] = "steps"
        try:
            async with anyio.create_task_group() as steps_group:
                for step in steps:
                    steps_group.start_soon(one_step, rt, build, step)
        finally:
            progress[spec.build_id] = "removing"
            await rt.remove_build(build)
            progress[spec.build_id] = "done"

    async def stuck(rt: Runtime) -> str:
        report = []
        for key, where in progress.items():
            if where == "done":
                continue
            build_id, _, step = key.partition("/")
            if step and build_id in builds:
                try:
                    where += f" (cache: {await rt.inspect_container(builds[build_id], step)})"
                except Exception as error:  # a report of what is stuck must not fail
                    where += f" (cache: {error!r})"
            report.append(f"{key}: {where}")
        return "; ".join(report)

    async with target.runtime() as rt:
        try:
            with anyio.fail_after(600):
                async with anyio.create_task_group() as builds_group:
                    for spec in specs:
                        builds_group.start_soon(one_build, rt, spec)
        except TimeoutError:
            pytest.fail(f"not finished in 600 s: {await stuck(rt)}")
    elapsed = time.monotonic() - started

    expected = _numbers(LINES_PER_CONCURRENT_STEP)
    assert len(outputs) == BUILDS * STEPS_PER_BUILD
    wrong = {
        key: (_missing(node, len(expected)), _missing(tailed, len(expected)), exit_code)
        for key, (tailed, node, exit_code) in outputs.items()
        if (tailed, exit_code) != (expected, 0) or node not in (None, expected)
    }
    assert not wrong, f"steps that lost output (node file, tail_container, exit): {wrong}"
    print(f"{len(outputs)} steps x {len(expected)} lines whole in {elapsed:.1f}s")
