"""The informer under faults: every container state transition the API server recorded
reaches the per-step streams, in order, whatever happens to the watches."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from buildruntime import BuildSpec, Runtime
from buildruntime.build import Build
from buildruntime.informer.snapshots import ContainerStatus, pod_snapshot
from buildruntime.testing import FakeCluster

from .conftest import FAST_RECOVERY, IMAGES, step

pytestmark = pytest.mark.anyio

STEPS = ["first", "second", "third"]


def _spec(build_id: str) -> BuildSpec:
    return BuildSpec(
        build_id=build_id,
        steps=[
            step("first", "echo one", "sleep 0.6", "echo two"),
            step("second", "sleep 0.6", "exit 5"),
            step("third", "echo three", "sleep 0.3"),
        ],
    )


def _truth(cluster: FakeCluster, pod: str) -> dict[str, list[ContainerStatus]]:
    """Each step's distinct container states, in order, as the API server wrote them."""
    truth: dict[str, list[ContainerStatus]] = {name: [] for name in STEPS}
    for version in cluster.history("ci", pod):
        snapshot = pod_snapshot(version)
        for name in STEPS:
            container = snapshot.container(name)
            if container is not None and (not truth[name] or truth[name][-1] != container):
                truth[name].append(container)
    return truth


async def _record(build: Build, name: str, into: dict[str, list[ContainerStatus]]) -> None:
    async for view in build.step_states(name):
        if view.container is not None and (not into[name] or into[name][-1] != view.container):
            into[name].append(view.container)


async def _run_build_under(
    cluster: FakeCluster, build_id: str, fault: Callable[[], Awaitable[None]]
) -> dict[str, list[ContainerStatus]]:
    seen: dict[str, list[ContainerStatus]] = {name: [] for name in STEPS}
    async with (
        Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY) as rt,
        anyio.create_task_group() as tg,
    ):
        build = await rt.setup_build(_spec(build_id))
        for name in STEPS:
            tg.start_soon(_record, build, name, seen)
        await rt.assemble_build(build)
        tg.start_soon(fault)
        codes = []
        for name in STEPS:
            await rt.run_container(build, name)
            codes.append((await rt.wait_container(build, name)).exit_code)
        assert codes == [0, 5, 0]
        await rt.remove_build(build)
    return seen


async def test_dropped_watches_lose_no_transition(cluster: FakeCluster) -> None:
    async def drop_often() -> None:
        for _ in range(12):
            await anyio.sleep(0.15)
            cluster.faults.drop_watches()

    seen = await _run_build_under(cluster, "drops-1", drop_often)
    truth = _truth(cluster, "drops-1")
    assert seen == truth
    assert all(len(truth[name]) >= 3 for name in STEPS)  # placeholder, step running, step done
    # The drops took effect: they broke both watches (a drop during a back-off finds
    # none open), and the runtime watched again each time.
    watches = sum(1 for r in cluster.requests if r.verb == "watch" and r.resource != "leases")
    assert watches >= 2 + 2 * 3, watches


async def test_410_gone_loses_no_transition(cluster: FakeCluster) -> None:
    async def expire_twice() -> None:
        await anyio.sleep(0.3)
        cluster.faults.expire()
        await anyio.sleep(0.7)
        cluster.faults.expire()

    lists_before = sum(1 for r in cluster.requests if r.verb == "list" and r.resource != "leases")
    seen = await _run_build_under(cluster, "expire-1", expire_twice)
    assert seen == _truth(cluster, "expire-1")
    lists = (
        sum(1 for r in cluster.requests if r.verb == "list" and r.resource != "leases")
        - lists_before
    )
    # The pods' initial list (events start from the pod's creation, unlisted), and at
    # least one relist of each after a 410.
    assert lists >= 1 + 2


@pytest.mark.slow
async def test_thirty_second_outage_loses_no_transition(cluster: FakeCluster) -> None:
    async def outage() -> None:
        await anyio.sleep(0.2)
        cluster.faults.outage(30)

    started = anyio.current_time()
    seen = await _run_build_under(cluster, "outage-1", outage)
    assert anyio.current_time() - started >= 30
    assert seen == _truth(cluster, "outage-1")


async def test_late_subscriber_sees_the_current_state_first(runtime: Runtime) -> None:
    build = await runtime.setup_build(BuildSpec(build_id="late-sub-1", steps=[step("s", "exit 7")]))
    await runtime.assemble_build(build)
    await runtime.run_container(build, "s")
    await runtime.wait_container(build, "s")
    async for view in build.step_states("s"):
        container = view.step_container
        assert container is not None
        assert (container.phase, container.exit_code) == ("terminated", 7)
        break
    await runtime.remove_build(build)


async def test_events_of_a_previous_pod_with_the_same_name_never_reach_the_new_one(
    cluster: FakeCluster,
) -> None:
    async with Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY) as rt:
        old = await rt.setup_build(
            BuildSpec(build_id="same-1", steps=[step("s", "true", image="nope:1")])
        )
        await rt.assemble_build(old)
        with pytest.raises(Exception, match="nope:1"):
            await rt.run_container(old, "s")
        await anyio.sleep(0.5)  # let the kubelet post its pull warnings
        await rt.remove_build(old)

        new = await rt.setup_build(BuildSpec(build_id="same-1", steps=[step("s", "echo fine")]))
        kinds: list[tuple[str | None, str]] = []

        async def collect() -> None:
            async for event in new.events():
                kinds.append((event.step, event.kind))

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await rt.assemble_build(new)
            await rt.run_container(new, "s")
            result = await rt.wait_container(new, "s")
            await rt.remove_build(new)
    assert result.exit_code == 0
    assert ("s", "warning") not in kinds
    assert ("s", "failed") not in kinds
    assert kinds[0] == (None, "scheduled")
    assert ("s", "started") in kinds
    assert ("s", "completed") in kinds
    assert kinds[-1] == (None, "deleted")


async def test_cancelling_leaves_no_watch_stream_or_thread() -> None:
    threads_before = threading.active_count()
    async with FakeCluster(images=IMAGES) as cluster:
        with anyio.CancelScope() as scope:
            async with Runtime(cluster, namespace="ci") as rt:
                build = await rt.setup_build(
                    BuildSpec(build_id="cancel-1", steps=[step("s", "echo hi", "sleep 30")])
                )
                await rt.assemble_build(build)
                await rt.run_container(build, "s")
                async for line in rt.tail_container(build, "s"):
                    assert line == b"hi"
                    assert cluster.open_watches == 2
                    assert cluster.open_log_streams == 1
                    scope.cancel()
        assert cluster.open_watches == 0
        assert cluster.open_log_streams == 0
    with anyio.fail_after(5):
        while threading.active_count() > threads_before:
            await anyio.sleep(0.05)


async def test_one_list_and_one_watch_per_resource_then_rewatches_only_after_faults(
    cluster: FakeCluster,
) -> None:
    def count() -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        # The worker's Lease requests (its renewal, the reaper's list) are per worker,
        # not per build.
        for r in cluster.requests:
            if r.verb in ("list", "watch") and r.resource != "leases":
                out[(r.verb, r.resource)] = out.get((r.verb, r.resource), 0) + 1
        return out

    async def until(predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(5):
            while not predicate():
                await anyio.sleep(0.01)

    async with Runtime(cluster, namespace="ci", reflector=FAST_RECOVERY) as rt:
        build = await rt.setup_build(BuildSpec(build_id="acct-1", steps=[step("s", "sleep 2")]))
        await rt.assemble_build(build)
        await rt.run_container(build, "s")
        await anyio.sleep(0.3)
        # No list of events: none can exist before the pod (the watch starts at its
        # creation).
        base = {
            ("list", "pods"): 1,
            ("watch", "pods"): 1,
            ("watch", "events"): 1,
        }
        assert count() == base
        cluster.faults.drop_watches()
        await until(lambda: cluster.open_watches == 2 and count()[("watch", "events")] == 2)
        assert count() == {**base, ("watch", "pods"): 2, ("watch", "events"): 2}
        cluster.faults.expire()
        await until(lambda: cluster.open_watches == 2 and count().get(("list", "events")) == 1)
        await anyio.sleep(0.2)
        expected: dict[Any, int] = {
            ("list", "pods"): 2,
            ("watch", "pods"): 4,  # the re-watch that got 410, then the one after the relist
            ("list", "events"): 1,  # the relist after the 410
            ("watch", "events"): 4,
        }
        assert count() == expected
        await rt.wait_container(build, "s")
        await rt.remove_build(build)
