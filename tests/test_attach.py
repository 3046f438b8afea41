"""Adopting a build another worker started (``attach_build``) and leaving builds to
another (``release_builds``), on FakeCluster: the spec the pod carries, secrets masked
after the hand-over, timeouts still enforced, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from buildruntime import (
    BuildSpec,
    ExistingSecret,
    Failure,
    RegistryCredentials,
    Runtime,
    RuntimeSettings,
    SpecError,
    StepSpec,
    StepTimeoutError,
    UsageError,
    Workspace,
)
from buildruntime.cli.ps import rows, table
from buildruntime.labels import WORKER, managed_selector
from buildruntime.spec import render_pod
from buildruntime.spec_record import SPEC_ANNOTATION, annotate, read
from buildruntime.testing import FakeCluster

from .conftest import FAST_RECOVERY

pytestmark = pytest.mark.anyio

TOKEN = "tok-3f9a-secret"


def _full_spec() -> BuildSpec:
    return BuildSpec(
        build_id="full-1",
        steps=[
            StepSpec(
                name="build",
                image="busybox",
                commands=["echo $TOKEN"],
                env={"A": "1"},
                timeout=30,
                secrets={"TOKEN": "token", "DB": ExistingSecret("db-creds", "password")},
                resources={"requests": {"cpu": "1"}},
            ),
            StepSpec(name="db", image="postgres:16", detach=True, ports=[5432]),
        ],
        labels={"team": "ci"},
        timeout=600,
        workspace=Workspace(size_limit="1Gi"),
        secrets={"token": TOKEN},
        registries={"registry.example.com": RegistryCredentials("ci", "reg-pass-123")},
        tolerations=[{"key": "ci", "operator": "Exists"}],
    )


def test_the_pod_carries_the_spec_without_its_secret_values() -> None:
    spec = _full_spec()
    pod = render_pod(spec, namespace="ci", pause_image="registry.k8s.io/pause:3.10")
    annotate(pod, spec)
    text = pod["metadata"]["annotations"][SPEC_ANNOTATION]
    assert TOKEN not in text
    assert "reg-pass-123" not in text
    recorded = read(
        pod,
        secret_values={"token": TOKEN},
        registry_passwords={"registry.example.com": "reg-pass-123"},
    )
    assert recorded.spec == spec
    assert recorded.spec.step("build").timeout == 30


def test_a_spec_too_large_for_an_annotation_is_refused_naming_its_field() -> None:
    async def setup() -> None:
        async with FakeCluster(images=None) as cluster, Runtime(cluster, "ci") as rt:
            await rt.setup_build(
                BuildSpec(
                    build_id="huge-1",
                    steps=[
                        StepSpec(name="small", image="busybox", commands=["true"]),
                        StepSpec(name="big", image="busybox", commands=["echo " + "x" * 300_000]),
                    ],
                )
            )

    with pytest.raises(SpecError) as raised:
        anyio.run(setup)
    assert raised.value.field == "steps[big].commands"
    assert "256 KiB" in str(raised.value)


def test_the_worker_label_is_the_runtimes_own() -> None:
    with pytest.raises(SpecError) as raised:
        BuildSpec(build_id="b", steps=[StepSpec(name="s", image="busybox")], labels={WORKER: "me"})
    assert WORKER in raised.value.field
    with pytest.raises(SpecError) as bad:
        RuntimeSettings(worker_id="Not A Label")
    assert bad.value.field == "worker_id"


async def test_an_adopted_builds_lines_stay_masked_and_its_timeout_counts_from_its_start(
    cluster: FakeCluster,
) -> None:
    spec = BuildSpec(
        build_id="masked-1",
        steps=[
            StepSpec(
                name="leak",
                image="busybox",
                commands=["echo before $TOKEN", "sleep 1", "echo after $TOKEN", "sleep 60"],
                secrets={"TOKEN": "token"},
                timeout=3,
            )
        ],
        secrets={"token": TOKEN},
    )
    async with Runtime(cluster, "ci", worker_id="worker-a", reflector=FAST_RECOVERY) as a:
        build = await a.setup_build(spec)
        await a.assemble_build(build)
        await a.run_container(build, "leak")
        await anyio.sleep(1.5)
        assert await a.release_builds() == ["masked-1"]
        with pytest.raises(UsageError):
            await a.inspect_container(build, "leak")
    async with Runtime(cluster, "ci", worker_id="worker-b", reflector=FAST_RECOVERY) as b:
        adopted = await b.attach_build("masked-1")
        started = anyio.current_time()
        lines = [line async for line in b.tail_container(adopted, "leak")]
        with pytest.raises(StepTimeoutError):
            await b.wait_container(adopted, "leak")
        # Stopped at 3 s from the step's start (1.5 s of it before the hand-over, and
        # startedAt has whole seconds), not 3 s from the attach.
        assert anyio.current_time() - started < 3.0 + 5.0 + 1.0
        result = await b.inspect_container(adopted, "leak")
        await b.remove_build(adopted)
    assert lines == [b"before ********", b"after ********"]
    assert result.failure is Failure.TIMEOUT
    assert cluster.secret("ci", "masked-1-secrets") is None


async def test_attaching_a_build_twice_or_from_itself_is_a_usage_error(
    cluster: FakeCluster,
) -> None:
    spec = BuildSpec(
        build_id="twice-1", steps=[StepSpec(name="s", image="busybox", commands=["sleep 30"])]
    )
    async with Runtime(cluster, "ci", worker_id="worker-a", reflector=FAST_RECOVERY) as a:
        build = await a.setup_build(spec)
        await a.assemble_build(build)
        with pytest.raises(UsageError, match="already in this runtime"):
            await a.attach_build("twice-1")
        await a.release_builds()
        adopted = await a.attach_build("twice-1")
        assert (await a.inspect_container(adopted, "s")).state == "waiting"
        await a.remove_build(adopted)


async def test_a_released_build_is_left_alone_by_its_first_runtime(cluster: FakeCluster) -> None:
    spec = BuildSpec(
        build_id="left-1", steps=[StepSpec(name="s", image="busybox", commands=["sleep 30"])]
    )
    async with Runtime(cluster, "ci", worker_id="worker-a", reflector=FAST_RECOVERY) as a:
        build = await a.setup_build(spec)
        await a.assemble_build(build)
        await a.run_container(build, "s")
        before = len(cluster.requests)
        assert await a.release_builds() == ["left-1"]
        await a.remove_build(build)  # an executor's `finally`: the build is not its own now
    released = cluster.requests[before:]
    assert {(r.verb, r.resource) for r in released} == {("list", "pods"), ("patch", "pods")}
    pod = await cluster.get_pod("ci", "left-1")
    assert pod["metadata"]["annotations"]["buildruntime.io/released-by"] == "worker-a"
    assert cluster.open_watches == 0
    assert cluster.open_log_streams == 0
    async with Runtime(cluster, "ci", worker_id="worker-b", reflector=FAST_RECOVERY) as b:
        adopted = await b.attach_build("left-1")
        assert (await b.inspect_container(adopted, "s")).state == "running"
        await b.remove_build(adopted)


async def test_ps_shows_each_builds_worker_and_step_states(cluster: FakeCluster) -> None:
    spec = BuildSpec(
        build_id="ps-1",
        steps=[
            StepSpec(name="first", image="busybox", commands=["exit 4"]),
            StepSpec(name="second", image="busybox", commands=["sleep 30"]),
            StepSpec(name="third", image="busybox", commands=["true"]),
        ],
    )
    async with Runtime(cluster, "ci", worker_id="worker-a", reflector=FAST_RECOVERY) as a:
        build = await a.setup_build(spec)
        await a.assemble_build(build)
        await a.run_container(build, "first")
        await a.wait_container(build, "first")
        await a.run_container(build, "second")
        await a.release_builds()
        listed = await cluster.list("pods", "ci", label_selector=managed_selector())
        leases = await cluster.list_leases("ci", label_selector=managed_selector())
        by_name = {lease["metadata"]["name"]: lease for lease in leases["items"]}
        [header, line] = table(rows(listed["items"], datetime.now(UTC), by_name))
    assert header.split() == ["BUILD", "WORKER", "LEASE", "AGE", "STEPS"]
    assert line.split()[:4] == ["ps-1", "worker-a", "(released)", "alive"]
    assert line.endswith("first:exit 4 second:running third:waiting")
    # The worker exited: its Lease is left to lapse, since it still owns the released
    # build (deleting it would have the garbage collector delete the build).
    assert cluster.lease("ci", "buildruntime-worker-worker-a") is not None
    assert await cluster.get_pod("ci", "ps-1") is not None
    [_, without] = table(rows(listed["items"], datetime.now(UTC), {}))
    assert without.split()[:4] == ["ps-1", "worker-a", "(released)", "gone"]


async def test_a_step_that_ended_before_the_hand_over_reports_its_exit_code_and_lines(
    cluster: FakeCluster,
) -> None:
    spec = BuildSpec(
        build_id="ended-1",
        steps=[
            StepSpec(name="first", image="busybox", commands=["echo one", "echo two", "exit 4"]),
            StepSpec(name="second", image="busybox", commands=["echo three"]),
        ],
    )
    async with Runtime(cluster, "ci", worker_id="worker-a", reflector=FAST_RECOVERY) as a:
        build = await a.setup_build(spec)
        await a.assemble_build(build)
        await a.run_container(build, "first")
        assert (await a.wait_container(build, "first")).exit_code == 4
        await a.release_builds()
    async with Runtime(cluster, "ci", worker_id="worker-b", reflector=FAST_RECOVERY) as b:
        adopted = await b.attach_build("ended-1")
        ended = await b.inspect_container(adopted, "first")
        assert (ended.state, ended.exit_code, ended.failure) == ("terminated", 4, Failure.APP_ERROR)
        assert [line async for line in b.tail_container(adopted, "first")] == [b"one", b"two"]
        assert (await b.wait_container(adopted, "first")).exit_code == 4
        await b.run_container(adopted, "second")
        assert [line async for line in b.tail_container(adopted, "second")] == [b"three"]
        assert (await b.wait_container(adopted, "second")).exit_code == 0
        await b.remove_build(adopted)
