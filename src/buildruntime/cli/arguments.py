"""The command line's arguments."""

from __future__ import annotations

import argparse

from buildruntime.cli.monitor import cmd_monitor
from buildruntime.cli.run import cmd_run


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
