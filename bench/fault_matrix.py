"""The fault matrix as figures: per fault, builds run, log lines expected, lost,
duplicated, wrong results and leaked streams or threads. Every figure but the first two
must be 0.

    .venv/bin/python bench/fault_matrix.py [--builds 4] [--lines 200] [--append]

Runs on FakeCluster (its faults are exact and repeatable); the same faults on the local
cluster are the integration suite's (integration/test_faults.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from buildruntime import BuildSpec, Failure, PodGoneError, Runtime, StepSpec
from buildruntime.informer.reflector import ReflectorSettings
from buildruntime.testing import FakeCluster

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


def _ticker(name: str, lines: int) -> StepSpec:
    script = f"i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo {name}-$i; sleep 0.005; done"
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
    for step in spec.steps:
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
    return rows


def render(rows: list[Row]) -> str:
    head = (
        "| fault | times injected | builds run | lines expected | lines lost | duplicates "
        "| wrong results | leaks |"
    )
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r.fault} | {r.injected} | {r.builds} | {r.expected} | {r.lost} | "
            f"{r.duplicated} | {r.wrong_results} | {r.leaks} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=4)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument(
        "--append", action="store_true", help="append the table to bench/RESULTS.md"
    )
    args = parser.parse_args()
    started = time.monotonic()
    rows = anyio.run(main, args.builds, args.lines)
    table = render(rows)
    print(table)
    bad = sum(r.lost + r.duplicated + r.wrong_results + r.leaks for r in rows)
    print(f"\n{time.monotonic() - started:.1f}s; {'all zero' if not bad else f'{bad} failures'}")
    if args.append:
        command = "python bench/fault_matrix.py " + " ".join(sys.argv[1:])
        with (Path(__file__).parent / "RESULTS.md").open("a") as results:
            results.write(
                f"\n## Fault matrix (FakeCluster), {time.strftime('%Y-%m-%d')}\n\n"
                f"`{command.strip()}`\n\n{table}\n"
            )
    sys.exit(1 if bad else 0)
