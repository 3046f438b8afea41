"""A worker process killed with SIGKILL leaves nothing behind: another worker's reaper
deletes its Lease, and Kubernetes' garbage collector its build pod and the pod's Secret;
a live worker's build goes on untouched, even one cut off from the API server for 30 s.

The killed worker is a process of its own (``worker_process.py``), started with this
interpreter, connected through a connection of its own (see ``workers.py``)."""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from dataclasses import dataclass, field

import anyio
import pytest

from buildruntime import BuildSpec, StepSpec
from buildruntime.workers import lease_name

from .conftest import BUSYBOX, JSON, Target
from .observe import run_build
from .workers import ROOT, Worker, worker_process

pytestmark = pytest.mark.anyio

CLEANUP_BOUND = 30.0
"""Seconds from a Lease's deletion until its pod and the pod's Secret are gone: the
garbage collector's delay (immediate on the fake; on the local cluster it acts on its
informers' events) plus the pod's 5 s termination grace period, with room for a busy
machine. bench/fault_matrix.py measures the actual figure."""


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _ticker(count: int, pause: float) -> StepSpec:
    script = f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo t-$i; sleep {pause}; done"
    return StepSpec(name="a", image=BUSYBOX, commands=[script])


async def _until_gone(read: object, bound: float) -> float:
    """Poll ``read()`` until it returns None; the monotonic time it was first seen so."""
    with anyio.fail_after(bound):
        while await read() is not None:  # type: ignore[operator]
            await anyio.sleep(0.1)
    return time.monotonic()


@dataclass
class Cleanup:
    """When the dead worker was killed, its Lease reaped, its pod and Secret gone."""

    killed: float = 0.0
    reaped: float = 0.0
    pod_gone: float = 0.0
    secret_gone: float = 0.0
    live_lease_held: list[bool] = field(default_factory=list)


async def test_a_killed_workers_lease_is_reaped_and_its_pod_and_secret_collected(
    target: Target,
) -> None:
    dead_id, live_id = f"dead-{_uid()}", f"live-{_uid()}"
    duration, grace, interval = 1.0, 1.0, 0.25
    async with worker_process(
        target, dead_id, f"dead-{_uid()}", "--lease-duration", "1", "--renew-interval", "0.25"
    ) as dead:
        await dead.started()
        secret = f"{dead.pod_name}-secrets"
        pod = await target.read_pod(dead.pod_name)
        assert pod is not None
        lease = await target.read_lease(lease_name(dead_id))
        assert lease is not None
        # The pod is the dead worker's: labelled with it and owned by its Lease; the
        # Secret is owned by the pod.
        assert pod["metadata"]["labels"]["buildruntime.io/worker"] == dead_id
        assert [(o["kind"], o["uid"]) for o in pod["metadata"]["ownerReferences"]] == [
            ("Lease", lease["metadata"]["uid"])
        ]
        stored = await target.read_secret(secret)
        assert stored is not None
        assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [pod["metadata"]["uid"]]
        seen = Cleanup()

        async def kill_and_watch(build: object, lines: dict[str, list[bytes]]) -> None:
            dead.kill()
            seen.killed = time.monotonic()
            seen.reaped = await _until_gone(
                lambda: target.read_lease(lease_name(dead_id)), duration + grace + 10
            )
            seen.live_lease_held.append(await target.read_lease(lease_name(live_id)) is not None)
            seen.pod_gone = await _until_gone(lambda: target.read_pod(dead.pod_name), CLEANUP_BOUND)
            seen.secret_gone = await _until_gone(lambda: target.read_secret(secret), CLEANUP_BOUND)

        # The reaping worker runs a build of its own meanwhile (15 s of output).
        spec = BuildSpec(build_id=f"live-{_uid()}", steps=[_ticker(60, 0.25)])
        async with target.runtime(
            worker_id=live_id,
            reap_grace=grace,
            reap_interval=interval,
            lease_duration=2,
            lease_renew_interval=0.5,
        ) as rt:
            observed = await run_build(rt, spec, during=kill_and_watch)
        assert observed.outcome() == {"a": ([f"t-{i}".encode() for i in range(1, 61)], 0)}
    # The dead worker's Lease went once it had been unrenewed for its duration plus the
    # grace (judged every 0.25 s, from its last renewal up to 0.25 s before the kill).
    assert seen.reaped - seen.killed <= duration + grace + 2 * interval + 1.0
    assert seen.live_lease_held == [True]
    assert seen.pod_gone - seen.reaped <= CLEANUP_BOUND
    assert seen.secret_gone - seen.reaped <= CLEANUP_BOUND


async def test_a_killed_workers_secret_goes_with_its_pod(target: Target) -> None:
    """With no reaper at all: the pod deleted by someone else takes its Secret."""
    worker_id = f"gone-{_uid()}"
    async with worker_process(target, worker_id, f"sec-{_uid()}") as worker:
        await worker.started()
        secret = f"{worker.pod_name}-secrets"
        assert await target.read_secret(secret) is not None
        worker.kill()
        await worker.process.wait()
    await target.delete_pod_from_outside(worker.pod_name)
    await _until_gone(lambda: target.read_pod(worker.pod_name), CLEANUP_BOUND)
    await _until_gone(lambda: target.read_secret(secret), CLEANUP_BOUND)
    # The killed worker's Lease is still there (nobody reaped it): its deletion takes
    # nothing more with it.
    assert await target.read_lease(lease_name(worker_id)) is not None


OUTAGE = 30.0


@pytest.mark.slow
async def test_a_worker_cut_off_for_thirty_seconds_is_not_reaped(target: Target) -> None:
    """Worker W (default Lease settings: 30 s, renewed every 10 s) is cut off from the
    API server for 30 s while another worker reaps every second with the default grace
    (30 s). A worker killed just before the outage, with a 1 s Lease, is reaped during
    it: the reaper was at work. W's Lease stays, W renews it as soon as it is back, and
    its build ends with every line."""
    dead_id, cut_id = f"dead-{_uid()}", f"cut-{_uid()}"
    async with (
        worker_process(
            target, dead_id, f"dead-{_uid()}", "--lease-duration", "1", "--renew-interval", "0.5"
        ) as dead,
        worker_process(target, cut_id, f"cut-{_uid()}", "--ticks", "110", "--finish") as cut,
    ):
        await dead.started()
        await cut.started()
        async with target.runtime(worker_id=f"reaper-{_uid()}", reap_interval=1.0):
            dead.kill()
            killed = time.monotonic()
            await anyio.sleep(5)
            cut.cut(OUTAGE)
            cut_at = time.monotonic()
            reaped, renewals = await _watch_leases(target, cut, dead_id, cut_at + OUTAGE + 15)
            result = await _result(cut)
    assert reaped is not None, "the killed worker's Lease was never reaped"
    assert cut_at < reaped < cut_at + OUTAGE, (killed, cut_at, reaped)
    # W's Lease was there every time it was looked at, always the same one, and was not
    # renewed for the whole outage (the fault happened), then renewed at once.
    uids = {uid for uid, _, _ in renewals}
    assert len(uids) == 1, renewals
    times = [at for _, _, at in renewals]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= OUTAGE, gaps
    back = [at for at in times if at > cut_at + 1]
    assert back, times
    assert back[0] <= cut_at + OUTAGE + 3, (cut_at, times)
    assert result == {"lines": [f"tick-{i}" for i in range(1, 111)], "exit_code": 0}


async def _watch_leases(
    target: Target, cut: Worker, dead_id: str, until: float
) -> tuple[float | None, list[tuple[str, str, float]]]:
    """Poll both Leases until ``until``: when the dead one went, and each distinct
    renewal of the cut worker's (uid, renewTime, when first seen)."""
    reaped: float | None = None
    renewals: list[tuple[str, str, float]] = []
    while time.monotonic() < until:
        if reaped is None and await target.read_lease(lease_name(dead_id)) is None:
            reaped = time.monotonic()
        lease: JSON | None = await target.read_lease(lease_name(cut.worker_id))
        assert lease is not None, "the cut-off worker's Lease was deleted"
        assert await target.read_pod(cut.pod_name) is not None
        key = (lease["metadata"]["uid"], lease["spec"]["renewTime"])
        if not renewals or renewals[-1][:2] != key:
            renewals.append((*key, time.monotonic()))
        await anyio.sleep(0.25)
    return reaped, renewals


async def _result(worker: Worker) -> JSON:
    with anyio.fail_after(120):
        return await worker.result()


async def test_buildruntime_gc_reaps_a_killed_worker_once(target: Target) -> None:
    """``buildruntime gc`` as a user runs it: the killed worker's Lease goes, the
    command names it and its pod, and the pod and its Secret follow."""
    if target.kind == "fake":
        pytest.skip("the command runs in a process of its own: FakeCluster is in this one")
    dead_id = f"dead-{_uid()}"
    async with worker_process(
        target, dead_id, f"gc-{_uid()}", "--lease-duration", "1", "--renew-interval", "0.25"
    ) as dead:
        await dead.started()
        dead.kill()
        await dead.process.wait()
    await anyio.sleep(1.5)  # unrenewed for longer than its 1 s
    command = [sys.executable, "-m", "buildruntime", "gc", "--namespace", target.namespace]
    command += ["--kubeconfig", target.kubeconfig, "--grace", "0"]  # type: ignore[attr-defined]
    done = await anyio.run_process(command, cwd=ROOT, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    assert f"removed Lease {lease_name(dead_id)} of worker {dead_id}" in out
    assert f"its pods go with it: {dead.pod_name}" in out
    assert await target.read_lease(lease_name(dead_id)) is None
    await _until_gone(lambda: target.read_pod(dead.pod_name), CLEANUP_BOUND)
    await _until_gone(lambda: target.read_secret(f"{dead.pod_name}-secrets"), CLEANUP_BOUND)
