"""The ``buildruntime`` command: run a pipeline file, or watch a namespace's builds.

``buildruntime run PIPELINE.yaml`` runs the steps in order (or as their ``depends_on``
say, independent steps at the same time), streams each step's log lines prefixed by the
step's name, and ends with a summary table; after a failing step the rest are skipped,
except those whose ``when: {status: ...}`` includes ``failure``, and a step with
``failure: ignore`` fails nothing but itself; the file's ``services`` start first and
run, never awaited, until the build is removed (see :mod:`buildruntime.cli.run`). Its exit
status is 0 when no step failed, otherwise the first failing step's exit code (1 when
the failure has none: an image that cannot be pulled, the pod gone, a timeout, an API
server that stayed unreachable for ``--api-timeout``), 2 for bad input (an invalid or
unreadable pipeline file, a usage mistake), 130 on Ctrl-C and 143 on SIGTERM (the build
is removed first).

``buildruntime monitor`` prints every domain event of every build in a namespace as one
JSON object per line, until interrupted. ``buildruntime gc`` deletes dead workers'
Leases once (their pods and Secrets then go with them) and prints what it removed.

Where it runs: ``--simulate`` runs on an in-process :class:`FakeCluster` whose
simulated images run the commands with the local ``/bin/sh``; otherwise on the cluster
of ``--kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``, or the one this process runs
in; with none of those, ``run`` falls back to the simulation and says so.

The modules: ``arguments`` (the parser), ``target`` (which cluster), ``console`` (the
output), ``interrupts`` (SIGINT, SIGTERM), ``run``, ``monitor`` and ``gc`` (the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from buildruntime.cli.arguments import build_parser
from buildruntime.cli.console import Console, library_logs
from buildruntime.cli.exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BadInput,
)
from buildruntime.cli.run import run_build
from buildruntime.cli.target import Target, choose_target, open_cluster
from buildruntime.errors import BuildRuntimeError, SpecError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "BadInput",
    "Console",
    "Target",
    "build_parser",
    "choose_target",
    "main",
    "open_cluster",
    "run_build",
]


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
        with library_logs(console, verbose=args.verbose):
            return _handle(args, console)
    finally:
        # A second Ctrl-C while the last lines are written: stop writing.
        with contextlib.suppress(KeyboardInterrupt):
            console.close()
        if console.out_broken and out is sys.__stdout__:
            _silence_stdout()


def _handle(args: argparse.Namespace, console: Console) -> int:
    try:
        status: int = args.handler(args, console)
    except KeyboardInterrupt:
        # Outside the event loop (before it starts, after it ends, or a second Ctrl-C
        # while cleaning up); inside it, SIGINT is handled like SIGTERM (interrupts.py).
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


def _silence_stdout() -> None:
    """Stdout's reader went away (``| head``): point it at /dev/null so that Python's
    flush at exit does not print a BrokenPipeError of its own."""
    stdout = sys.__stdout__
    if stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


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
