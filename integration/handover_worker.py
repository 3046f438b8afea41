"""A worker for the hand-over tests: it starts builds of three steps, runs the first step
of each (which prints numbered lines slowly) and prints what it sees, then waits to be
killed (``--mode kill``) or to be told to release its builds (``--mode release``: a line
on stdin; it then releases them and exits cleanly).

Run as a separate process with the test's own python (``python -m
integration.handover_worker ...``), on the API server at ``--server`` or on a
FakeCluster served by the test over ``--socket`` (see :mod:`integration.handover_workers`).

Output, one line each: ``started BUILD_ID``, then ``ready``, then ``line BUILD_ID STEP
TEXT`` for every line of the first steps the worker tails, ``released ID,ID...`` and
``exiting``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from buildruntime import Build, BuildSpec, Runtime, StepSpec

from .worker_process import cluster_of

STEPS = ("one", "two", "three")
LAST_EXIT = 3
"""The last step fails with this exit code: exit codes must survive the hand-over."""


def ticker(step: str, count: int, pause: float, exit_code: int = 0) -> str:
    return (
        f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo {step}-$i; sleep {pause}; done; "
        f"exit {exit_code}"
    )


def three_steps(build_id: str, *, lines: int, pause: float, busybox: str) -> BuildSpec:
    """A build whose steps print ``lines`` numbered lines each, ``pause`` seconds apart;
    the last exits with :data:`LAST_EXIT`."""
    return BuildSpec(
        build_id=build_id,
        steps=[
            StepSpec(
                name=step,
                image=busybox,
                commands=[ticker(step, lines, pause, LAST_EXIT if step == STEPS[-1] else 0)],
                timeout=600,
            )
            for step in STEPS
        ],
    )


def expected_lines(step: str, lines: int) -> list[bytes]:
    return [f"{step}-{i}".encode() for i in range(1, lines + 1)]


async def start_builds(
    rt: Runtime, build_ids: list[str], *, lines: int, pause: float, busybox: str
) -> list[Build]:
    """Assemble each build and start its first step."""
    builds = []
    for build_id in build_ids:
        build = await rt.setup_build(
            three_steps(build_id, lines=lines, pause=pause, busybox=busybox)
        )
        await rt.assemble_build(build)
        await rt.run_container(build, STEPS[0])
        builds.append(build)
    return builds


async def _print_lines(rt: Runtime, build: Build) -> None:
    async for line in rt.tail_container(build, STEPS[0]):
        print("line", build.build_id, STEPS[0], line.decode(), flush=True)


async def main(args: argparse.Namespace) -> None:
    settings: dict[str, Any] = {
        "worker_id": args.worker_id,
        "lease_duration": args.lease_duration,
        "lease_renew_interval": args.lease_duration / 4,
    }
    if args.pause_image:
        settings["pause_image"] = args.pause_image
    async with Runtime(cluster_of(args), args.namespace, owns_cluster=True, **settings) as rt:
        builds = await start_builds(
            rt, args.builds.split(","), lines=args.lines, pause=args.pause, busybox=args.busybox
        )
        for build in builds:
            print("started", build.build_id, flush=True)
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            for build in builds:
                tg.start_soon(_print_lines, rt, build)
            if args.mode == "release":
                await anyio.to_thread.run_sync(sys.stdin.readline)
                released = await rt.release_builds()
                print("released", ",".join(released), flush=True)
            else:
                await anyio.sleep_forever()  # until SIGKILL
    print("exiting", flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", help="a FakeClusterServer's socket")
    parser.add_argument("--kubeconfig", help="with --server: a real API server")
    parser.add_argument("--server")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--pause-image")
    parser.add_argument("--lease-duration", type=float, default=30.0)
    parser.add_argument("--busybox", default="busybox")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--builds", required=True)
    parser.add_argument("--lines", type=int, required=True)
    parser.add_argument("--pause", type=float, required=True)
    parser.add_argument("--mode", choices=("kill", "release"), required=True)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, _arguments())
