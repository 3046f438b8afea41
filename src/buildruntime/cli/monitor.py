"""``buildruntime monitor``: every domain event of a namespace's builds as JSON lines."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import anyio

from buildruntime.cli.console import Console
from buildruntime.cli.exits import EXIT_OK
from buildruntime.cli.interrupts import receiving_signals
from buildruntime.cli.run import run_build
from buildruntime.cli.target import Target, configured_cluster, open_cluster
from buildruntime.cluster.port import Cluster
from buildruntime.events import BuildEvent
from buildruntime.runtime import Runtime
from buildruntime.spec import BuildSpec, StepSpec


async def _monitor_command(target: Target, namespace: str, console: Console, demo: bool) -> int:
    from buildruntime.monitor import NamespaceMonitor

    status = EXIT_OK
    async with (
        receiving_signals(console, "stopping") as interruption,
        open_cluster(target) as cluster,
        NamespaceMonitor(cluster, namespace) as monitor,
    ):
        with interruption.cancels():
            if not demo:
                async for event in monitor.events():
                    console.line(_event_json(event))
            else:
                status = await _demo(cluster, namespace, monitor, console)
    return interruption.status or status


async def _demo(cluster: Cluster, namespace: str, monitor: Any, console: Console) -> int:
    """Run two simulated builds while printing what the monitor sees of them."""
    await monitor.wait_synced()
    specs = [
        BuildSpec(
            build_id="demo-hello",
            steps=[
                StepSpec(name="greet", image="busybox", commands=["echo hello"]),
                StepSpec(name="count", image="busybox", commands=["seq 1 3"]),
            ],
        ),
        BuildSpec(
            build_id="demo-failing",
            steps=[
                StepSpec(name="test", image="busybox", commands=["exit 3"]),
                StepSpec(name="never", image="busybox", commands=["true"]),
            ],
        ),
    ]
    pending = {spec.build_id for spec in specs}
    quiet = Console(_Discard(), _Discard(), colour=False)

    async def one(rt: Runtime, spec: BuildSpec) -> None:
        await run_build(rt, spec, quiet)

    try:
        async with anyio.create_task_group() as tg:

            async def builds() -> None:
                async with Runtime(cluster, namespace) as rt, anyio.create_task_group() as inner:
                    for spec in specs:
                        inner.start_soon(one, rt, spec)

            tg.start_soon(builds)
            async for event in monitor.events():
                console.line(_event_json(event))
                if event.kind == "deleted":
                    pending.discard(event.build_id)
                    if not pending:
                        break
    finally:
        # Its writer thread; off the event loop, since close() waits for it.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(quiet.close)
    return EXIT_OK


class _Discard:
    """A text stream that drops everything (the demo's builds print nothing)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _event_json(event: BuildEvent) -> str:
    return json.dumps(event.to_json(), ensure_ascii=False, default=_json_default)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def cmd_monitor(args: argparse.Namespace, console: Console) -> int:
    target = (
        Target("simulate")
        if args.simulate_demo
        else configured_cluster(
            args.kubeconfig,
            args.context,
            otherwise="; --simulate-demo watches simulated builds instead",
        )
    )
    return anyio.run(_monitor_command, target, args.namespace, console, args.simulate_demo)
