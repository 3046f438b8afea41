"""Builds handed from one worker to another: a worker killed with SIGKILL mid-step, a
rolling upgrade (a worker releases its builds and exits, the next adopts them), and two
workers adopting the same build at once.

On the real cluster each first worker is a separate process (see
:mod:`integration.workers`; on FakeCluster a task whose connections are severed). Each
test compares every line the adopting worker's tails delivered, and every exit code,
with what the steps printed: the same lines, once, in order, from the first line of
each step, those printed before the kill, during the gap and after alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import anyio
import anyio.abc
import pytest

from buildruntime import (
    Build,
    BuildAdoptedError,
    BuildSpec,
    PodGoneError,
    Runtime,
    StepResult,
    StepSpec,
)
from buildruntime.testing.severable import SeverableCluster

from .conftest import BUSYBOX, RECOVERY, Target, role_allows, service_account_cluster
from .handover_worker import LAST_EXIT, STEPS, expected_lines, three_steps
from .handover_workers import container_status, start_worker

pytestmark = pytest.mark.anyio

LINES = 20
PAUSE = 0.25
"""Each step prints LINES lines PAUSE seconds apart (5 s a step)."""
GAP = 1.0
"""Seconds between the first worker's end and the next worker's attach."""


def _ids(prefix: str, count: int) -> list[str]:
    suffix = uuid.uuid4().hex[:6]
    return [f"{prefix}-{suffix}-{i}" for i in range(count)]


def _worker_ids() -> tuple[str, str, str]:
    """Worker ids of one test's own: a Lease a killed worker left is no other test's."""
    suffix = uuid.uuid4().hex[:6]
    return f"worker-a-{suffix}", f"worker-b-{suffix}", f"worker-c-{suffix}"


def _expected() -> dict[str, tuple[list[bytes], int]]:
    return {
        step: (expected_lines(step, LINES), LAST_EXIT if step == STEPS[-1] else 0) for step in STEPS
    }


async def _finish(rt: Runtime, build: Build) -> dict[str, tuple[list[bytes], int | None]]:
    """What an executor does after attaching: the running step's tail and result, then
    the remaining steps run → tail → wait."""
    seen: dict[str, tuple[list[bytes], int | None]] = {}
    for step in STEPS:
        state = await rt.inspect_container(build, step)
        if state.state == "waiting":
            await rt.run_container(build, step)
        lines = [line async for line in rt.tail_container(build, step)]
        result: StepResult = await rt.wait_container(build, step)
        seen[step] = (lines, result.exit_code)
    return seen


async def test_a_worker_killed_mid_step_hands_its_build_to_a_new_worker(target: Target) -> None:
    worker_a, worker_b, _ = _worker_ids()
    [build_id] = _ids("killed", 1)
    async with anyio.create_task_group() as tg:
        async with start_worker(
            target, tg, worker_a, [build_id], lines=LINES, pause=PAUSE, mode="kill"
        ) as worker:
            await worker.wait_lines(build_id, 3)
            await worker.kill()
            before_kill = worker.seen(build_id)
        tg.cancel_scope.cancel()
    # Killed mid-step: it had seen some of the first step's lines, not all.
    assert 3 <= len(before_kill) < LINES
    assert before_kill == expected_lines(STEPS[0], LINES)[: len(before_kill)]
    left = await target.read_pod(build_id)
    assert left is not None
    assert left["metadata"]["labels"]["buildruntime.io/worker"] == worker_a
    await anyio.sleep(GAP)  # the step prints on, with no worker attached

    async with target.runtime(worker_id=worker_b) as rt:
        with anyio.fail_after(120):
            build = await rt.attach_build(build_id)
            assert [s.name for s in build.spec.steps] == list(STEPS)
            assert (await rt.inspect_container(build, STEPS[0])).state == "running"
            assert (await rt.inspect_container(build, STEPS[1])).state == "waiting"
            seen = await _finish(rt, build)
            pod = await target.read_pod(build_id)
            await rt.remove_build(build)
    assert seen == _expected()
    assert pod is not None
    assert pod["metadata"]["uid"] == left["metadata"]["uid"]
    assert pod["metadata"]["labels"]["buildruntime.io/worker"] == worker_b
    # Owned by the new worker's Lease only: the dead worker's reaped Lease cannot take it.
    owners = [(ref["kind"], ref["name"]) for ref in pod["metadata"]["ownerReferences"]]
    assert owners == [("Lease", f"buildruntime-worker-{worker_b}")]
    assert await target.read_pod(build_id) is None


async def test_a_rolling_upgrade_hands_every_running_build_over(target: Target) -> None:
    worker_a, worker_b, _ = _worker_ids()
    build_ids = _ids("rolling", 3)
    async with anyio.create_task_group() as tg:
        async with start_worker(
            target, tg, worker_a, build_ids, lines=LINES, pause=PAUSE, mode="release"
        ) as worker:
            for build_id in build_ids:
                await worker.wait_lines(build_id, 2)
            before = {build_id: await target.read_pod(build_id) for build_id in build_ids}
            released = await worker.release()
        tg.cancel_scope.cancel()
    assert sorted(released) == sorted(build_ids)
    for build_id in build_ids:
        pod = await target.read_pod(build_id)
        assert pod is not None, "a released build's pod was deleted"
        assert pod["metadata"]["annotations"]["buildruntime.io/released-by"] == worker_a

    seen: dict[str, dict[str, tuple[list[bytes], int | None]]] = {}
    after: dict[str, dict[str, object] | None] = {}
    async with target.runtime(worker_id=worker_b) as rt:

        async def adopt(build_id: str) -> None:
            build = await rt.attach_build(build_id)
            seen[build_id] = await _finish(rt, build)
            after[build_id] = await target.read_pod(build_id)
            await rt.remove_build(build)

        with anyio.fail_after(180):
            async with anyio.create_task_group() as adopters:
                for build_id in build_ids:
                    adopters.start_soon(adopt, build_id)
    for build_id in build_ids:
        assert seen[build_id] == _expected(), build_id
        old, new = before[build_id], after[build_id]
        assert old is not None
        assert new is not None
        # Not restarted: the same pod, and the first step's container the one that ran
        # under the first worker (same ID, no further restart).
        assert new["metadata"]["uid"] == old["metadata"]["uid"]
        running, ended = container_status(old, STEPS[0]), container_status(new, STEPS[0])
        assert ended["containerID"] == running["containerID"]
        assert ended["restartCount"] == running["restartCount"]
        assert "buildruntime.io/released-by" not in new["metadata"].get("annotations", {})


async def test_attaching_a_build_whose_pod_is_gone_says_so(target: Target) -> None:
    worker_b = _worker_ids()[1]
    async with target.runtime(worker_id=worker_b) as rt:
        with pytest.raises(PodGoneError) as raised:
            await rt.attach_build("no-such-build")
    assert "no build pod named no-such-build" in str(raised.value)
    assert raised.value.build_id == "no-such-build"


async def test_two_workers_adopting_one_build_exactly_one_wins(target: Target) -> None:
    worker_a, worker_b, worker_c = _worker_ids()
    [build_id] = _ids("contested", 1)
    async with target.runtime(worker_id=worker_a) as a:
        build = await a.setup_build(
            three_steps(build_id, lines=LINES, pause=PAUSE, busybox=BUSYBOX)
        )
        await a.assemble_build(build)
        await a.run_container(build, STEPS[0])
        assert await a.release_builds() == [build_id]

    outcomes: dict[str, Build | BuildAdoptedError] = {}
    # Leases renewed every second: the loser that finds the winner holding the build
    # sees it alive (renewing) within a second.
    lease = {"lease_duration": 4.0, "lease_renew_interval": 1.0}
    async with (
        target.runtime(worker_id=worker_b, **lease) as b,
        target.runtime(worker_id=worker_c, **lease) as c,
    ):

        async def adopt(rt: Runtime, name: str) -> None:
            try:
                outcomes[name] = await rt.attach_build(build_id)
            except BuildAdoptedError as error:
                outcomes[name] = error

        async with anyio.create_task_group() as tg:
            tg.start_soon(adopt, b, worker_b)
            tg.start_soon(adopt, c, worker_c)
        winners = [name for name, got in outcomes.items() if isinstance(got, Build)]
        losers = [got for got in outcomes.values() if isinstance(got, BuildAdoptedError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        [winner] = winners
        error = losers[0]
        assert error.worker == winner
        assert error.build_id == build_id
        assert winner in str(error)
        assert build_id in str(error)
        rt = b if winner == worker_b else c
        won = outcomes[winner]
        assert isinstance(won, Build)
        seen = await _finish(rt, won)
        await rt.remove_build(won)
    assert seen == _expected()


async def test_ps_lists_a_released_build_and_attach_carries_it_to_its_end(
    target: Target,
) -> None:
    """The command line, as a separate process: only the real cluster can be reached
    from one (FakeCluster's node lives in the test process)."""
    worker_a = _worker_ids()[0]
    if target.kind == "fake":
        pytest.skip("the command line reaches no FakeCluster of another process")
    [build_id] = _ids("cli", 1)
    async with target.runtime(worker_id=worker_a) as a:
        build = await a.setup_build(
            three_steps(build_id, lines=LINES, pause=PAUSE / 5, busybox=BUSYBOX)
        )
        await a.assemble_build(build)
        await a.run_container(build, STEPS[0])
        await a.release_builds()
    common = ["--namespace", target.namespace, "--kubeconfig", os.environ["KUBECONFIG"]]
    ps = await _command("ps", *common)
    [header, row] = [
        line for line in ps.stdout.splitlines() if line.startswith(("BUILD", build_id))
    ]
    assert header.split() == ["BUILD", "WORKER", "LEASE", "AGE", "STEPS"]
    assert f"{worker_a} (released)" in row
    assert row.split()[3] == "alive"  # the released build's worker exited a moment ago
    assert f"{STEPS[1]}:waiting {STEPS[2]}:waiting" in row
    attached = await _command("attach", build_id, *common)
    assert attached.returncode == LAST_EXIT, attached.stderr
    for step in STEPS:
        printed = [
            line.removeprefix(f"[{step}] ").encode()
            for line in attached.stdout.splitlines()
            if line.startswith(f"[{step}] ")
        ]
        assert printed == expected_lines(step, LINES), step
    assert await target.read_pod(build_id) is None


async def _command(*args: str) -> subprocess.CompletedProcess[str]:
    with anyio.fail_after(120):
        return await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "buildruntime", *args],
                capture_output=True,
                text=True,
                env={**os.environ, "NO_COLOR": "1"},
                check=False,
            )
        )


async def test_a_hand_over_needs_only_the_shipped_role(
    target: Target, cluster_namespace: tuple[str, str] | None
) -> None:
    """A worker adopts a dead worker's build (with a secret) as deploy/rbac.yaml's
    service account: it reads the dead worker's Lease and the build's Secret, moves the
    pod, runs the rest and removes it. The dead worker is one in this process whose
    connections were severed (see :mod:`buildruntime.testing.severable`)."""
    worker_a, worker_b, _ = _worker_ids()
    build_id = _ids("rbac-handover", 1)[0]
    token = "handover-token-2026"
    spec = BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(
                name="one",
                image=BUSYBOX,
                commands=["echo one $TOKEN", "sleep 4"],
                secrets={"TOKEN": "token"},
            ),
            StepSpec(
                name="two", image=BUSYBOX, commands=["echo two $TOKEN"], secrets={"TOKEN": "token"}
            ),
        ],
        secrets={"token": token},
    )
    dying = SeverableCluster(target.cluster)
    async with anyio.create_task_group() as tg:

        async def first_worker(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with Runtime(
                dying,  # type: ignore[arg-type]
                target.namespace,
                pause_image=target.pause_image or "registry.k8s.io/pause:3.10",
                worker_id=worker_a,
                lease_duration=2,
                lease_renew_interval=0.5,
                api_timeout=0.5,
                delete_timeout=1,
            ) as a:
                build = await a.setup_build(spec)
                await a.assemble_build(build)
                await a.run_container(build, "one")
                task_status.started()
                await anyio.sleep_forever()

        await tg.start(first_worker)
        dying.sever()
        tg.cancel_scope.cancel()
    assert await target.read_pod(build_id) is not None

    if cluster_namespace is None:
        cluster = target.cluster  # FakeCluster has no RBAC: check the requests instead
    else:
        cluster = await service_account_cluster(*cluster_namespace)
    before = len(cluster.requests)
    try:
        async with Runtime(
            cluster,
            target.namespace,
            pause_image=target.pause_image or "registry.k8s.io/pause:3.10",
            reflector=RECOVERY,
            worker_id=worker_b,
        ) as b:
            with anyio.fail_after(60):
                build = await b.attach_build(build_id)
                seen = {}
                for step in ("one", "two"):
                    if (await b.inspect_container(build, step)).state == "waiting":
                        await b.run_container(build, step)
                    lines = [line async for line in b.tail_container(build, step)]
                    seen[step] = (lines, (await b.wait_container(build, step)).exit_code)
                await b.remove_build(build)
    finally:
        if cluster is not target.cluster:
            await cluster.aclose()
    assert seen == {"one": ([b"one ********"], 0), "two": ([b"two ********"], 0)}
    used = {(r.verb, r.resource) for r in cluster.requests[before:]}
    assert {("get", "leases"), ("get", "secrets"), ("patch", "pods")} <= used
    assert all(role_allows(verb, resource) for verb, resource in used), used
