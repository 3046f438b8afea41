"""The fault matrix on FakeCluster: whatever the cluster or the network does, the user sees
the right result or the right error, every log line exactly once, and nothing leaks.

Each test records what the user of the API observed and compares it with the ground
truth (what the steps printed and how they exited)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from buildruntime import Build, BuildSpec, Runtime
from buildruntime.cluster.port import Resource
from buildruntime.errors import BuildRuntimeError, PodGoneError
from buildruntime.testing import FakeCluster
from buildruntime.testing.wrapper import ClusterWrapper
from integration.observe import run_build

from .conftest import FAST_RECOVERY, IMAGES, step

pytestmark = pytest.mark.anyio


class _Timed(ClusterWrapper):
    """Notes how long each request of the runtime took (the opening of a stream too)."""

    def __init__(self, inner: FakeCluster) -> None:
        super().__init__(inner)
        self.took: list[tuple[str, float]] = []

    async def _timed(self, verb: str, call: Awaitable[Any]) -> Any:
        began = anyio.current_time()
        try:
            return await call
        finally:
            self.took.append((verb, anyio.current_time() - began))

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> Any:
        return await self._timed("list", super().list(resource, namespace, **kwargs))

    async def create_pod(self, namespace: str, manifest: Any) -> Any:
        return await self._timed("create", super().create_pod(namespace, manifest))

    async def patch_pod(self, namespace: str, name: str, patch: Any) -> Any:
        return await self._timed("patch", super().patch_pod(namespace, name, patch))

    async def delete_pod(self, namespace: str, name: str, **kwargs: Any) -> None:
        await self._timed("delete", super().delete_pod(namespace, name, **kwargs))

    def watch(self, resource: Resource, namespace: str, **kwargs: Any) -> Any:
        return self._opening("watch", super().watch(resource, namespace, **kwargs))

    def stream_logs(self, namespace: str, pod: str, container: str, **kwargs: Any) -> Any:
        return self._opening("log", super().stream_logs(namespace, pod, container, **kwargs))

    @asynccontextmanager
    async def _opening(self, verb: str, stream: Any) -> AsyncIterator[Any]:
        entered = await self._timed(verb, stream.__aenter__())
        try:
            yield entered
        except BaseException as error:
            if not await stream.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await stream.__aexit__(None, None, None)


async def test_latency_on_every_request(cluster: FakeCluster) -> None:
    count = 10
    ticker = "i=0; while [ $i -lt {0} ]; do i=$((i+1)); echo {1}-$i; sleep 0.01; done"
    spec = BuildSpec(
        build_id="latency-1",
        steps=[step(name, ticker.format(count, name)) for name in ("a", "b")],
    )
    timed = _Timed(cluster)
    cluster.faults.latency(0.05)
    async with Runtime(timed, namespace="ci", reflector=FAST_RECOVERY) as rt:  # type: ignore[arg-type]
        seen = await run_build(rt, spec)
    assert seen.outcome() == {
        name: ([f"{name}-{i}".encode() for i in range(1, count + 1)], 0) for name in ("a", "b")
    }
    # The latency took effect: every request of the build, stream or not, waited for it.
    assert {verb for verb, _ in timed.took} == {"list", "watch", "create", "patch", "log", "delete"}
    assert min(took for _, took in timed.took) >= 0.05, timed.took


@pytest.mark.parametrize("phase", ["assembling", "pulling", "running", "tailing", "removing"])
async def test_cancelling_a_build_in_any_phase_returns_quickly_and_leaks_nothing(
    phase: str,
) -> None:
    threads_before = threading.active_count()
    # A step pulled with "Always" pulls its placeholder (the pause image) at assemble
    # too: for "pulling", both pulls take 2 s and the cancel comes in the second.
    cancel_at = 3.0 if phase == "pulling" else 1.0
    async with FakeCluster(images=IMAGES, pull_delay=2 if phase == "pulling" else 0.02) as cluster:
        if phase == "assembling":
            cluster.faults.unschedulable(
                "0/1 nodes are available: 1 node(s) had untolerated taint."
            )
        commands = ("echo hi",) if phase == "removing" else ("echo hi", "sleep 30")
        spec = BuildSpec(
            build_id=f"cancel-{phase}", steps=[step("s", *commands, pull_policy="Always")]
        )
        started = anyio.current_time()
        at = "setting up"
        with anyio.move_on_after(cancel_at) as scope:
            async with Runtime(cluster, namespace="ci", delete_timeout=1.0) as rt:
                build = await rt.setup_build(spec)
                at = "assembling"
                await rt.assemble_build(build)
                at = "pulling"
                await rt.run_container(build, "s")
                if phase == "running":
                    at = "running"
                    await rt.wait_container(build, "s")
                at = "tailing"
                async for _ in rt.tail_container(build, "s"):
                    pass
                at = "waiting"
                await rt.wait_container(build, "s")
                cluster.faults.latency(5)
                at = "removing"
                await rt.remove_build(build)
                at = "done"
        # The fault held the build in the phase it is about, and the cancel came there.
        assert scope.cancelled_caught
        assert at == phase
        # Cleanup (deleting the pod) after the cancel is bounded by delete_timeout.
        assert anyio.current_time() - started < cancel_at + 1.0 + 1.0
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
    port = _BugInOneWatch(cluster, "broken")
    async with Runtime(port, namespace="ci", shared_pod_watch=False) as rt:  # type: ignore[arg-type]
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
        outcome = await run_build(rt, healthy)
        assert outcome.outcome() == {"a": ([b"fine"], 0)}
    assert cluster.open_watches == cluster.open_log_streams == 0


class _BugInPodsWatches(ClusterWrapper):
    """A port whose pods watches fail with an error no retry can fix, until mended."""

    def __init__(self, inner: FakeCluster) -> None:
        super().__init__(inner)
        self.broken = True
        self.failed = 0

    def watch(self, resource: Resource, namespace: str, **kwargs: Any) -> Any:
        if resource == "pods" and self.broken:
            self.failed += 1
            raise RuntimeError("the watch is broken")
        return super().watch(resource, namespace, **kwargs)


async def test_a_shared_pods_watch_that_fails_unexpectedly_fails_its_builds_not_the_runtime(
    cluster: FakeCluster,
) -> None:
    # Every build following the runtime's one pods watch loses its pod with it: each
    # says why. The runtime goes on, and its next build starts the watch afresh.
    specs = [BuildSpec(build_id=f"broken-{i}", steps=[step("a", "echo a")]) for i in range(2)]
    port = _BugInPodsWatches(cluster)
    async with Runtime(port, namespace="ci") as rt:  # type: ignore[arg-type]
        builds = [await rt.setup_build(spec) for spec in specs]
        errors: list[BaseException] = []

        async def assemble(build: Build) -> None:
            with pytest.raises(BuildRuntimeError) as caught:
                await rt.assemble_build(build)
            errors.append(caught.value)

        async with anyio.create_task_group() as tg:
            for build in builds:
                tg.start_soon(assemble, build)
        # One failed watch for both builds, or one each should the second follow only
        # after the first watch had failed and stopped.
        assert port.failed in (1, 2)
        assert sorted(str(error) for error in errors) == [
            f"build {spec.build_id}: the build's watches stopped on an unexpected error: "
            "the watch is broken (RuntimeError)"
            for spec in specs
        ]
        for build in builds:
            await rt.remove_build(build)
        port.broken = False
        outcome = await run_build(rt, BuildSpec(build_id="after", steps=[step("a", "echo fine")]))
        assert outcome.outcome() == {"a": ([b"fine"], 0)}
    assert cluster.open_watches == cluster.open_log_streams == 0
