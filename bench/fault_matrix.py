"""The fault matrix as figures: per fault, builds run, log lines expected, lost,
duplicated, wrong results, leaked streams or threads and orphans (pods or Secrets left
behind). Every figure but the first two must be 0.

    .venv/bin/python bench/fault_matrix.py [--builds 4] [--lines 200] [--append]
    .venv/bin/python bench/fault_matrix.py --reaper-only --kubeconfig PATH [--append]

Runs on FakeCluster (its faults are exact and repeatable); the same faults on the local
cluster are the integration suite's (integration/test_faults.py). The reaper's row
(worker processes killed with SIGKILL mid-step, their Leases reaped by a live worker,
their pods and Secrets collected) also runs on a real cluster with ``--kubeconfig``,
where the garbage collector and the pods' termination set the time to clean.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc

from buildruntime import (
    Build,
    BuildAdoptedError,
    BuildSpec,
    Failure,
    PodGoneError,
    Runtime,
    StepSpec,
)
from buildruntime.cluster.port import Cluster
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.labels import managed_selector
from buildruntime.testing import FakeCluster
from buildruntime.testing.remote import FakeClusterServer
from buildruntime.testing.severable import SeverableCluster

RECOVERY = ReflectorSettings(backoff_initial=0.05, backoff_max=0.5)
Fault = Callable[[FakeCluster], Awaitable[None]]


@dataclasses.dataclass
class Row:
    fault: str
    injected: int = 0
    builds: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_results: int = 0
    leaks: int = 0
    orphans: int = 0
    clean: str = "–"
    """For a fault that leaves something to clean up: how long it took."""


def _ticker(name: str, lines: int, pause: float = 0.005) -> StepSpec:
    script = f"i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo {name}-$i; sleep {pause}; done"
    return StepSpec(name=name, image="busybox", commands=[script])


def _repeat(every: float, action: Callable[[FakeCluster], None], row: Row) -> Fault:
    async def run(cluster: FakeCluster) -> None:
        while True:
            await anyio.sleep(every)
            action(cluster)
            row.injected += 1

    return run


def _once(after: float, action: Callable[[FakeCluster], None], row: Row) -> Fault:
    async def run(cluster: FakeCluster) -> None:
        await anyio.sleep(after)
        action(cluster)
        row.injected += 1

    return run


async def _build(rt: Runtime, build_id: str, lines: int, row: Row) -> None:
    spec = BuildSpec(build_id=build_id, steps=[_ticker("a", lines), _ticker("b", lines)])
    build = await rt.setup_build(spec)
    await rt.assemble_build(build)
    await _finish(rt, build, lines, row)


async def _finish(rt: Runtime, build: Build, lines: int, row: Row) -> None:
    """Each step of ``build`` (started here unless it ran already) tailed and awaited,
    its lines counted against what it printed; then the build removed."""
    for step in build.spec.steps:
        if (await rt.inspect_container(build, step.name)).state == "waiting":
            await rt.run_container(build, step.name)
        got = [line async for line in rt.tail_container(build, step.name)]
        result = await rt.wait_container(build, step.name)
        want = [f"{step.name}-{i}".encode() for i in range(1, lines + 1)]
        counts = Counter(got)
        row.expected += len(want)
        row.lost += sum(1 for line in want if line not in counts)
        row.duplicated += sum(n - 1 for n in counts.values() if n > 1)
        row.wrong_results += int(result.exit_code != 0)
    await rt.remove_build(build)
    row.builds += 1


async def _scenario(
    index: int, name: str, make_fault: Callable[[Row], Fault], builds: int, lines: int
) -> Row:
    row = Row(name)
    threads = threading.active_count()
    async with FakeCluster(images={"busybox"}, keep_history=False) as cluster:
        async with (
            Runtime(cluster, namespace="ci", reflector=RECOVERY) as rt,
            anyio.create_task_group() as faults,
        ):
            faults.start_soon(make_fault(row), cluster)
            async with anyio.create_task_group() as tg:
                for i in range(builds):
                    tg.start_soon(_build, rt, f"fault{index}-{i}", lines, row)
            faults.cancel_scope.cancel()
        cluster.faults.clear()
        row.leaks += cluster.open_watches + cluster.open_log_streams
    await anyio.sleep(0.5)
    row.leaks += max(threading.active_count() - threads, 0)
    return row


async def _deleted_from_outside(builds: int) -> Row:
    """The pod deleted mid-step: lines printed before the deletion all arrive, then
    PodGoneError; nothing is left open."""
    row = Row("pod deleted from outside")
    async with FakeCluster(images={"busybox"}, keep_history=False) as cluster:
        async with Runtime(cluster, namespace="ci", reflector=RECOVERY) as rt:
            for i in range(builds):
                step = StepSpec(
                    name="s", image="busybox", commands=["echo 1; echo 2; echo 3", "sleep 30"]
                )
                build = await rt.setup_build(BuildSpec(build_id=f"gone-{i}", steps=[step]))
                await rt.assemble_build(build)
                await rt.run_container(build, "s")
                got = []
                async for line in rt.tail_container(build, "s"):
                    got.append(line)
                    if len(got) == 3:
                        await cluster.delete_pod("ci", build.pod_name)
                        row.injected += 1
                row.expected += 3
                row.lost += 3 - len(set(got))
                row.duplicated += len(got) - len(set(got))
                try:
                    await rt.wait_container(build, "s")
                    row.wrong_results += 1
                except PodGoneError:
                    pass
                await rt.remove_build(build)
                row.builds += 1
        row.leaks += cluster.open_watches + cluster.open_log_streams
    return row


async def _oom(builds: int) -> Row:
    row = Row("container OOM-killed")
    async with FakeCluster(images={"busybox"}, keep_history=False) as cluster:
        async with Runtime(cluster, namespace="ci", reflector=RECOVERY) as rt:
            for i in range(builds):
                step = StepSpec(name="s", image="busybox", commands=["echo before", "sleep 30"])
                build = await rt.setup_build(BuildSpec(build_id=f"oom-{i}", steps=[step]))
                await rt.assemble_build(build)
                await rt.run_container(build, "s")
                tail = rt.tail_container(build, "s")
                first = await tail.__anext__()
                await cluster.kill_container("ci", build.pod_name, "s")
                row.injected += 1
                rest = [line async for line in tail]
                result = await rt.wait_container(build, "s")
                row.expected += 1
                row.lost += int(first != b"before")
                row.duplicated += len(rest)
                row.wrong_results += int(result.failure != Failure.OOM_KILLED)
                await rt.remove_build(build)
                row.builds += 1
        row.leaks += cluster.open_watches + cluster.open_log_streams
    return row


HANDOVER_PAUSE = 0.01
"""Seconds between a hand-over build's lines: its first step still runs at the hand-over."""


async def _first_worker(
    port: SeverableCluster,
    build_ids: list[str],
    lines: int,
    release: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    """A worker that starts ``build_ids``' first steps, then releases them when
    ``release`` is set (or is killed: its port severed, its task cancelled)."""
    async with Runtime(
        port,  # type: ignore[arg-type]
        namespace="ci",
        reflector=RECOVERY,
        worker_id="worker-a",
        api_timeout=0.5,
        delete_timeout=1.0,
        # A killed worker's Lease lapses soon, so that the next attaches soon.
        lease_duration=2.0,
        lease_renew_interval=0.5,
    ) as rt:
        for build_id in build_ids:
            steps = [_ticker(name, lines, HANDOVER_PAUSE) for name in ("a", "b")]
            build = await rt.setup_build(BuildSpec(build_id=build_id, steps=steps))
            await rt.assemble_build(build)
            await rt.run_container(build, "a")
        task_status.started()
        await release.wait()
        await rt.release_builds()


async def _handover(name: str, builds: int, lines: int, *, kill: bool, contested: bool) -> Row:
    """Worker A starts the builds' first steps and is killed mid-step or releases them;
    then worker B (and, contested, worker C at the same time) attaches each and runs it
    to its end. A is a runtime of this process: "killed", its connections are severed
    and its task cancelled, so nothing of its exit reaches the cluster
    (integration/test_handover.py kills a worker process with SIGKILL instead)."""
    row = Row(name)
    build_ids = [f"handover-{i}" for i in range(builds)]
    async with FakeCluster(images={"busybox"}, keep_history=False) as cluster:
        port = SeverableCluster(cluster)
        release = anyio.Event()
        async with anyio.create_task_group() as first:
            await first.start(_first_worker, port, build_ids, lines, release)
            await anyio.sleep(lines * HANDOVER_PAUSE / 3)
            if kill:
                port.sever()
                first.cancel_scope.cancel()
            else:
                release.set()
            row.injected += 1
        # Leases renewed every second: a loser that finds the winner holding the build
        # sees it alive within a second.
        lease = {"lease_duration": 4.0, "lease_renew_interval": 1.0}
        async with (
            Runtime(cluster, "ci", reflector=RECOVERY, worker_id="worker-b", **lease) as b,
            Runtime(cluster, "ci", reflector=RECOVERY, worker_id="worker-c", **lease) as c,
        ):

            async def adopt(build_id: str) -> None:
                adopters = [b, c] if contested else [b]
                won: list[tuple[Runtime, Build]] = []

                async def attach(rt: Runtime) -> None:
                    with contextlib.suppress(BuildAdoptedError):
                        won.append((rt, await rt.attach_build(build_id)))

                async with anyio.create_task_group() as tg:
                    for rt in adopters:
                        tg.start_soon(attach, rt)
                row.wrong_results += int(len(won) != 1)
                for rt, build in won[:1]:
                    await _finish(rt, build, lines, row)

            async with anyio.create_task_group() as tg:
                for build_id in build_ids:
                    tg.start_soon(adopt, build_id)
        left = await cluster.list("pods", "ci", label_selector=managed_selector())
        row.orphans += len(left["items"])
        row.leaks += cluster.open_watches + cluster.open_log_streams
    return row


async def _handovers(builds: int, lines: int) -> list[Row]:
    """The hand-over rows: a killed worker's builds, a rolling upgrade, two adopters."""
    return [
        await _handover(
            "worker killed mid-step, another attaches", builds, lines, kill=True, contested=False
        ),
        await _handover(
            "rolling upgrade: released, another attaches",
            builds,
            lines,
            kill=False,
            contested=False,
        ),
        await _handover(
            "two workers adopt each build at once", builds, lines, kill=False, contested=True
        ),
    ]


async def main(builds: int, lines: int) -> list[Row]:
    scenarios: list[tuple[str, Callable[[Row], Fault]]] = [
        ("none (baseline)", lambda row: _once(3600, lambda c: None, row)),
        (
            "watches dropped every 0.3 s",
            lambda row: _repeat(0.3, lambda c: c.faults.drop_watches(), row),
        ),
        (
            "410 Gone (compaction) every 0.7 s",
            lambda row: _repeat(0.7, lambda c: c.faults.expire(), row),
        ),
        ("API outage of 3 s", lambda row: _once(0.5, lambda c: c.faults.outage(3), row)),
        (
            "log streams cut mid-line every 0.1 s",
            lambda row: _repeat(0.1, lambda c: c.faults.cut_logs(), row),
        ),
        (
            "100 ms latency on every request",
            lambda row: _once(0, lambda c: c.faults.latency(0.1), row),
        ),
    ]
    rows = [
        await _scenario(i, name, make, builds, lines) for i, (name, make) in enumerate(scenarios)
    ]
    rows.append(await _deleted_from_outside(builds))
    rows.append(await _oom(builds))
    rows.append(await _workers_killed_on_fake(builds, lines))
    rows += await _handovers(builds, lines)
    return rows


ROOT = Path(__file__).parent.parent
DEAD_LEASE = 1.0
"""The killed workers' lease_duration; the reaper's grace is the same."""
REAP_INTERVAL = 0.25


async def _workers_killed(
    cluster: Cluster,
    namespace: str,
    connection: list[str],
    exists: Callable[[str, str], Awaitable[bool]],
    builds: int,
    lines: int,
    **settings: object,
) -> Row:
    """``builds`` worker processes, each with a build holding a Secret and a step
    running, are killed with SIGKILL at once, while a live worker runs ``builds`` builds
    and reaps. Time to clean: from the kill until every dead worker's pod and Secret is
    gone (max, and the part of it past lease duration + grace)."""
    row = Row("worker SIGKILLed mid-step (a live worker's reaper, then the GC)")
    run = uuid.uuid4().hex[:6]
    processes, pods = [], []
    try:
        for i in range(builds):
            process = await anyio.open_process(
                [
                    sys.executable,
                    "-m",
                    "integration.worker_process",
                    *("--namespace", namespace, "--worker-id", f"dead-{run}-{i}"),
                    *("--build-id", f"dead-{run}-{i}", *connection),
                    *("--lease-duration", str(DEAD_LEASE), "--renew-interval", "0.25"),
                ],
                cwd=ROOT,
                stderr=None,
            )
            processes.append(process)
        for process in processes:
            assert process.stdout is not None
            words: list[str] = []
            with anyio.fail_after(120):
                buffer = b""
                while b"\n" not in buffer:
                    buffer += await process.stdout.receive()
                words = buffer.split(b"\n")[0].decode().split()
            assert words[0] == "RUNNING", words
            pods.append(words[2])
        async with (
            Runtime(
                cluster,
                namespace,
                reflector=RECOVERY,
                worker_id=f"live-{run}",
                reap_grace=DEAD_LEASE,
                reap_interval=REAP_INTERVAL,
                **settings,  # type: ignore[arg-type]
            ) as rt,
            anyio.create_task_group() as tg,
        ):
            for i in range(builds):
                tg.start_soon(_build, rt, f"live-{run}-{i}", lines, row)
            for process in processes:
                process.send_signal(signal.SIGKILL)
                row.injected += 1
            killed = time.monotonic()
            left = {
                (kind, name)
                for pod in pods
                for kind, name in (("pod", pod), ("secret", f"{pod}-secrets"))
            }
            with anyio.move_on_after(120):
                while left:
                    for item in list(left):
                        if not await exists(*item):
                            left.discard(item)
                    await anyio.sleep(0.1)
            took = time.monotonic() - killed
            row.orphans = len(left)
            row.clean = (
                f"{took:.1f} s from the kill (lease {DEAD_LEASE:g} s + grace {DEAD_LEASE:g} s "
                f"+ {took - 2 * DEAD_LEASE:.1f} s)"
            )
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()
    return row


async def _workers_killed_on_fake(builds: int, lines: int) -> Row:
    async with FakeCluster(images={"busybox"}, keep_history=False) as cluster:
        with tempfile.TemporaryDirectory(prefix="br-bench-") as directory:
            server = FakeClusterServer(cluster, Path(directory) / "api.sock")
            async with server.serving():

                async def exists(kind: str, name: str) -> bool:
                    store = "pods" if kind == "pod" else "secrets"
                    return cluster._server.copy(store, "ci", name) is not None

                row = await _workers_killed(
                    cluster, "ci", ["--socket", str(server.path)], exists, builds, lines
                )
        row.leaks += cluster.open_watches + cluster.open_log_streams
    return row


async def _workers_killed_on_cluster(kubeconfig: str, builds: int, lines: int) -> Row:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from buildruntime.cluster.kube import KubeCluster

    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    pause = os.environ.get("BUILDRUNTIME_PAUSE_IMAGE", "localhost/pause:3.10")

    async def exists(kind: str, name: str) -> bool:
        read = core.read_namespaced_pod if kind == "pod" else core.read_namespaced_secret
        try:
            await anyio.to_thread.run_sync(lambda: read(name, namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    try:
        with anyio.fail_after(90):  # the namespace's default ServiceAccount
            while True:
                try:
                    core.read_namespaced_service_account("default", namespace)
                    break
                except ApiException:
                    await anyio.sleep(0.2)
        server = str(api.configuration.host)
        connection = ["--kubeconfig", kubeconfig, "--server", server, "--pause-image", pause]
        async with KubeCluster.from_kubeconfig(kubeconfig) as cluster:
            row = await _workers_killed(
                cluster, namespace, connection, exists, builds, lines, pause_image=pause
            )
            row.leaks += cluster.open_watches + cluster.open_log_streams
    finally:
        core.delete_namespace(namespace)
        api.close()
    row.fault += " — local cluster"
    return row


def render(rows: list[Row]) -> str:
    head = (
        "| fault | times injected | builds run | lines expected | lines lost | duplicates "
        "| wrong results | leaks | orphans | time to clean |"
    )
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(
            f"| {r.fault} | {r.injected} | {r.builds} | {r.expected} | {r.lost} | "
            f"{r.duplicated} | {r.wrong_results} | {r.leaks} | {r.orphans} | {r.clean} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=4)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument(
        "--append", action="store_true", help="append the table to bench/RESULTS.md"
    )
    parser.add_argument("--reaper-only", action="store_true", help="only the row of workers killed")
    parser.add_argument(
        "--kubeconfig", help="run the reaper's row on this cluster (with --reaper-only)"
    )
    parser.add_argument(
        "--handover-only", action="store_true", help="only the rows of builds handed over"
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.kubeconfig:
        rows = [anyio.run(_workers_killed_on_cluster, args.kubeconfig, args.builds, args.lines)]
    elif args.reaper_only:
        rows = [anyio.run(_workers_killed_on_fake, args.builds, args.lines)]
    elif args.handover_only:
        rows = anyio.run(_handovers, args.builds, args.lines)
    else:
        rows = anyio.run(main, args.builds, args.lines)
    table = render(rows)
    print(table)
    bad = sum(r.lost + r.duplicated + r.wrong_results + r.leaks + r.orphans for r in rows)
    print(f"\n{time.monotonic() - started:.1f}s; {'all zero' if not bad else f'{bad} failures'}")
    if args.append:
        command = "python bench/fault_matrix.py " + " ".join(sys.argv[1:])
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write(
                f"\n## Fault matrix ({'local cluster' if args.kubeconfig else 'FakeCluster'}), "
                f"{time.strftime('%Y-%m-%d')}\n\n"
                f"`{command.strip()}`\n\n{table}\n"
            )
    sys.exit(1 if bad else 0)
