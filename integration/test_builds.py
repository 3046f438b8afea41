"""The step APIs end to end, as a CI executor sees them, against a real API server,
kubelet and container runtime.

Every test here runs unchanged on FakeCluster too (BUILDRUNTIME_TARGET=fake, under
asyncio and trio), which is what keeps the fake honest.
"""

from __future__ import annotations

import uuid
from collections import Counter

import anyio
import pytest

from buildruntime import (
    BuildSpec,
    Failure,
    ImagePullError,
    PodGoneError,
    StepResult,
    StepSpec,
)
from buildruntime.cluster.port import Request

from .conftest import BUSYBOX, Target, target_kind
from .observe import PortRecorder, run_build

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"] if target_kind() == "fake" else ["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _step(name: str, *commands: str, **kwargs: object) -> StepSpec:
    return StepSpec(name=name, image=BUSYBOX, commands=list(commands), **kwargs)  # type: ignore[arg-type]


async def _run(target: Target, spec: BuildSpec) -> dict[str, tuple[list[bytes], StepResult]]:
    async with target.runtime() as rt:
        seen = await run_build(rt, spec)
    return {name: (seen.lines[name], result) for name, result in seen.results.items()}


async def test_multi_step_pipeline_exact_logs_and_exit_codes(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("pipe"),
        steps=[
            _step("hello", "echo hello", "echo world"),
            _step("fails", "echo about to fail >&2", "exit 3"),
            _step("count", "seq 1 5"),
            _step("spaces", "echo 'a b  c'"),
            _step("false", "false", "echo never printed"),
            _step("printf", "printf 'x\\ny\\n'", "exit 0"),
        ],
    )
    results = await _run(target, spec)
    assert {
        name: (lines, r.exit_code, r.reason, r.failure) for name, (lines, r) in results.items()
    } == {
        "hello": ([b"hello", b"world"], 0, "Completed", None),
        "fails": ([b"about to fail"], 3, "Error", Failure.APP_ERROR),
        "count": ([b"1", b"2", b"3", b"4", b"5"], 0, "Completed", None),
        "spaces": ([b"a b  c"], 0, "Completed", None),
        "false": ([], 1, "Error", Failure.APP_ERROR),
        "printf": ([b"x", b"y"], 0, "Completed", None),
    }
    for _, result in results.values():
        assert result.state == "terminated"
        assert result.started_at is not None
        assert result.finished_at is not None


async def test_dollar_signs_reach_the_shell_untouched(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("dollar"),
        steps=[
            _step(
                "d",
                "echo $FOO",
                "echo '$(FOO)'",
                "echo $((1 + 2))",
                "echo '$$'",
                env={"FOO": "bar"},
            )
        ],
    )
    results = await _run(target, spec)
    assert results["d"][0] == [b"bar", b"$(FOO)", b"3", b"$$"]


async def test_a_line_longer_than_the_kubelets_16k_limit_arrives_whole(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("long"),
        steps=[_step("wide", "head -c 40000 /dev/zero | tr '\\000' x; echo", "echo after")],
    )
    async with target.runtime() as rt:
        seen = await run_build(rt, spec, remove=False)
        try:
            # The node stores it as 16 KiB partial records; the kubelet (1.26 and later)
            # serves them as one line with one timestamp.
            async with target.cluster.stream_logs(
                target.namespace, seen.build.pod_name, "wide", follow=False
            ) as chunks:
                raw = b"".join([chunk async for chunk in chunks])
            again = [line async for line in rt.tail_container(seen.build, "wide")]
        finally:
            await rt.remove_build(seen.build)
    assert raw.count(b"Z ") == 2  # the long line and "after", one stamp each
    assert raw.split(b"\n")[0].endswith(b" " + b"x" * 40000)
    assert seen.lines["wide"] == again == [b"x" * 40000, b"after"]


async def test_zero_second_container_logs(target: Target) -> None:
    spec = BuildSpec(build_id=_id("zero"), steps=[_step("blink", "echo a; echo b; printf c")])
    results = await _run(target, spec)
    assert results["blink"][0] == [b"a", b"b", b"c"]
    assert results["blink"][1].exit_code == 0


async def test_non_utf8_output_passes_through_byte_for_byte(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("bytes"), steps=[_step("raw", "printf 'ok\\n\\377\\376 bad\\n\\303('")]
    )
    results = await _run(target, spec)
    assert results["raw"][0] == [b"ok", b"\xff\xfe bad", b"\xc3("]


async def test_missing_image(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("missing"),
        steps=[StepSpec(name="pull", image="localhost/does-not-exist:1.0", commands=["true"])],
    )
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        started = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(ImagePullError) as caught:
            await rt.run_container(build, "pull")
        if target.kind == "fake":
            assert anyio.current_time() - started < 1.0
        error = caught.value
        assert error.build_id == spec.build_id
        assert error.step == "pull"
        assert error.reason in ("ErrImagePull", "ImagePullBackOff")
        assert error.message is not None
        assert "does-not-exist" in error.message
        assert "localhost/does-not-exist:1.0" in str(error)
        assert "step pull" in str(error)
        assert (await rt.inspect_container(build, "pull")).failure == Failure.IMAGE_PULL
        assert [line async for line in rt.tail_container(build, "pull")] == []
        await rt.remove_build(build)


async def test_oom_kill(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("oom"),
        steps=[
            _step(
                "hog",
                "echo allocating",
                # The shell holds 64 MB in a variable: over the 16 MiB limit.
                "x=$(head -c 67108864 /dev/zero | tr '\\000' a)",
                "sleep 5",
                resources={"limits": {"memory": "16Mi"}, "requests": {"memory": "16Mi"}},
            )
        ],
    )
    results = await _run(target, spec)
    lines, result = results["hog"]
    assert lines == [b"allocating"]
    assert (result.failure, result.reason, result.exit_code) == (
        Failure.OOM_KILLED,
        "OOMKilled",
        137,
    )


async def test_pod_deleted_from_outside(target: Target) -> None:
    spec = BuildSpec(
        build_id=_id("gone"), steps=[_step("long", "echo one", "echo two", "sleep 60")]
    )
    async with target.runtime(delete_timeout=30) as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "long")
        lines = []
        with anyio.fail_after(60):
            async for line in rt.tail_container(build, "long"):
                lines.append(line)
                if len(lines) == 2:
                    await target.delete_pod_from_outside(build.pod_name)
            with pytest.raises(PodGoneError) as caught:
                await rt.wait_container(build, "long")
        assert lines == [b"one", b"two"]
        assert caught.value.step == "long"
        assert "deleted" in str(caught.value)
        await rt.remove_build(build)


async def test_log_stream_resumed_after_cuts(target: Target) -> None:
    count = 60
    spec = BuildSpec(
        build_id=_id("cut"),
        steps=[_step("ticker", f"for i in $(seq 1 {count}); do echo line-$i; sleep 0.05; done")],
    )
    recorder = PortRecorder(target.cluster)
    target.cluster = recorder
    async with target.runtime() as rt:
        build = await rt.setup_build(spec)
        await rt.assemble_build(build)
        await rt.run_container(build, "ticker")
        lines: list[bytes] = []
        with anyio.fail_after(90):
            async for line in rt.tail_container(build, "ticker"):
                lines.append(line)
                if len(lines) in (10, 25, 40):
                    target.cut_connections()
            result = await rt.wait_container(build, "ticker")
        await rt.remove_build(build)
    assert lines == [f"line-{i}".encode() for i in range(1, count + 1)]
    assert result.exit_code == 0
    # The cuts took effect: the log stream broke three times and was resumed each time.
    assert len(recorder.broken("log")) == 3, recorder.unavailable
    assert target.requests.count(Request("log", "pods")) == 4


@pytest.mark.parametrize(
    "steps",
    # Fifty steps take two minutes on the local cluster, a second on FakeCluster.
    [1, 10, pytest.param(50, marks=[pytest.mark.slow] if target_kind() == "cluster" else [])],
)
async def test_request_budget_per_build(target: Target, steps: int) -> None:
    spec = BuildSpec(
        build_id=_id("budget"), steps=[_step(f"s{i}", f"echo {i}") for i in range(steps)]
    )
    before = len(target.requests)
    async with target.runtime() as rt:
        seen = await run_build(rt, spec, remove=False)
        for i in range(steps):  # what the runtime knows costs no request
            assert await rt.inspect_container(seen.build, f"s{i}") == seen.results[f"s{i}"]
        await rt.remove_build(seen.build)
    assert list(seen.lines.values()) == [[str(i).encode()] for i in range(steps)]
    # The worker's Lease requests are per worker (see README, Requests per build).
    sent = Counter((r.verb, r.resource) for r in target.requests[before:] if r.resource != "leases")
    assert sent == {
        ("create", "pods"): 1,
        ("list", "pods"): 1,
        ("watch", "pods"): 1,
        ("watch", "events"): 1,
        ("patch", "pods"): steps,
        ("log", "pods"): steps,
        ("delete", "pods"): 1,
    }


@pytest.mark.slow
async def test_a_quiet_build_longer_than_a_bookmark_interval_keeps_its_budget(
    target: Target,
) -> None:
    # Pods watches get a bookmark a minute; events watches get none: neither may be
    # mistaken for a stalled connection and re-opened.
    spec = BuildSpec(build_id=_id("quiet"), steps=[_step("wait", "sleep 80", "echo done")])
    before = len(target.requests)
    results = await _run(target, spec)
    assert results["wait"][0] == [b"done"]
    sent = Counter((r.verb, r.resource) for r in target.requests[before:] if r.resource != "leases")
    assert sent[("watch", "pods")] == 1
    assert sent[("watch", "events")] == 1
    # create, list + watch of the pod, watch of its events, patch, log, delete.
    assert sum(sent.values()) == 7
