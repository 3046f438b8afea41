"""The step APIs end to end on FakeCluster: what a CI executor sees."""

from __future__ import annotations

import anyio
import pytest

from buildruntime import (
    AdmissionError,
    BuildSpec,
    Failure,
    ImagePullError,
    PodGoneError,
    Runtime,
    SchedulingError,
    StepTimeoutError,
)
from buildruntime.testing import FakeCluster

from .conftest import FAST_RECOVERY, run_pipeline, step

pytestmark = pytest.mark.anyio


async def test_five_steps_with_mixed_exit_codes(runtime: Runtime) -> None:
    spec = BuildSpec(
        build_id="mixed-1",
        steps=[
            step("one", "echo first", "echo second"),
            step("two", "echo failing >&2", "exit 3"),
            step("three", "echo 'a b  c'"),
            step("four", "false", "echo never printed"),
            step("five", "printf 'x\\ny\\n'", "exit 0"),
        ],
    )
    outcome = await run_pipeline(runtime, spec)
    got = {
        name: (s.lines, s.result.exit_code, s.result.failure) for name, s in outcome.steps.items()
    }
    assert got == {
        "one": ([b"first", b"second"], 0, None),
        "two": ([b"failing"], 3, Failure.APP_ERROR),
        "three": ([b"a b  c"], 0, None),
        "four": ([], 1, Failure.APP_ERROR),
        "five": ([b"x", b"y"], 0, None),
    }
    assert outcome.steps["two"].result.reason == "Error"
    assert outcome.steps["one"].result.reason == "Completed"
    assert outcome.steps["one"].result.state == "terminated"
    assert outcome.steps["one"].result.started_at is not None
    assert outcome.steps["one"].result.finished_at is not None


async def test_container_that_prints_three_lines_and_exits_at_once(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="short-1", steps=[step("quick", "echo 1; echo 2; echo 3")])
    outcome = await run_pipeline(runtime, spec)
    assert outcome.steps["quick"].lines == [b"1", b"2", b"3"]
    assert outcome.steps["quick"].result.exit_code == 0


async def test_dollar_signs_reach_the_shell_untouched(runtime: Runtime) -> None:
    spec = BuildSpec(
        build_id="dollar-1",
        steps=[
            step(
                "d",
                "echo $FOO",
                "echo '$(FOO)'",
                "echo $((1 + 2))",
                "echo '$$'",
                env={"FOO": "bar"},
            )
        ],
    )
    outcome = await run_pipeline(runtime, spec)
    assert outcome.steps["d"].lines == [b"bar", b"$(FOO)", b"3", b"$$"]


async def test_a_megabyte_burst_arrives_byte_for_byte(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="burst-1", steps=[step("burst", "seq 1 170000")])
    outcome = await run_pipeline(runtime, spec)
    lines = outcome.steps["burst"].lines
    assert lines == [str(i).encode() for i in range(1, 170001)]
    assert sum(len(line) + 1 for line in lines) > 1_000_000


async def test_last_line_without_newline_is_delivered(runtime: Runtime) -> None:
    spec = BuildSpec(build_id="nonl-1", steps=[step("partial", "printf 'a\\nb\\nno newline'")])
    outcome = await run_pipeline(runtime, spec)
    assert outcome.steps["partial"].lines == [b"a", b"b", b"no newline"]


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


async def test_missing_image_raises_image_pull_error_with_the_kubelets_message(
    runtime: Runtime,
) -> None:
    spec = BuildSpec(build_id="pull-1", steps=[step("get", "true", image="no-such-image:1.0")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    started = anyio.current_time()
    with pytest.raises(ImagePullError) as caught:
        await runtime.run_container(build, "get")
    assert anyio.current_time() - started < 1.0
    error = caught.value
    assert error.build_id == "pull-1"
    assert error.step == "get"
    assert error.reason in ("ErrImagePull", "ImagePullBackOff")
    assert error.message is not None
    assert "no-such-image" in error.message
    assert "no-such-image:1.0" in str(error)
    assert "step get" in str(error)
    result = await runtime.inspect_container(build, "get")
    assert result.failure == Failure.IMAGE_PULL
    assert [line async for line in runtime.tail_container(build, "get")] == []
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


async def test_pod_deleted_from_outside_during_a_step(
    runtime: Runtime, cluster: FakeCluster
) -> None:
    spec = BuildSpec(
        build_id="gone-1",
        steps=[step("long", "echo before", "echo still here", "sleep 30", "echo never")],
    )
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "long")
    lines: list[bytes] = []
    async for line in runtime.tail_container(build, "long"):
        lines.append(line)
        if len(lines) == 2:
            await cluster.delete_pod("ci", build.pod_name)
    assert lines == [b"before", b"still here"]
    with pytest.raises(PodGoneError) as caught:
        await runtime.wait_container(build, "long")
    assert caught.value.step == "long"
    assert "deleted" in str(caught.value)
    await runtime.remove_build(build)


async def test_oom_killed_step(runtime: Runtime, cluster: FakeCluster) -> None:
    spec = BuildSpec(build_id="oom-1", steps=[step("hog", "echo allocating", "sleep 30")])
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "hog")
    await cluster.kill_container("ci", build.pod_name, "hog", reason="OOMKilled", exit_code=137)
    result = await runtime.wait_container(build, "hog")
    assert (result.failure, result.exit_code, result.reason) == (
        Failure.OOM_KILLED,
        137,
        "OOMKilled",
    )
    await runtime.remove_build(build)


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
        outcomes[i] = await run_pipeline(runtime, spec)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    for i, outcome in outcomes.items():
        assert outcome.steps["a"].lines == [f"build {i}".encode()]
        assert outcome.steps["b"].lines == [str(n).encode() for n in range(1, i + 1)]
        assert outcome.steps["b"].result.exit_code == i % 3
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
    outcome = await run_pipeline(runtime, BuildSpec(build_id="idem-1", steps=[step("s", "true")]))
    deletes = [r for r in cluster.requests if r.verb == "delete"]
    await runtime.remove_build(outcome.build)
    await runtime.remove_build(outcome.build)
    assert [r for r in cluster.requests if r.verb == "delete"] == deletes


@pytest.mark.parametrize("steps", [1, 50])
async def test_request_budget_matches_the_contract(cluster: FakeCluster, steps: int) -> None:
    async with Runtime(cluster, namespace="ci") as rt:
        spec = BuildSpec(
            build_id=f"budget-{steps}",
            steps=[step(f"s{i}", f"echo {i}") for i in range(steps)],
        )
        before = len(cluster.requests)
        outcome = await run_pipeline(rt, spec, remove=False)
        for i in range(steps):
            await rt.inspect_container(outcome.build, f"s{i}")
        await rt.remove_build(outcome.build)
        sent = cluster.requests[before:]
    counts: dict[tuple[str, str], int] = {}
    for request in sent:
        counts[(request.verb, request.resource)] = (
            counts.get((request.verb, request.resource), 0) + 1
        )
    assert counts == {
        ("create", "pods"): 1,
        ("list", "pods"): 1,
        ("watch", "pods"): 1,
        ("list", "events"): 1,
        ("watch", "events"): 1,
        ("patch", "pods"): steps,
        ("log", "pods"): steps,
        ("delete", "pods"): 1,
    }
    assert len(sent) == 6 + 2 * steps  # 1 create, 2 lists, 2 watches, N patches, N logs, 1 delete


async def test_a_line_longer_than_16k_arrives_whole(runtime: Runtime, cluster: FakeCluster) -> None:
    # Like a real node, the fake stores it as 16 KiB partial records, and like the kubelet
    # (1.26 and later) it serves them as one line with one timestamp.
    spec = BuildSpec(
        build_id="wide-1",
        steps=[step("wide", "head -c 40000 /dev/zero | tr '\\000' x; echo", "echo after")],
    )
    build = await runtime.setup_build(spec)
    await runtime.assemble_build(build)
    await runtime.run_container(build, "wide")
    await runtime.wait_container(build, "wide")
    async with cluster.stream_logs("ci", build.pod_name, "wide", follow=False) as chunks:
        raw = b"".join([chunk async for chunk in chunks])
    assert raw.count(b"Z ") == 2  # the long line and "after", one stamp each
    assert raw.split(b"\n")[0].endswith(b" " + b"x" * 40000)
    assert [line async for line in runtime.tail_container(build, "wide")] == [
        b"x" * 40000,
        b"after",
    ]
    await runtime.remove_build(build)


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
    touched = [r.verb for r in cluster.requests if r.verb in ("patch", "delete")]
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

    outcome = await run_pipeline(
        runtime, BuildSpec(build_id="forget-1", steps=[step("s", "echo x")])
    )
    assert await runtime.inspect_container(outcome.build, "s") == outcome.steps["s"].result
    held = weakref.ref(outcome.build._controller)
    del outcome
    gc.collect()
    assert held() is None, "the runtime still holds a removed build"
