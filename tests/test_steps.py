"""The step APIs end to end on FakeCluster: what a CI executor sees, where the fake
alone can show it (an admission denial, an unschedulable node) or where no integration
scenario covers it yet. Scenarios that run on the real cluster too live in integration/
(run there on FakeCluster as well), not here."""

from __future__ import annotations

import anyio
import pytest

from buildruntime import (
    AdmissionError,
    BuildSpec,
    Failure,
    Runtime,
    SchedulingError,
    StepTimeoutError,
)
from buildruntime.testing import FakeCluster
from integration.observe import run_build

from .conftest import FAST_RECOVERY, step

pytestmark = pytest.mark.anyio


async def test_a_megabyte_burst_arrives_byte_for_byte(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="burst-1", steps=[step("burst", "seq 1 170000")])
    lines = (await run_build(runtime, spec)).lines["burst"]
    assert lines == [str(i).encode() for i in range(1, 170001)]
    assert sum(len(line) + 1 for line in lines) > 1_000_000


async def test_tail_called_only_after_the_step_finished_still_starts_at_line_one(
    runtime: Runtime, cluster: FakeCluster
) -> None:
    spec = BuildSpec(build_id="late-1", steps=[step("early", "echo one", "echo two", "exit 4")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "early")
    result = await runtime.wait_container(build, "early")
    assert result.exit_code == 4
    first = [line async for line in runtime.tail_container(build, "early")]
    second = [line async for line in runtime.tail_container(build, "early")]
    assert first == second == [b"one", b"two"]
    await runtime.remove_build(build)


async def test_admission_denial_at_assemble(runtime: Runtime, cluster: FakeCluster) -> None:
    cluster.faults.deny_create("images from docker.io are not allowed")
    build = await runtime.setup_build(BuildSpec(build_id="deny-1", steps=[step("s", "true")]))
    with pytest.raises(AdmissionError) as caught:
        await runtime.assemble_build(build)
    assert "images from docker.io are not allowed" in str(caught.value)
    assert caught.value.build_id == "deny-1"
    await runtime.remove_build(build)  # nothing to delete: still fine


async def test_unschedulable_pod_raises_scheduling_error_after_the_timeout(
    cluster: FakeCluster,
) -> None:
    message = "0/1 nodes are available: 1 Insufficient memory."
    cluster.faults.unschedulable(message)
    async with Runtime(
        cluster, namespace="ci", schedule_timeout=1.5, reflector=FAST_RECOVERY
    ) as rt:
        build = await rt.setup_build(BuildSpec(build_id="sched-1", steps=[step("s", "true")]))
        started = anyio.current_time()
        with pytest.raises(SchedulingError) as caught:
            await rt.assemble_build(build)
        assert 1.4 < anyio.current_time() - started < 5
        assert message in str(caught.value)
        assert caught.value.message == message
    assert cluster.open_watches == 0


async def test_step_timeout(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="slow-1", steps=[step("slow", "echo start", "sleep 30", timeout=0.5)])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "slow")
    started = anyio.current_time()
    with pytest.raises(StepTimeoutError) as caught:
        await runtime.wait_container(build, "slow")
    assert anyio.current_time() - started < 2
    assert "0.5s" in str(caught.value)
    assert (await runtime.inspect_container(build, "slow")).failure == Failure.TIMEOUT
    with anyio.fail_after(10):
        await runtime.remove_build(build)
    assert [line async for line in runtime.tail_container(build, "slow")] == [b"start"]


async def test_twenty_builds_at_once(runtime: Runtime) -> None:
    outcomes = {}

    async def one(i: int) -> None:
        spec = BuildSpec(
            build_id=f"many-{i}",
            steps=[step("a", f"echo build {i}"), step("b", f"seq 1 {i}", f"exit {i % 3}")],
        )
        outcomes[i] = await run_build(runtime, spec)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    for i, outcome in outcomes.items():
        assert outcome.lines["a"] == [f"build {i}".encode()]
        assert outcome.lines["b"] == [str(n).encode() for n in range(1, i + 1)]
        assert outcome.results["b"].exit_code == i % 3
    assert len(outcomes) == 20


async def test_inspect_reports_each_phase(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="phases-1", steps=[step("s", "sleep 0.5", "exit 2")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    assert (await runtime.inspect_container(build, "s")).state == "waiting"
    await runtime.run_container(build, "s")
    running = await runtime.inspect_container(build, "s")
    assert running.state in ("running", "terminated")
    final = await runtime.wait_container(build, "s")
    assert (await runtime.inspect_container(build, "s")) == final
    assert (final.state, final.exit_code, final.failure) == ("terminated", 2, Failure.APP_ERROR)
    await runtime.remove_build(build)


async def test_remove_build_is_idempotent(runtime: Runtime, cluster: FakeCluster) -> None:
    outcome = await run_build(runtime, BuildSpec(build_id="idem-1", steps=[step("s", "true")]))
    deletes = [r for r in cluster.requests if r == ("delete", "pods")]
    await runtime.remove_build(outcome.build)
    await runtime.remove_build(outcome.build)
    assert [r for r in cluster.requests if r == ("delete", "pods")] == deletes


async def test_a_pod_without_the_runtimes_labels_is_never_touched(
    runtime: Runtime, cluster: FakeCluster
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "taken-1", "namespace": "ci", "labels": {"app": "someone-else"}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "args": ["sleep", "30"]}]},
    }
    await cluster.create_pod("ci", foreign)
    build = await runtime.setup_build(BuildSpec(build_id="taken-1", steps=[step("s", "true")]))
    with pytest.raises(AdmissionError, match="already exists"):
        await runtime.assemble_build(build)
    await runtime.remove_build(build)
    still_there = await cluster.list("pods", "ci", field_selector="metadata.name=taken-1")
    assert [p["metadata"]["labels"] for p in still_there["items"]] == [{"app": "someone-else"}]
    touched = [
        r.verb for r in cluster.requests if r.verb in ("patch", "delete") and r.resource == "pods"
    ]
    assert touched == []
    await cluster.delete_pod("ci", "taken-1")


async def test_a_log_past_the_memory_limit_spills_to_a_file_and_reads_back_whole(
    cluster: FakeCluster,
) -> None:
    async with Runtime(cluster, namespace="ci", log_memory_limit=10_000) as rt:
        spec = BuildSpec(build_id="spill-1", steps=[step("big", "seq 1 50000")])
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "big")
        await rt.wait_container(build, "big")
        expected = [str(i).encode() for i in range(1, 50001)]
        assert [line async for line in rt.tail_container(build, "big")] == expected
        assert [line async for line in rt.tail_container(build, "big")] == expected
        await rt.remove_build(build)


async def test_a_removed_build_is_held_only_by_its_handle(runtime: Runtime) -> None:
    import gc
    import weakref

    outcome = await run_build(runtime, BuildSpec(build_id="forget-1", steps=[step("s", "echo x")]))
    assert await runtime.inspect_container(outcome.build, "s") == outcome.results["s"]
    held = weakref.ref(outcome.build._controller)
    del outcome
    gc.collect()
    assert held() is None, "the runtime still holds a removed build"
