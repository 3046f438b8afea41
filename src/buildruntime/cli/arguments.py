"""The command line's arguments."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import NoReturn

from buildruntime.cli.attach import cmd_attach
from buildruntime.cli.exits import EXIT_BAD_INPUT
from buildruntime.cli.gc import cmd_gc
from buildruntime.cli.monitor import cmd_monitor
from buildruntime.cli.ps import cmd_ps
from buildruntime.cli.run import (
    DEFAULT_API_TIMEOUT,
    PAUSE_IMAGE_VARIABLE,
    PLACEHOLDER_IMAGE_VARIABLE,
    cmd_run,
)
from buildruntime.images import DEFAULT_PAUSE_IMAGE
from buildruntime.pipeline import (
    SECRETS_HELP,
    STEP_KEY_HELP,
    STEP_ORDER_HELP,
    TOP_LEVEL_KEY_HELP,
)
from buildruntime.settings import RuntimeSettings

_HELP_WIDTH = 80
_KEY_COLUMN_MAX = 19
"""The widest the key column gets: a longer key has its text on the lines below it."""


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


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def pipeline_keys_help() -> str:
    """The epilog of ``run --help``: every key of the pipeline file, one line each."""
    lines = ["pipeline file keys:"]
    lines += _key_lines(TOP_LEVEL_KEY_HELP)
    lines.append("each step of steps, and each service of services (but for failure, when")
    lines.append("and depends_on: services start before every step):")
    lines += _key_lines(STEP_KEY_HELP)
    lines += ["", "step order:", *(f"  {line}" for line in STEP_ORDER_HELP)]
    lines += ["", "secrets:", *(f"  {line}" for line in SECRETS_HELP)]
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
        "secrets, a private registry and where the pod runs (see examples/secrets.yaml):",
        "  secrets:",
        "    deploy_token: {from_env: DEPLOY_TOKEN}",
        "    ssh_key: {from_file: keys/id_ed25519}",
        "  registries:",
        "    registry.example.com: {username: ci, password: {from_env: REG_TOKEN}}",
        "  tolerations: [{key: ci, operator: Exists, effect: NoSchedule}]",
        "  steps:",
        "    - name: deploy",
        "      image: registry.example.com/deployer:1",
        "      secrets:",
        "        - deploy_token",
        "        - {source: ssh_key, target: SSH_KEY}",
        "        - {secret: db-creds, key: password, target: DB_PASS}",
        '      commands: ["deploy --token-from-env deploy_token"]',
        "",
        "exit status: 0 when no step failed (failure: ignore aside), else the first",
        "failing step's exit code (1 when it has none), 2 for bad input, 130 on Ctrl-C,",
        "143 on SIGTERM.",
    ]
    return "\n".join(lines)


def _key_lines(help: dict[str, str]) -> list[str]:
    """One key and its text per line, the text wrapped in its column; a key too long
    for the column has its text on the lines below it."""
    column = max(len(key) for key in help if len(key) <= _KEY_COLUMN_MAX)
    indent = " " * (2 + column + 2)
    lines: list[str] = []
    for key, text in help.items():
        wrapped = textwrap.wrap(
            text, _HELP_WIDTH - len(indent), break_long_words=False, break_on_hyphens=False
        )
        if len(key) > column:
            lines.append(f"  {key}")
        else:
            lines.append(f"  {key.ljust(column)}  {wrapped.pop(0)}")
        lines += [indent + line for line in wrapped]
    return lines


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
        "--placeholder-image",
        metavar="IMAGE",
        help="buildruntime's own placeholder image (deploy/placeholder) to start steps on "
        "instead of the pause image, so that a step's commands run whatever its image's "
        f"ENTRYPOINT (default: ${PLACEHOLDER_IMAGE_VARIABLE}, else none)",
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

    ps = commands.add_parser(
        "ps",
        help="list the namespace's builds",
        description="List the namespace's builds: id, the worker that holds it, age, "
        "each step's state.",
    )
    common_options(ps)
    ps.set_defaults(handler=cmd_ps)

    attach = commands.add_parser(
        "attach",
        help="adopt a build another worker left and run it to its end",
        description="Adopt a build whose worker died or released it, follow the step that "
        "runs from its first line, run the remaining steps in order (the first failure "
        "skips the rest), print the summary and remove the build. Exit status as run's.",
    )
    attach.add_argument("build_id", metavar="BUILD_ID", help="the build to adopt")
    common_options(attach)
    attach.add_argument(
        "--api-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_API_TIMEOUT,
        help="how long to keep trying an API server that cannot be reached before "
        f"failing (default: {DEFAULT_API_TIMEOUT:g})",
    )
    attach.set_defaults(handler=cmd_attach)

    gc = commands.add_parser(
        "gc",
        help="remove dead workers' Leases once (their builds' pods and Secrets go with them)",
        description="Delete every buildruntime worker Lease in the namespace that has gone "
        "unrenewed for longer than its duration plus the grace period; Kubernetes' garbage "
        "collector then deletes the pods it owned and their Secrets. Prints what it removed.",
    )
    common_options(gc)
    gc.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_non_negative_seconds,
        default=RuntimeSettings.reap_grace,
        help="how much longer than its duration a Lease must be unrenewed (default: "
        f"{RuntimeSettings.reap_grace:g}; also the margin for clock skew between machines)",
    )
    gc.set_defaults(handler=cmd_gc)
    return parser
