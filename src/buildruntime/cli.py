"""The ``buildruntime`` command: run a pipeline file, or watch a namespace's builds.

``buildruntime run PIPELINE.yaml`` runs the steps in order, streams each step's log
lines prefixed by the step's name, and ends with a summary table; after a failing step
the rest are skipped. Its exit status is 0 when every step exited 0, otherwise the
failing step's exit code (1 when the failure has none: an image that cannot be pulled,
the pod gone, a timeout), 2 for bad input (an invalid or unreadable pipeline file), and
130 when interrupted (the build is removed first).

``buildruntime monitor`` prints every domain event of every build in a namespace as one
JSON object per line, until interrupted.

Where it runs: ``--simulate`` runs on an in-process :class:`FakeCluster` whose
simulated images run the commands with the local ``/bin/sh``; otherwise on the cluster
of ``--kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``, or the one this process runs
in; with none of those, ``run`` falls back to the simulation and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from buildruntime.build import Build
from buildruntime.cluster.port import Cluster
from buildruntime.errors import BuildRuntimeError, SpecError
from buildruntime.events import BuildEvent
from buildruntime.pipeline import load_pipeline_file
from buildruntime.results import StepResult
from buildruntime.runtime import Runtime
from buildruntime.spec import BuildSpec, StepSpec

__all__ = ["SIMULATED_IMAGES", "main"]

SIMULATED_IMAGES = frozenset(
    {
        "busybox",
        "alpine",
        "alpine:3.20",
        "golang:1.23",
        "python:3.12",
        "ubuntu:24.04",
        "debian:12",
        "node:22",
    }
)
"""The images ``--simulate`` can "pull"; any other fails to pull, as on a real node."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class BadInput(Exception):
    """A problem with what the user gave: exit 2 with this one-line message."""


# -- where to run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Which cluster to use: the simulation, a kubeconfig, or the one we run in."""

    kind: Literal["simulate", "kubeconfig", "in-cluster"]
    path: str | None = None
    context: str | None = None
    note: str | None = None
    """Said on stderr before running (the fallback to the simulation)."""


def choose_target(
    *,
    simulate: bool,
    kubeconfig: str | None,
    context: str | None,
    environ: Mapping[str, str] | None = None,
    fallback: bool = True,
) -> Target | None:
    """The cluster to use, by the rules in the module docstring. None when no cluster
    is configured and ``fallback`` is off."""
    env = os.environ if environ is None else environ
    if simulate:
        return Target("simulate")
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise BadInput(f"--kubeconfig {kubeconfig}: no such file")
        return Target("kubeconfig", str(path), context)
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        if any(Path(p).expanduser().is_file() for p in listed):
            return Target("kubeconfig", None, context)
        raise BadInput(f"KUBECONFIG={env['KUBECONFIG']}: no such file")
    home = env.get("HOME")
    default = Path(home) / ".kube" / "config" if home else Path.home() / ".kube" / "config"
    if default.is_file():
        return Target("kubeconfig", str(default), context)
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(_SERVICE_ACCOUNT_TOKEN):
        if context:
            raise BadInput(f"--context {context}: no kubeconfig to take it from")
        return Target("in-cluster")
    if context:
        raise BadInput(f"--context {context}: no kubeconfig found (--kubeconfig, KUBECONFIG)")
    if not fallback:
        return None
    return Target(
        "simulate",
        note=(
            "no Kubernetes cluster configured (no --kubeconfig, KUBECONFIG, ~/.kube/config "
            "or service account): simulating, steps run with the local /bin/sh"
        ),
    )


def _fake_cluster() -> Any:
    from buildruntime.testing import FakeCluster

    return FakeCluster(images=set(SIMULATED_IMAGES))


def _kube_cluster(target: Target) -> Any:
    from buildruntime.cluster.kube import KubeCluster

    try:
        if target.kind == "in-cluster":
            return KubeCluster.in_cluster()
        return KubeCluster.from_kubeconfig(target.path, target.context)
    except BuildRuntimeError:
        raise
    except Exception as error:
        where = "in-cluster configuration" if target.kind == "in-cluster" else "kubeconfig"
        if target.path:
            where += f" {target.path}"
        if target.context:
            where += f" (context {target.context})"
        raise BadInput(f"cannot load {where}: {_one_line(error)}") from None


@asynccontextmanager
async def open_cluster(target: Target) -> AsyncIterator[Cluster]:
    """The cluster of ``target``, closed on exit."""
    cluster = _fake_cluster() if target.kind == "simulate" else _kube_cluster(target)
    async with cluster:
        yield cluster


# -- output -------------------------------------------------------------------------------

_STEP_COLOURS = ("36", "35", "34", "33", "32", "96", "95", "94")
_RESULT_COLOURS = {"ok": "32", "failed": "31", "skipped": "2", "interrupted": "33"}


class TextStream(Protocol):
    """What the console writes to (``sys.stdout`` and the like)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


class Console:
    """Where the command writes: logs and the summary to ``out``, the rest to ``err``."""

    def __init__(self, out: TextStream, err: TextStream, *, colour: bool) -> None:
        self.out = out
        self.err = err
        self.colour = colour
        self._step_colour: dict[str, str] = {}
        self._out_broken = False

    @classmethod
    def for_streams(cls, out: TextStream, err: TextStream) -> Console:
        colour = (
            _isatty(out) and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"
        )
        return cls(out, err, colour=colour)

    def paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def prefix(self, step: str) -> str:
        if step not in self._step_colour:
            self._step_colour[step] = _STEP_COLOURS[len(self._step_colour) % len(_STEP_COLOURS)]
        return self.paint(f"[{step}]", self._step_colour[step])

    def line(self, text: str) -> None:
        if self._out_broken:
            return
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except BrokenPipeError:
            self._out_broken = True  # e.g. piped into head: keep running the build

    def log(self, step: str, raw: bytes) -> None:
        self.line(f"{self.prefix(step)} {raw.decode('utf-8', errors='replace')}")

    def note(self, text: str) -> None:
        try:
            self.err.write(text + "\n")
            self.err.flush()
        except (BrokenPipeError, ValueError):
            pass

    def error(self, text: str) -> None:
        self.note(f"{self.paint('error:', '31') if _isatty(self.err) else 'error:'} {text}")


def _isatty(stream: TextStream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# -- run ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the summary."""

    step: StepSpec
    result: str = "skipped"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    step_result: StepResult | None = None
    failure: str = ""

    @property
    def duration(self) -> float | None:
        """Measured here, from the step's start (or its attempt to start) to its end: the
        API's timestamps have whole seconds only."""
        if self.started is not None and self.ended is not None:
            return self.ended - self.started
        return None


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    status: int = EXIT_OK


async def run_build(rt: Runtime, spec: BuildSpec, console: Console) -> int:
    """Run every step of ``spec`` in order on ``rt``, always removing the build."""
    build = await rt.setup_build(spec)
    outcome = Outcome([Row(step) for step in spec.steps])
    current: list[Row] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_progress, build, console)
            try:
                outcome.status = await _run_steps(rt, build, outcome, current, console)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await rt.remove_build(build)
                    except BuildRuntimeError as error:
                        console.error(f"removing the build: {error}")
                tg.cancel_scope.cancel()
    finally:
        for row in current:
            if row.result == "running":
                row.result = "interrupted"
                row.ended = time.monotonic()
        _summary(outcome.rows, console)
    return outcome.status


async def _run_steps(
    rt: Runtime, build: Build, outcome: Outcome, current: list[Row], console: Console
) -> int:
    try:
        await rt.assemble_build(build)
    except BuildRuntimeError as error:
        console.error(str(error))
        return EXIT_FAILED
    for row in outcome.rows:
        current[:] = [row]
        status = await _run_step(rt, build, row, console)
        if status != EXIT_OK:
            return status
    return EXIT_OK


async def _run_step(rt: Runtime, build: Build, row: Row, console: Console) -> int:
    name = row.step.name
    row.result = "running"
    row.started = time.monotonic()
    try:
        await rt.run_container(build, name)
        row.started = time.monotonic()  # from here on, the step's own run time
        async for raw in rt.tail_container(build, name):
            console.log(name, raw)
        result = await rt.wait_container(build, name)
    except BuildRuntimeError as error:
        row.ended = time.monotonic()
        row.result = "failed"
        row.failure = error.reason or type(error).__name__
        try:
            settled = await rt.inspect_container(build, name)
        except BuildRuntimeError:
            settled = None
        if settled is not None and settled.failure is not None:
            row.failure = _failure_text(settled)
        console.error(str(error))
        return EXIT_FAILED
    row.ended = time.monotonic()
    row.step_result = result
    row.exit_code = result.exit_code
    if result.succeeded:
        row.result = "ok"
        return EXIT_OK
    row.result = "failed"
    row.failure = _failure_text(result)
    detail = f"exit code {result.exit_code}" if result.exit_code is not None else "no exit code"
    console.note(f"{console.prefix(name)} failed: {detail} ({row.failure})")
    return result.exit_code or EXIT_FAILED


def _failure_text(result: StepResult) -> str:
    failure = result.failure.value if result.failure is not None else "UNKNOWN"
    return f"{failure}: {result.reason}" if result.reason else failure


async def _progress(build: Build, console: Console) -> None:
    """Say on stderr what a step waits for before it starts (pulling its image), and
    what holds the pod back (a FailedScheduling warning)."""
    pulling: set[str] = set()
    async for event in build.events():
        if event.step is not None and event.kind == "pulling":
            pulling.add(event.step)
            image = build.spec.step(event.step).image
            console.note(f"{console.prefix(event.step)} pulling {image}…")
        elif event.step in pulling and event.kind == "pulled":
            image = build.spec.step(event.step).image
            console.note(f"{console.prefix(event.step)} pulled {image}")
        elif event.step is None and event.kind == "warning":
            console.note(f"[{build.build_id}] warning: {event.reason}: {event.message}")


def _summary(rows: list[Row], console: Console) -> None:
    table = [("STEP", "RESULT", "EXIT", "DURATION", "FAILURE")]
    for row in rows:
        duration = row.duration
        table.append(
            (
                row.step.name,
                row.result,
                "-" if row.exit_code is None else str(row.exit_code),
                "-" if duration is None else _seconds(duration),
                row.failure,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    console.line("")
    for i, cells in enumerate(table):
        parts = []
        for j, cell in enumerate(cells):
            padded = cell.ljust(widths[j]) if j < len(cells) - 1 else cell
            if i > 0 and j == 1:
                padded = console.paint(padded, _RESULT_COLOURS.get(cell))
            elif i == 0:
                padded = console.paint(padded, "1")
            parts.append(padded)
        console.line("  ".join(parts).rstrip())


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s"


async def _run_command(spec: BuildSpec, target: Target, namespace: str, console: Console) -> int:
    async with open_cluster(target) as cluster, Runtime(cluster, namespace) as rt:
        return await run_build(rt, spec, console)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    spec = load_pipeline_file(args.pipeline)
    target = choose_target(simulate=args.simulate, kubeconfig=args.kubeconfig, context=args.context)
    assert target is not None
    if target.note:
        console.note(f"buildruntime: {target.note}")
    return anyio.run(_run_command, spec, target, args.namespace, console)


# -- monitor --------------------------------------------------------------------------------


async def _monitor_command(target: Target, namespace: str, console: Console, demo: bool) -> int:
    from buildruntime.monitor import NamespaceMonitor

    async with open_cluster(target) as cluster, NamespaceMonitor(cluster, namespace) as monitor:
        if not demo:
            async for event in monitor.events():
                console.line(_event_json(event))
            return EXIT_OK
        return await _demo(cluster, namespace, monitor, console)


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
    if args.simulate_demo:
        target: Target | None = Target("simulate")
    else:
        target = choose_target(
            simulate=False, kubeconfig=args.kubeconfig, context=args.context, fallback=False
        )
    if target is None:
        raise BadInput(
            "no Kubernetes cluster configured (no --kubeconfig, KUBECONFIG, ~/.kube/config "
            "or service account); --simulate-demo watches simulated builds instead"
        )
    return anyio.run(_monitor_command, target, args.namespace, console, args.simulate_demo)


# -- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildruntime",
        description="Run CI builds on Kubernetes: one pod per build, one container per step.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cluster_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--namespace", "-n", default="default", help="namespace (default: default)"
        )
        sub.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file")
        sub.add_argument("--context", metavar="NAME", help="kubeconfig context")

    run = commands.add_parser(
        "run",
        help="run a pipeline file",
        description="Run a pipeline's steps in order, streaming their logs, then print a summary.",
    )
    run.add_argument("pipeline", metavar="PIPELINE.yaml", help="the pipeline file")
    cluster_options(run)
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run on an in-process simulated cluster (commands run with the local /bin/sh)",
    )
    run.set_defaults(handler=cmd_run)

    monitor = commands.add_parser(
        "monitor",
        help="print every build event in a namespace as JSON lines",
        description="Watch every pod buildruntime made in the namespace, with their "
        "events, and print each domain event as one JSON object per line until interrupted.",
    )
    cluster_options(monitor)
    monitor.add_argument(
        "--simulate-demo",
        action="store_true",
        help="watch two demo builds on an in-process simulated cluster, then exit",
    )
    monitor.set_defaults(handler=cmd_monitor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_BAD_INPUT
    console = Console.for_streams(out, err)
    try:
        status: int = args.handler(args, console)
    except KeyboardInterrupt:
        console.note("buildruntime: interrupted")
        return EXIT_INTERRUPTED
    except SpecError as error:
        console.error(_spec_message(args, error))
        return EXIT_BAD_INPUT
    except BadInput as error:
        console.error(str(error))
        return EXIT_BAD_INPUT
    except BuildRuntimeError as error:
        console.error(str(error))
        return EXIT_FAILED
    return status


def _spec_message(args: argparse.Namespace, error: SpecError) -> str:
    source = getattr(args, "pipeline", None)
    problem = error.problem
    if source:
        for spelling in (source, str(Path(source))):
            if problem.startswith(f"{spelling}: "):
                problem = problem[len(spelling) + 2 :]
                break
    where = "" if error.field == "pipeline" else f"{error.field}: "
    return f"{source}: {where}{problem}" if source else f"{where}{problem}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
