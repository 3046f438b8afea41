"""``buildruntime run``: run a pipeline file's steps, then print a summary.

The order is the pipeline file's (:mod:`buildruntime.pipeline`): one step after another
in file order, or, once any step declares ``depends_on``, each step as soon as the
steps it depends on have finished, independent steps at the same time. When its turn
comes a step runs only if the build's status so far (``failure`` once a step failed
without ``failure: ignore``, else ``success``) is one its ``when: {status: ...}``
allows; otherwise it is skipped. The exit status is the first failing step's.

Services (the file's ``services``, and steps with ``detach: true``) are started, not
awaited: the top-level ones before every step, one after another in file order, each
once the one before is ready; a detached step at its turn, its dependants going on once
it is ready. Their logs stream like a step's until the build is removed, which stops
them. A service that never gets ready fails the build like a failing step; one that ends
on its own after it was ready is shown as such, and leaves the build's status alone:
the steps that needed it fail by themselves, and whether it died just before the build
was removed or because of it would otherwise decide the exit status by a race.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio

from buildruntime.build import Build
from buildruntime.cli.console import Console
from buildruntime.cli.exits import EXIT_FAILED, EXIT_OK, BadInput
from buildruntime.cli.interrupts import receiving_signals
from buildruntime.cli.target import Target, choose_target, open_cluster, server_of
from buildruntime.errors import (
    BuildRuntimeError,
    ClusterUnavailableError,
    LeaseError,
    PodGoneError,
    ServiceError,
)
from buildruntime.images import image_problem
from buildruntime.pipeline import PipelinePlan, Status, StepRules, load_plan_file
from buildruntime.results import StepResult
from buildruntime.runtime import Runtime
from buildruntime.secrets import Masker
from buildruntime.spec import BuildSpec, StepSpec

IGNORED = "failed (ignored)"
"""A step's result in the summary when it failed under ``failure: ignore``."""
SERVICE = "service"
"""A service's result while it runs: started, never awaited."""
STOPPED = "stopped"
"""A service's result once removing the build stopped it (its normal end)."""
_RESULT_COLOURS = {
    "ok": "32",
    "failed": "31",
    IGNORED: "33",
    "skipped": "2",
    "interrupted": "33",
    SERVICE: "36",
    STOPPED: "32",
}
_SERVICE_DRAIN = 10.0
"""Seconds a stopped service's last log lines may take to arrive after the build was
removed, before the summary is printed without them."""
_BUILD_GONE = (PodGoneError, ClusterUnavailableError)
"""Errors after which no step of the build can run: the pod or the API server is gone.
They end the build whatever the step's rules say."""


@dataclass
class Row:
    """One line of the summary."""

    step: StepSpec
    rules: StepRules = field(default_factory=StepRules)
    result: str = "skipped"
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    step_result: StepResult | None = None
    failure: str = ""
    overhead: float | None = None
    """From ``run_container``'s call to its return: the image patch until the cache shows
    the step's container running (or, for a step shorter than its status took to come,
    already ended)."""
    ended_unseen: bool = False
    """The cache first showed the step already ended: no local clock saw it run."""

    @property
    def service(self) -> bool:
        """A service or detached step: started, never awaited, stopped with the build."""
        return self.step.detach

    @property
    def duration(self) -> str | None:
        """The step's run time. Measured here, from the cache showing it running to its
        end (the API's timestamps have whole seconds only), unless the cache first
        showed it already ended: then only the kubelet's whole-second timestamps say
        how long it ran, and the summary says "under so many seconds"."""
        result = self.step_result
        if self.ended_unseen and result and result.started_at and result.finished_at:
            whole = int((result.finished_at - result.started_at).total_seconds())
            return f"<{max(whole, 0) + 1}s"
        if self.started is not None and self.ended is not None:
            return _seconds(self.ended - self.started)
        return None

    def overlaps(self, other: Row) -> bool:
        """Whether the two steps ran at the same time, for a while at least."""
        mine, theirs = self.window, other.window
        if mine is None or theirs is None:
            return False
        return mine[0] < theirs[1] and theirs[0] < mine[1]

    @property
    def window(self) -> tuple[float, float] | None:
        """When the step ran (monotonic clock), once it has ended."""
        if self.started is None or self.ended is None:
            return None
        return self.started, self.ended


@dataclass
class Outcome:
    """The build so far: its rows, its status and exit status."""

    rows: list[Row] = field(default_factory=list)
    status: int = EXIT_OK
    failed: bool = False
    gone: bool = False
    """The build can run no more steps (see ``_BUILD_GONE``)."""
    removing: bool = False
    """The build is being removed: a service that ends now was stopped, it did not die."""

    @property
    def build_status(self) -> Status:
        """What a step's ``when: {status: ...}`` is compared with."""
        return "failure" if self.failed else "success"

    def fail(self, status: int) -> None:
        """Record a failure; the first one sets the exit status."""
        if not self.failed:
            self.failed = True
            self.status = status or EXIT_FAILED


async def run_build(
    rt: Runtime,
    pipeline: BuildSpec | PipelinePlan,
    console: Console,
    *,
    server: str | None = None,
) -> int:
    """Run the steps of ``pipeline`` on ``rt`` by its rules (a bare spec: in order, each
    after a success), always removing the build. ``server``: the API server's address,
    for the message when it cannot be reached."""
    plan = pipeline if isinstance(pipeline, PipelinePlan) else PipelinePlan(pipeline)
    build = await rt.setup_build(plan.spec)
    return await drive_build(rt, build, plan, console, server=server, assemble=True)


async def drive_build(
    rt: Runtime,
    build: Build,
    plan: PipelinePlan,
    console: Console,
    *,
    server: str | None,
    assemble: bool,
) -> int:
    """Run ``build``'s steps by ``plan``'s rules, assembling it first when ``assemble``
    (an adopted build runs already: its steps that ran or run are followed from their
    first line, the others started at their turn), always removing the build."""
    spec = plan.spec
    outcome = Outcome([Row(step, plan.rules[step.name]) for step in spec.steps])
    explain = _Explainer(rt.api_timeout, server)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_progress, build, console)
            services = _Services(tg)
            try:
                await _run_steps(
                    rt, build, plan, outcome, console, explain, services, assemble=assemble
                )
            finally:
                with anyio.CancelScope(shield=True):
                    outcome.removing = True
                    try:
                        await rt.remove_build(build)
                    except BuildRuntimeError as error:
                        # An API server that stayed unreachable is said once, whichever
                        # request found it so.
                        if not (
                            isinstance(error, ClusterUnavailableError) and explain.said_unavailable
                        ):
                            console.error(f"removing the build: {explain(error)}")
                    # Removing the build stopped the services: their logs end with it.
                    with anyio.move_on_after(_SERVICE_DRAIN):
                        await services.drained()
                tg.cancel_scope.cancel()
    finally:
        now = time.monotonic()
        for row in outcome.rows:
            if row.result == "running":
                row.result = "interrupted"
                row.ended = now
            elif row.result == SERVICE:
                row.result = STOPPED
                row.ended = now
        _summary(outcome.rows, console)
    return outcome.status


class _Services:
    """The services' log followers: they outlive the steps, until the build is removed."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._running = 0
        self._none_left = anyio.Event()
        self._none_left.set()

    def follow(
        self, rt: Runtime, build: Build, row: Row, outcome: Outcome, console: Console
    ) -> None:
        if self._running == 0:
            self._none_left = anyio.Event()
        self._running += 1
        self._tg.start_soon(self._follow, rt, build, row, outcome, console)

    async def _follow(
        self, rt: Runtime, build: Build, row: Row, outcome: Outcome, console: Console
    ) -> None:
        try:
            await _follow_service(rt, build, row, outcome, console)
        finally:
            self._running -= 1
            if self._running == 0:
                self._none_left.set()

    async def drained(self) -> None:
        """Wait until every service's logs have ended."""
        await self._none_left.wait()


async def _run_steps(
    rt: Runtime,
    build: Build,
    plan: PipelinePlan,
    outcome: Outcome,
    console: Console,
    explain: _Explainer,
    services: _Services,
    *,
    assemble: bool,
) -> None:
    try:
        if assemble:
            await rt.assemble_build(build)
    except BuildRuntimeError as error:
        console.error(explain(error))
        outcome.gone = True
        outcome.fail(EXIT_FAILED)
        return
    rows = {row.step.name: row for row in outcome.rows}
    finished = {row.step.name: anyio.Event() for row in outcome.rows}
    # The file's services first, one at a time: each is ready before the next starts
    # (one may need another, as an application server needs its database), and all of
    # them before the first step. After one failed, the rest are not started.
    for name in plan.services:
        if not (outcome.gone or outcome.failed):
            await _run_step(rt, build, rows[name], outcome, console, explain, services)
        finished[name].set()
    # One task per step, each waiting for the steps it needs: file order is the chain
    # of each step needing the one before, a DAG runs its independent steps at once.
    async with anyio.create_task_group() as tg:
        for row in outcome.rows:
            if row.step.name in plan.services:
                continue
            needs = [finished[name] for name in plan.needs(row.step.name)]
            tg.start_soon(
                _step_turn,
                rt,
                build,
                row,
                needs,
                finished[row.step.name],
                outcome,
                console,
                explain,
                services,
            )


async def _step_turn(
    rt: Runtime,
    build: Build,
    row: Row,
    needs: Sequence[anyio.Event],
    done: anyio.Event,
    outcome: Outcome,
    console: Console,
    explain: _Explainer,
    services: _Services,
) -> None:
    """Wait for the steps ``row`` needs, then run it or leave it skipped. A detached
    step counts as done once it is ready."""
    try:
        for event in needs:
            await event.wait()
        if outcome.gone or not row.rules.runs_when(outcome.build_status):
            return
        await _run_step(rt, build, row, outcome, console, explain, services)
    finally:
        done.set()


async def _run_step(
    rt: Runtime,
    build: Build,
    row: Row,
    outcome: Outcome,
    console: Console,
    explain: _Explainer,
    services: _Services,
) -> None:
    """Run ``row``'s step to its end; a service only until it is ready, its logs then
    followed by ``services``."""
    name = row.step.name
    row.result = "running"
    row.started = time.monotonic()
    try:
        await rt.run_container(build, name)
        now = time.monotonic()
        row.started, row.overhead = now, now - row.started  # from here on, its own run time
        if row.service:
            row.result = SERVICE
            services.follow(rt, build, row, outcome, console)
            return
        row.ended_unseen = (await rt.inspect_container(build, name)).state == "terminated"
        async for raw in rt.tail_container(build, name):
            console.log(name, raw)
        result = await rt.wait_container(build, name)
    except BuildRuntimeError as error:
        row.ended = time.monotonic()
        row.failure = error.reason or type(error).__name__
        try:
            settled = await rt.inspect_container(build, name)
        except BuildRuntimeError:
            settled = None
        if settled is not None and settled.failure is not None:
            row.failure = _failure_text(settled)
        if isinstance(error, ServiceError):
            # It ran and ended before it was ready: its lines, then why it failed.
            if settled is not None:
                row.exit_code = settled.exit_code
            await _print_logs(rt, build, name, console)
        if not (isinstance(error, ClusterUnavailableError) and explain.said_unavailable):
            console.error(explain(error))
        _step_failed(row, outcome, EXIT_FAILED, console, build_gone=isinstance(error, _BUILD_GONE))
        return
    row.ended = time.monotonic()
    row.step_result = result
    row.exit_code = result.exit_code
    if result.succeeded:
        row.result = "ok"
        return
    row.failure = _failure_text(result)
    detail = f"exit code {result.exit_code}" if result.exit_code is not None else "no exit code"
    console.note(f"{console.prefix(name)} failed: {detail} ({row.failure})")
    _step_failed(row, outcome, result.exit_code or EXIT_FAILED, console)


async def _follow_service(
    rt: Runtime, build: Build, row: Row, outcome: Outcome, console: Console
) -> None:
    """Stream a ready service's logs until it ends: stopped with the build, or on its
    own while the build ran (said, and shown in the summary; see the module's doc)."""
    name = row.step.name
    try:
        async for raw in rt.tail_container(build, name):
            console.log(name, raw)
    except BuildRuntimeError:
        pass  # the build's own errors say what happened to it
    row.ended = time.monotonic()
    if outcome.removing:
        row.result = STOPPED
        return
    try:
        result = await rt.inspect_container(build, name)
    except BuildRuntimeError:
        row.result = STOPPED
        return
    row.step_result = result
    row.exit_code = result.exit_code
    if result.succeeded:
        row.result = "ok"
        console.note(f"{console.prefix(name)} service ended (exit code 0)")
        return
    row.result = "failed"
    row.failure = _failure_text(result)
    detail = f"exit code {result.exit_code}" if result.exit_code is not None else "no exit code"
    console.note(
        f"{console.prefix(name)} service ended while the build ran: {detail} ({row.failure})"
    )


async def _print_logs(rt: Runtime, build: Build, name: str, console: Console) -> None:
    """A step's captured lines, when it ended in an error rather than a result."""
    with anyio.move_on_after(_SERVICE_DRAIN):
        try:
            async for raw in rt.tail_container(build, name):
                console.log(name, raw)
        except BuildRuntimeError:
            pass


def _step_failed(
    row: Row, outcome: Outcome, status: int, console: Console, *, build_gone: bool = False
) -> None:
    """Record the failure of ``row``'s step in the build, unless its rules ignore it."""
    if build_gone:
        outcome.gone = True
    elif row.rules.ignores_failure:
        row.result = IGNORED
        console.note(f"{console.prefix(row.step.name)} failure ignored (failure: ignore)")
        return
    row.result = "failed"
    outcome.fail(status)


class _Explainer:
    """The one line that says what went wrong. An API server that could not be used is
    said as such, naming it and the wait, rather than as the request that happened to
    fail."""

    def __init__(self, api_timeout: float, server: str | None) -> None:
        self.api_timeout = api_timeout
        self.server = server
        self.said_unavailable = False

    def __call__(self, error: BuildRuntimeError) -> str:
        where = f" {self.server}" if self.server else ""
        if isinstance(error, LeaseError):
            detail = error.message or error.reason
            return f"the Kubernetes API server{where} refused the worker's Lease" + (
                f": {detail}" if detail else ""
            )
        if not isinstance(error, ClusterUnavailableError):
            return str(error)
        self.said_unavailable = True
        message = error.message or error.reason or ""
        cause = _connection_cause(message)
        wait = f"gave up after {self.api_timeout:g}s, see --api-timeout"
        if _CONNECTION_PROBLEM.search(message) or not cause:
            problem = f"cannot reach the Kubernetes API server{where} ({wait})"
        else:
            # An answer, but not one to go on with (a 403, a proxy's 404, ...).
            problem = f"the Kubernetes API server{where} kept failing the requests ({wait})"
        return f"{problem}: {cause}" if cause else problem


_CONNECTION_PROBLEM = re.compile(
    r"connect|refused|unreachable|timed out|timeout|resolution|resolve|"
    r"name or service|nodename|reset by peer|ssl|certificate",
    re.IGNORECASE,
)


def _connection_cause(message: str) -> str:
    """The gist of urllib3's connection error: "Connection refused", not the request,
    the pool and the errno around it."""
    text = re.sub(r"HTTPS?Connection(Pool)?\([^)]*\):\s*", "", message)
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"^(list|watch|get|create|patch|delete) [^:]*:\s*", "", text)
    return " ".join(text.split())


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
    header = ["STEP", "RESULT", "EXIT", "DURATION", "OVERHEAD", "FAILURE"]
    together = _parallel(rows)
    if any(together.values()):
        # Only when steps ran at the same time: a pipeline in file order keeps its table.
        header.append("PARALLEL WITH")
    table = [header]
    for row in rows:
        duration = row.duration
        cells = [
            row.step.name,
            row.result,
            "-" if row.exit_code is None else str(row.exit_code),
            duration or "-",
            "-" if row.overhead is None or row.service else _seconds(row.overhead),
            row.failure,
        ]
        if len(header) > len(cells):
            cells.append(", ".join(together[row.step.name]))
        table.append(cells)
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


def _parallel(rows: list[Row]) -> dict[str, list[str]]:
    """For each step, the steps whose run overlapped its own, in file order. Services
    run beside every step by design: naming them would say nothing."""
    return {
        row.step.name: [
            other.step.name
            for other in rows
            if other is not row and not other.service and row.overlaps(other)
        ]
        if not row.service
        else []
        for row in rows
    }


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s"


DEFAULT_API_TIMEOUT = 30.0
"""Seconds ``run`` keeps trying an API server it cannot reach before it gives up."""
PAUSE_IMAGE_VARIABLE = "BUILDRUNTIME_PAUSE_IMAGE"
PLACEHOLDER_IMAGE_VARIABLE = "BUILDRUNTIME_PLACEHOLDER_IMAGE"


@dataclass(frozen=True)
class RunSettings:
    """What ``run``'s options set, beyond the pipeline file."""

    namespace: str = "default"
    pause_image: str | None = None
    placeholder_image: str | None = None
    api_timeout: float = DEFAULT_API_TIMEOUT


async def _run_command(
    plan: PipelinePlan, target: Target, settings: RunSettings, console: Console
) -> int:
    status = EXIT_FAILED
    runtime_settings: dict[str, Any] = {"api_timeout": settings.api_timeout}
    if settings.pause_image is not None:
        runtime_settings["pause_image"] = settings.pause_image
    if settings.placeholder_image is not None:
        runtime_settings["placeholder_image"] = settings.placeholder_image
    async with (
        receiving_signals(console, "removing the build") as interruption,
        open_cluster(
            target,
            pause_image=settings.pause_image,
            placeholder_image=settings.placeholder_image,
            api_timeout=settings.api_timeout,
        ) as cluster,
        AsyncExitStack() as runtime,
    ):
        server = server_of(cluster)
        try:
            rt = await runtime.enter_async_context(
                Runtime(cluster, settings.namespace, **runtime_settings)
            )
        except (ClusterUnavailableError, LeaseError) as error:
            # The runtime's first request (its worker Lease) found the API server
            # unusable: said as any other request that finds it so.
            console.error(_Explainer(settings.api_timeout, server)(error))
            return EXIT_FAILED
        # A signal cancels the run only: its cleanup removes the build while the
        # runtime's watches still run, so that it sees the pod go. Cancelling the
        # runtime as well would stop those watches and leave a terminating pod behind.
        with interruption.cancels():
            status = await run_build(rt, plan, console, server=server)
    return interruption.status or status


def run_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> RunSettings:
    """The settings of ``run``'s options, checked: a bad value is a one-line BadInput."""
    env = os.environ if environ is None else environ
    return RunSettings(
        namespace=args.namespace,
        pause_image=_image_option(args.pause_image, "--pause-image", PAUSE_IMAGE_VARIABLE, env),
        placeholder_image=_image_option(
            args.placeholder_image, "--placeholder-image", PLACEHOLDER_IMAGE_VARIABLE, env
        ),
        api_timeout=args.api_timeout,
    )


def _image_option(
    given: str | None, flag: str, variable: str, env: Mapping[str, str]
) -> str | None:
    """An image option: the flag, else its environment variable, else None."""
    image, source = given, flag
    if image is None and env.get(variable):
        image, source = env[variable], variable
    if image is not None:
        problem = image_problem(image)
        if problem:
            raise BadInput(f"{source} {image!r}: {problem}")
    return image


def secrets_masker(spec: BuildSpec) -> Masker | None:
    """A masker of every value the build holds: its secrets and registry passwords."""
    values = [*spec.secret_values.values(), *(c.secret for c in spec.registries.values())]
    return Masker(values) if values else None


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    plan = load_plan_file(args.pipeline)
    # The library masks what it shows (logs, errors, events); the command masks every
    # line it writes itself too, from before it says anything about the build.
    console.masker = secrets_masker(plan.spec)
    settings = run_settings(args)
    target = choose_target(simulate=args.simulate, kubeconfig=args.kubeconfig, context=args.context)
    assert target is not None
    if target.note:
        console.note(f"buildruntime: {target.note}")
    return anyio.run(_run_command, plan, target, settings, console)
