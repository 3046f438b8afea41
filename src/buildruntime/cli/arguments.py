"""The command line's arguments."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from buildruntime.cli.exits import EXIT_BAD_INPUT
from buildruntime.cli.monitor import cmd_monitor
from buildruntime.cli.run import DEFAULT_API_TIMEOUT, PAUSE_IMAGE_VARIABLE, cmd_run
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.pipeline import STEP_KEY_HELP, STEP_ORDER_HELP, TOP_LEVEL_KEY_HELP


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of
    the command, with the way to the help instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def pipeline_keys_help() -> str:
    """The epilog of ``run --help``: every key of the pipeline file, one line each."""
    width = max(len(key) for key in (*TOP_LEVEL_KEY_HELP, *STEP_KEY_HELP))
    lines = ["pipeline file keys:"]
    lines += [f"  {key.ljust(width)}  {text}" for key, text in TOP_LEVEL_KEY_HELP.items()]
    lines.append("each step of steps, and each service of services (but for failure, when")
    lines.append("and depends_on: services start before every step):")
    lines += [f"  {key.ljust(width)}  {text}" for key, text in STEP_KEY_HELP.items()]
    lines += ["", "step order:", *(f"  {line}" for line in STEP_ORDER_HELP)]
    lines += [
        "",
        "example:",
        "  build_id: hello-1",
        "  steps:",
        "    - name: greet",
        "      image: busybox",
        '      commands: ["echo hello", "echo done"]',
        "      environment: {GREETING: hi}",
        "    - name: notify",
        "      image: busybox",
        "      depends_on: [greet]",
        "      when: {status: failure}",
        '      commands: ["echo greet failed"]',
        "",
        "services, the workspace and volumes (see examples/app.yaml):",
        "  workspace: {path: /src, size_limit: 2Gi}",
        "  volumes: {cache: {persistentVolumeClaim: {claimName: go-cache}}}",
        "  services:",
        "    - {name: db, image: postgres:16, ports: [5432]}",
        "  steps:",
        "    - name: test",
        "      image: golang:1.23",
        '      volumes: ["cache:/root/.cache"]',
        '      commands: ["go test ./..."]   # reaches the database at db:5432',
        "",
        "exit status: 0 when no step failed (failure: ignore aside), else the first",
        "failing step's exit code (1 when it has none), 2 for bad input, 130 on Ctrl-C,",
        "143 on SIGTERM.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="buildruntime",
        description="Run CI builds on Kubernetes: one pod per build, one container per step.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--namespace", "-n", default="default", help="namespace (default: default)"
        )
        sub.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file")
        sub.add_argument("--context", metavar="NAME", help="kubeconfig context")
        sub.add_argument(
            "--verbose",
            "-v",
            action="store_true",
            help="also show the library's warnings (watches retrying, log streams resumed)",
        )

    run = commands.add_parser(
        "run",
        help="run a pipeline file",
        description="Run a pipeline's steps in order (or as their depends_on say), streaming\n"
        "their logs prefixed by step name, then print a summary.",
        epilog=pipeline_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("pipeline", metavar="PIPELINE.yaml", help="the pipeline file")
    common_options(run)
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run on an in-process simulated cluster (commands run with the local /bin/sh)",
    )
    run.add_argument(
        "--pause-image",
        metavar="IMAGE",
        help="placeholder image of steps not started yet, for clusters that cannot pull "
        f"the default (default: ${PAUSE_IMAGE_VARIABLE}, else {DEFAULT_PAUSE_IMAGE})",
    )
    run.add_argument(
        "--api-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_API_TIMEOUT,
        help="how long to keep trying an API server that cannot be reached before "
        f"failing (default: {DEFAULT_API_TIMEOUT:g})",
    )
    run.set_defaults(handler=cmd_run)

    monitor = commands.add_parser(
        "monitor",
        help="print every build event in a namespace as JSON lines",
        description="Watch every pod buildruntime made in the namespace, with their "
        "events, and print each domain event as one JSON object per line until interrupted.",
    )
    common_options(monitor)
    monitor.add_argument(
        "--simulate-demo",
        action="store_true",
        help="watch two demo builds on an in-process simulated cluster, then exit",
    )
    monitor.set_defaults(handler=cmd_monitor)
    return parser
