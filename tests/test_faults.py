"""The fault matrix on FakeCluster: whatever the cluster or the network does, the user sees
the right result or the right error, every log line exactly once, and nothing leaks.

Each test records what the user of the API observed and compares it with the ground
truth (what the steps printed and how they exited)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from buildruntime import BuildSpec, Runtime
from buildruntime.cluster.port import Resource
from buildruntime.errors import BuildRuntimeError, PodGoneError
from buildruntime.testing import FakeCluster
from buildruntime.testing.chaos import ChaosCluster
from buildruntime.testing.wrapper import ClusterWrapper

from .conftest import FAST_RECOVERY, IMAGES, run_pipeline, step

pytestmark = pytest.mark.anyio

Fault = Callable[[FakeCluster], Awaitable[None]]


def _ticker(name: str, count: int, pause: float) -> object:
    return step(
        name, f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo {name}-$i; sleep {pause}; done"
    )


async def _under_fault(
    cluster: FakeCluster, build_id: str, fault: Fault, *, count: int, pause: float
) -> None:
    spec = BuildSpec(
        build_id=build_id, steps=[_ticker("a", count, pause), _ticker("b", count, pause)]
    )  # type: ignore[list-item]
    async with (
        Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY) as rt,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(fault, cluster)
        outcome = await run_pipeline(rt, spec)
        tg.cancel_scope.cancel()
    for name in ("a", "b"):
        assert outcome.steps[name].lines == [f"{name}-{i}".encode() for i in range(1, count + 1)]
        assert outcome.steps[name].result.exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_watches_dropped_every_two_seconds_through_a_sixty_second_build(
    cluster: FakeCluster,
) -> None:
    drops = 0

    async def drop(c: FakeCluster) -> None:
        nonlocal drops
        while True:
            await anyio.sleep(2)
            c.faults.drop_watches()
            drops += 1

    await _under_fault(cluster, "drop-60", drop, count=300, pause=0.1)
    assert drops >= 25


async def test_log_streams_cut_mid_line_repeatedly(cluster: FakeCluster) -> None:
    async def cut(c: FakeCluster) -> None:
        while True:
            await anyio.sleep(0.13)
            c.faults.cut_logs()

    await _under_fault(cluster, "cut-1", cut, count=60, pause=0.02)
    assert sum(1 for r in cluster.requests if r.verb == "log") > 2


async def test_api_unreachable_while_steps_run_and_finish(cluster: FakeCluster) -> None:
    async def outage(c: FakeCluster) -> None:
        await anyio.sleep(0.3)
        c.faults.outage(3)

    await _under_fault(cluster, "outage-3", outage, count=30, pause=0.05)


async def test_latency_on_every_request(cluster: FakeCluster) -> None:
    async def slow(c: FakeCluster) -> None:
        c.faults.latency(0.05)

    await _under_fault(cluster, "latency-1", slow, count=10, pause=0.01)


async def test_duplicate_and_out_of_order_watch_events_and_a_sidecar(cluster: FakeCluster) -> None:
    chaos = ChaosCluster(cluster, duplicate=True, reorder=True, sidecar="istio-proxy")
    spec = BuildSpec(build_id="chaos-1", steps=[step("a", "echo a"), step("b", "echo b", "exit 2")])
    async with Runtime(chaos, namespace="ci", reflector=FAST_RECOVERY) as rt:  # type: ignore[arg-type]
        build = await rt.setup_build(spec)
        kinds: list[tuple[str | None, str]] = []

        async def collect() -> None:
            async for event in build.events():
                kinds.append((event.step, event.kind))

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            outcome = await run_pipeline_on(rt, build)
    assert {n: (o[0], o[1].exit_code) for n, o in outcome.items()} == {
        "a": ([b"a"], 0),
        "b": ([b"b"], 2),
    }
    # Each transition reported once, whatever the duplicates; the sidecar is not a step.
    assert kinds.count(("a", "started")) == 1
    assert kinds.count(("b", "failed")) == 1
    assert kinds.count(("a", "completed")) == 1
    assert not [k for k in kinds if k[0] == "istio-proxy"]
    assert kinds.count((None, "scheduled")) == 1
    assert kinds[-1] == (None, "deleted")


async def test_a_stalled_watch_is_detected_and_replaced(cluster: FakeCluster) -> None:
    chaos = ChaosCluster(cluster, duplicate=False, reorder=False, stall_pods_watch_after=3)
    settings = dataclasses.replace(FAST_RECOVERY, watch_idle_timeout=1.0)
    spec = BuildSpec(
        build_id="stall-1", steps=[step("a", "echo a", "sleep 0.5"), step("b", "exit 4")]
    )
    async with Runtime(chaos, namespace="ci", reflector=settings) as rt:  # type: ignore[arg-type]
        build = await rt.setup_build(spec)
        with anyio.fail_after(15):
            outcome = await run_pipeline_on(rt, build)
    assert chaos.stalls == 1
    assert {n: (o[0], o[1].exit_code) for n, o in outcome.items()} == {
        "a": ([b"a"], 0),
        "b": ([], 4),
    }
    assert sum(1 for r in cluster.requests if r.verb == "watch" and r.resource == "pods") == 2


async def run_pipeline_on(rt: Runtime, build: object) -> dict[str, tuple[list[bytes], object]]:
    from buildruntime import Build

    assert isinstance(build, Build)
    await rt.assemble_build(build)
    out = {}
    for s in build.spec.steps:
        await rt.run_container(build, s.name)
        lines = [line async for line in rt.tail_container(build, s.name)]
        out[s.name] = (lines, await rt.wait_container(build, s.name))
    await rt.remove_build(build)
    return out


async def test_non_utf8_output_passes_through_byte_for_byte(runtime: Runtime) -> None:
    spec = BuildSpec(
        build_id="bytes-1", steps=[step("raw", "printf 'ok\\n\\377\\376 bad\\n\\303('")]
    )
    outcome = await run_pipeline(runtime, spec)
    assert outcome.steps["raw"].lines == [b"ok", b"\xff\xfe bad", b"\xc3("]


@pytest.mark.parametrize("phase", ["assembling", "pulling", "running", "tailing", "removing"])
async def test_cancelling_a_build_in_any_phase_returns_quickly_and_leaks_nothing(
    phase: str,
) -> None:
    threads_before = threading.active_count()
    async with FakeCluster(images=IMAGES, pull_delay=30 if phase == "pulling" else 0.02) as cluster:
        if phase == "assembling":
            cluster.faults.unschedulable(
                "0/1 nodes are available: 1 node(s) had untolerated taint."
            )
        commands = ("echo hi",) if phase == "removing" else ("echo hi", "sleep 30")
        spec = BuildSpec(
            build_id=f"cancel-{phase}", steps=[step("s", *commands, pull_policy="Always")]
        )
        started = anyio.current_time()
        with anyio.move_on_after(1.0) as scope:
            async with Runtime(cluster, namespace="ci", delete_timeout=1.0) as rt:
                build = await rt.setup_build(spec)
                await rt.assemble_build(build)  # "assembling" is cancelled here
                await rt.run_container(build, "s")  # "pulling" here
                if phase == "running":
                    await rt.wait_container(build, "s")
                async for _ in rt.tail_container(build, "s"):  # "tailing" here
                    pass
                await rt.wait_container(build, "s")
                cluster.faults.latency(5)
                await rt.remove_build(build)  # "removing" here
        assert scope.cancelled_caught
        # Cancelled at 1 s; cleanup (deleting the pod) is bounded by delete_timeout.
        assert anyio.current_time() - started < 1.0 + 1.0 + 1.0
        cluster.faults.clear()
        assert cluster.open_watches == 0
        assert cluster.open_log_streams == 0
    # Worker threads end by themselves once idle: anyio's after 10 s, trio's cache's
    # after 10 s too, so the bound is that plus a margin.
    with anyio.fail_after(15):
        while threading.active_count() > threads_before:
            await anyio.sleep(0.05)


async def test_remove_build_treats_a_pod_already_gone_as_done(
    runtime: Runtime, cluster: FakeCluster
) -> None:
    build = await runtime.setup_build(BuildSpec(build_id="gone-2", steps=[step("s", "echo x")]))
    await runtime.assemble_build(build)
    await cluster.delete_pod("ci", build.pod_name)
    with anyio.fail_after(5):
        await runtime.remove_build(build)
        await runtime.remove_build(build)


class _BugInOneWatch(ClusterWrapper):
    """A port whose pod watch for one build fails with an error no retry can fix (what a
    bug in a watch, or in a wrapper around the port, looks like to the runtime)."""

    def __init__(self, inner: FakeCluster, build_id: str) -> None:
        super().__init__(inner)
        self.build_id = build_id

    def watch(self, resource: Resource, namespace: str, **kwargs: Any) -> Any:
        if resource == "pods" and self.build_id in str(kwargs.get("label_selector")):
            raise RuntimeError("the watch is broken")
        return super().watch(resource, namespace, **kwargs)


async def test_a_build_whose_watch_fails_unexpectedly_says_so_and_spares_the_others(
    cluster: FakeCluster,
) -> None:
    broken = BuildSpec(build_id="broken", steps=[step("a", "echo a")])
    healthy = BuildSpec(build_id="healthy", steps=[step("a", "echo fine")])
    async with Runtime(_BugInOneWatch(cluster, "broken"), namespace="ci") as rt:  # type: ignore[arg-type]
        build = await rt.setup_build(broken)
        with pytest.raises(BuildRuntimeError) as caught:
            await rt.assemble_build(build)
        # The cause is named, not disguised as a deleted pod.
        assert not isinstance(caught.value, PodGoneError)
        assert str(caught.value) == (
            "build broken: the build's watches stopped on an unexpected error: "
            "the watch is broken (RuntimeError)"
        )
        assert isinstance(caught.value.__cause__, RuntimeError)
        await rt.remove_build(build)
        # Another build of the same runtime runs to the end, untouched.
        outcome = await run_pipeline(rt, healthy)
        assert outcome.steps["a"].lines == [b"fine"]
        assert outcome.steps["a"].result.exit_code == 0
    assert cluster.open_watches == cluster.open_log_streams == 0
